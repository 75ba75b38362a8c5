"""The routing policies and the prefix tree, on backends the tests make up (no processes)."""

from tokenmill.router.backends import Backend
from tokenmill.router.config import RouterConfig
from tokenmill.router.policies import LeastLoaded, PrefixAware, RoundRobin, RouteRequest, SessionAffinity
from tokenmill.router.prefix_tree import CHUNK_CHARS, PrefixTree

SYSTEM = "You are a helpful assistant for the accounting team. " * 8


def backends(*loads: int) -> list[Backend]:
    return [Backend(f"http://b{i}", healthy=True, in_flight=load) for i, load in enumerate(loads)]


def test_the_prefix_tree_matches_whole_chunks_and_forgets_the_oldest():
    tree = PrefixTree(max_nodes=40)
    tree.insert(SYSTEM + "first question")
    assert tree.match(SYSTEM + "another question") == len(SYSTEM) // CHUNK_CHARS * CHUNK_CHARS
    assert tree.match("something else entirely, " * 10) == 0
    for i in range(20):  # newer prompts push the first one out
        tree.insert(f"{i:03d} " * 40)
    assert tree.num_nodes <= 40 and tree.match(SYSTEM) == 0
    assert tree.num_nodes == count_nodes(tree.root) - 1  # the count is the tree's


def count_nodes(node) -> int:
    return 1 + sum(count_nodes(child) for child in node.children.values())


def test_round_robin_and_least_loaded():
    pool = backends(3, 0, 5)
    robin = RoundRobin()
    assert [robin.choose(RouteRequest(""), pool).url for _ in range(4)] == ["http://b0", "http://b1", "http://b2",
                                                                             "http://b0"]
    assert LeastLoaded().choose(RouteRequest(""), pool).url == "http://b1"


def test_least_loaded_weighs_tokens_not_requests():
    long_prompt, short = RouteRequest("word " * 1200, max_tokens=32), RouteRequest("Summarize it.", max_tokens=32)
    assert long_prompt.prompt_tokens == 1501 and short.output_tokens == 32
    assert RouteRequest("hi").output_tokens == RouteRequest("hi", max_tokens=0).output_tokens > 0
    pool = backends(0, 0, 0)
    pool[0].tokens_in_flight = long_prompt.prompt_tokens + long_prompt.output_tokens  # one long request
    pool[1].in_flight = pool[2].in_flight = 3  # three short ones each
    pool[1].tokens_in_flight = pool[2].tokens_in_flight = 3 * (short.prompt_tokens + short.output_tokens)
    pool[0].in_flight = 1
    assert LeastLoaded().choose(long_prompt, pool).url == "http://b1"  # not behind the long prefill


def test_prefix_aware_follows_the_cached_prefix_until_the_load_is_too_unbalanced():
    policy, pool = PrefixAware(RouterConfig(backends=("x",))), backends(0, 0, 0)
    first = policy.choose(RouteRequest(SYSTEM + "q1"), pool)
    first.in_flight += 2  # it is busier now, but not too busy
    assert policy.choose(RouteRequest(SYSTEM + "q2"), pool) is first
    first.in_flight += 20  # too busy: the least loaded backend takes it
    assert policy.choose(RouteRequest(SYSTEM + "q3"), pool) is not first
    other = policy.choose(RouteRequest("A different tenant's system prompt. " * 8), pool)
    assert other is not first  # no match: the least loaded


def test_a_session_stays_on_its_backend_unless_it_goes_away():
    policy, pool = SessionAffinity(), backends(0, 0, 0)
    chosen = {s: policy.choose(RouteRequest("", s), pool) for s in ("alice", "bob", "carol", "dave")}
    assert all(policy.choose(RouteRequest("", s), pool) is b for s, b in chosen.items())
    gone = chosen["alice"]
    rest = [b for b in pool if b is not gone]
    moved = {s: policy.choose(RouteRequest("", s), rest) for s in chosen}
    assert all(moved[s] is b for s, b in chosen.items() if b is not gone)  # only alice's backend's sessions move


def test_model_aware_candidates_serve_the_model():
    from tokenmill.router.backends import BackendPool

    pool = BackendPool(RouterConfig(backends=("http://a", "http://b")), client=None)
    pool.backends["http://a"].healthy = pool.backends["http://b"].healthy = True
    pool.backends["http://a"].models = frozenset({"base", "pirate"})
    pool.backends["http://b"].models = frozenset({"base"})
    assert [b.url for b in pool.candidates("pirate")] == ["http://a"]
    assert [b.url for b in pool.candidates("base")] == ["http://a", "http://b"]
    assert pool.candidates("unknown") == []
