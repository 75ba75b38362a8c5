"""Speculative decoding inside the engine, on the real model, with each proposer: it never changes a
greedy output, and the KV of rejected proposals (and of the slots a draft kept ahead) goes back."""

import pytest
import torch

from tokenmill import LLM, SamplingParams
from tokenmill.model.default import default_model_path

PROMPTS = [
    "Repeat this list three times, exactly: apple, banana, cherry, date, elderberry, fig, grape.",
    "Count from 1 to 40, separated by commas.",
    "What is the capital of France?",
    "Write a Python function that returns the square of a number, then the same for the cube.",
    "Copy this sentence twice: the quick brown fox jumps over the lazy dog.",
]
GREEDY = SamplingParams(temperature=0, max_tokens=80)
# Speculation stays on whatever the batch, so that batches mix sequences with and without proposals.
PROPOSERS = {
    "ngram": {"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": 64},
    "draft": {"method": "draft", "draft_layers": 8, "num_speculative_tokens": 3, "disable_by_batch_size": 64},
    "heads": {"method": "heads", "num_speculative_tokens": 3, "disable_by_batch_size": 64},
    "ngram_heads": {"method": "ngram_heads", "prompt_lookup_min": 2, "num_speculative_tokens": 3,
                    "disable_by_batch_size": 64},
}
# A separate draft model, with a pool of its own: a second copy of the model, which guesses right.
DRAFT_MODEL = {"method": "draft", "model": str(default_model_path()), "num_speculative_tokens": 3,
               "disable_by_batch_size": 64}
NGRAM = PROPOSERS["ngram"]
# A small token budget chunks the prompts, so prefills and verifications share steps.
ENGINE = {"dtype": "float32", "quantization": "none", "kv_cache_memory": 64 * 2**20, "max_num_batched_tokens": 64}


@pytest.fixture(scope="module")
def plain() -> LLM:
    """The reference: no speculation, and every step eager."""
    return LLM(enforce_eager=True, **ENGINE)


@pytest.fixture(scope="module", params=list(PROPOSERS))
def speculative(request) -> LLM:
    return LLM(speculative_config=PROPOSERS[request.param], **ENGINE)


@pytest.fixture(scope="module")
def ngram() -> LLM:
    return LLM(speculative_config=NGRAM, **ENGINE)


MIXED = [GREEDY, SamplingParams(temperature=0.8, seed=7, max_tokens=40)] * 2 + [GREEDY]


@pytest.fixture(scope="module")
def expected(plain) -> dict[str, list[list[int]]]:
    """What the engine without speculation answers, computed once for every proposer."""
    return {
        "batch": token_ids(plain.generate(PROMPTS, GREEDY, use_tqdm=False)),
        "alone": [token_ids(plain.generate(prompt, GREEDY, use_tqdm=False))[0] for prompt in PROMPTS[:2]],
        "mixed": token_ids(plain.generate(PROMPTS, MIXED, use_tqdm=False)),
    }


def assert_every_block_free(llm: LLM) -> None:
    manager = llm.engine.kv_manager
    assert not llm.engine.has_unfinished_requests()
    assert manager.num_free_blocks == manager.num_blocks
    assert all(count == 0 for count in manager.ref_counts)


def token_ids(outputs) -> list[list[int]]:
    return [list(out.outputs[0].token_ids) for out in outputs]


def test_greedy_outputs_are_token_identical(expected, speculative):
    assert token_ids(speculative.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected["batch"]
    stats = speculative.engine.stats()
    # Some accepted, and not all: rejected ones were rolled back on the way.
    assert 0 < stats.spec_accepted_tokens < stats.spec_draft_tokens
    assert_every_block_free(speculative)


def test_verification_rows_replay_captured_steps(expected, speculative):
    """Steps whose rows are proposals to verify are captured and replayed like decode steps (per
    number of sequences and rows), and give the eager engine's tokens."""
    graphs = speculative.engine.runner.decode_graphs
    if graphs is None:
        pytest.skip("no C kernels here: every step is eager")
    for prompt, alone in zip(PROMPTS[:2], expected["alone"]):
        assert token_ids(speculative.generate(prompt, GREEDY, use_tqdm=False)) == [alone]
    verifying = [(seqs, rows) for seqs, rows, _ in graphs.graphs if rows > seqs]
    assert verifying and not graphs.eager_shapes
    assert_every_block_free(speculative)


def test_a_separate_draft_model_catches_up_and_guesses(expected):
    """The draft computes the prompt into its own pool, then guesses: a copy of the model, greedy,
    guesses nearly every token."""
    llm = LLM(speculative_config=DRAFT_MODEL, **ENGINE)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected["batch"]
    assert llm.engine.stats().spec_acceptance_rate > 0.95
    assert_every_block_free(llm)


def test_one_at_a_time_and_with_sampled_neighbours(expected, speculative):
    """Alone (every step speculative), and beside seeded sampled requests, which are speculated too
    (by rejection sampling): the greedy outputs stay the same, and a seeded batch repeats itself."""
    for prompt, alone in zip(PROMPTS[:2], expected["alone"]):
        assert token_ids(speculative.generate(prompt, GREEDY, use_tqdm=False)) == [alone]
    actual = token_ids(speculative.generate(PROMPTS, MIXED, use_tqdm=False))
    assert [actual[i] for i in (0, 2, 4)] == [expected["mixed"][i] for i in (0, 2, 4)]
    assert token_ids(speculative.generate(PROMPTS, MIXED, use_tqdm=False)) == actual
    assert_every_block_free(speculative)


def test_sampled_token_frequencies_are_unchanged(plain, ngram):
    """Over 400 seeds, the token at output position 1 (the first that proposals, verified by rejection
    sampling, decide) has the same distribution with speculation as without: a chi-square test of
    homogeneity, at significance 0.001, over the tokens seen at least 10 times (the rest pooled)."""
    prompt = "Say the word banana ten times: banana banana banana"
    requests = [SamplingParams(temperature=1.5, top_k=10, seed=seed, max_tokens=4, ignore_eos=True)
                for seed in range(400)]
    proposed_before = ngram.engine.stats().spec_draft_tokens
    columns = []
    for llm in (plain, ngram):
        columns.append([out.outputs[0].token_ids[1] for out in llm.generate([prompt] * 400, requests, use_tqdm=False)])
    assert ngram.engine.stats().spec_draft_tokens > proposed_before
    tokens = set(columns[0]) | set(columns[1])
    common = sorted(t for t in tokens if columns[0].count(t) + columns[1].count(t) >= 10)
    table = torch.tensor([[col.count(t) for t in common] + [sum(1 for x in col if x not in common)]
                          for col in columns], dtype=torch.float64)
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    statistic = ((table - expected) ** 2 / expected).sum()
    degrees = table.shape[1] - 1
    assert degrees >= 2, "too few distinct tokens to test"
    assert float(torch.special.gammaincc(torch.tensor(degrees / 2), statistic / 2)) > 0.001


@pytest.mark.parametrize("method", ["ngram", "draft", "draft-model"])
def test_preemption_under_a_small_pool_loses_nothing(method):
    """A pool of 16 blocks (and the scratch block), too small for every sequence at once: sequences are preempted and recomputed while
    others verify proposals (and a draft keeps KV slots ahead for its guesses); outputs stay greedy's and
    every block comes back."""
    small = {**ENGINE, "kv_cache_memory": 12 * 2**20, "enable_prefix_caching": False}
    params = SamplingParams(temperature=0, max_tokens=80, ignore_eos=True)  # ~7 blocks each
    expected = token_ids(LLM(**small).generate(PROMPTS, params, use_tqdm=False))
    llm = LLM(speculative_config={**PROPOSERS, "draft-model": DRAFT_MODEL}[method], **small)
    assert llm.engine.kv_manager.num_blocks == 16
    assert token_ids(llm.generate(PROMPTS, params, use_tqdm=False)) == expected
    assert llm.engine.stats().num_preemptions > 0
    assert_every_block_free(llm)


def test_bad_speculative_configs_are_clear():
    with pytest.raises(ValueError, match="needs a method"):
        LLM(speculative_config={"num_speculative_tokens": 3})
    with pytest.raises(ValueError, match="speculative method must be one of"):
        LLM(speculative_config={"method": "telepathy"})
    with pytest.raises(ValueError, match="unknown speculative_config keys"):
        LLM(speculative_config={"method": "ngram", "k": 3})
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        LLM(speculative_config={"method": "ngram", "num_speculative_tokens": 0})
    with pytest.raises(ValueError, match="'draft' needs one of draft_layers"):
        LLM(speculative_config={"method": "draft"})
    with pytest.raises(ValueError, match="disable_by_batch_size must be >= 2"):
        LLM(speculative_config={"method": "ngram", "disable_by_batch_size": 1})
    with pytest.raises(ValueError, match="fewer than the model's 30 layers"):
        LLM(speculative_config={"method": "draft", "draft_layers": 30})
    with pytest.raises(ValueError, match="the heads proposer makes at most 3"):
        LLM(speculative_config={"method": "heads", "num_speculative_tokens": 4})
    with pytest.raises(FileNotFoundError, match="no draft heads at /nowhere.safetensors"):
        LLM(speculative_config={"method": "heads", "model": "/nowhere.safetensors"})

