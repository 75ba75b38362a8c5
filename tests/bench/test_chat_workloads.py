"""The named workloads: real text, the lengths asked for, the same for a seed, saved and reloaded."""

import pytest

from tokenmill.bench.chat_workloads import WORKLOADS, WorkloadSpec, build_workload, load_workload, save_workload


@pytest.fixture(scope="module")
def tokenizer(llm):
    return llm.tokenizer


@pytest.mark.parametrize("name", WORKLOADS)
def test_each_workload_is_deterministic_and_round_trips(name, tokenizer, tmp_path):
    spec = WorkloadSpec(name, num_requests=6, seed=3)
    requests = build_workload(spec, tokenizer)
    assert len(requests) == 6 and requests == build_workload(spec, tokenizer)
    assert requests != build_workload(WorkloadSpec(name, num_requests=6, seed=4), tokenizer)
    save_workload(requests, tmp_path / "w.jsonl")
    assert load_workload(tmp_path / "w.jsonl") == requests
    low, high = WORKLOADS[name][1]
    assert all(low <= r.output_len <= high for r in requests)


def test_chat_prompts_follow_the_input_length_asked(tokenizer):
    requests = build_workload(WorkloadSpec("chat", 8, input_len=(200, 300), output_len=(16, 16)), tokenizer)
    for r in requests:
        passage = r.messages[0]["content"].split("\n\n", 1)[1]
        assert 190 <= len(tokenizer.encode(passage, add_special_tokens=False)) <= 310
        assert r.output_len == 16


def test_shared_prefix_requests_share_one_long_system_prompt(tokenizer):
    requests = build_workload(WorkloadSpec("shared-prefix", 5), tokenizer)
    systems = {r.messages[0]["content"] for r in requests}
    assert len(systems) == 1 and len(tokenizer.encode(systems.pop())) > 1400
    assert len({r.messages[1]["content"] for r in requests}) == 5


def test_json_requests_carry_a_response_schema(tokenizer):
    requests = build_workload(WorkloadSpec("json", 3), tokenizer)
    assert all(r.response_format["type"] == "json_schema" for r in requests)


def test_an_unknown_workload_is_refused(tokenizer):
    with pytest.raises(ValueError, match="unknown workload 'poems'"):
        build_workload(WorkloadSpec("poems"), tokenizer)
