"""Pipeline parallelism with real worker processes over gloo: the default model's 30 layers split
into stages, alone and with each stage split 3 ways by tensor parallelism, give one process's
greedy tokens in float32, batched with chunked prefill, with two micro-batches in flight at once;
a request aborted while its step is in flight gives every block back."""

import gc

import pytest

from tests.distributed.split import OPTIONS, outputs, run_split, workers
from tests.model.test_logits_match_transformers import PROMPTS
from tokenmill import LLM, SamplingParams
from tokenmill.distributed.group import PipelineParallel


def test_two_stages_give_one_process_greedy_tokens_with_two_steps_in_flight(make_llm):
    depths = []

    def overlapped(llm):
        assert max(depths) == 2  # a second micro-batch went in before the first came out

    def record_depth(llm):
        executor = llm.engine.executor
        submit, take = executor.submit, executor.take_output
        in_flight = [0]

        def recorded_submit(sched):
            in_flight[0] += 1
            depths.append(in_flight[0])
            submit(sched)

        def recorded_take():
            in_flight[0] -= 1
            return take()

        executor.submit, executor.take_output = recorded_submit, recorded_take

    expected = outputs(make_llm(), PROMPTS)
    assert run_split(None, 1, PROMPTS, pipeline_parallel_size=2, prepare=record_depth, inspect=overlapped) == expected


def test_three_ranks_by_two_stages_give_one_process_greedy_tokens(make_llm):
    expected = outputs(make_llm(), PROMPTS)
    assert run_split(None, 3, PROMPTS, pipeline_parallel_size=2) == expected


def test_preemption_under_two_stages_keeps_one_process_greedy_tokens(make_llm):
    """A pool too small for the batch: sequences not in flight are preempted and recomputed."""

    def preempted(llm):
        assert llm.engine.scheduler.num_preemptions > 0

    expected = outputs(make_llm(), PROMPTS, max_tokens=40)
    got = run_split(None, 1, PROMPTS, pipeline_parallel_size=2, inspect=preempted, max_tokens=40,
                    kv_cache_memory=2 * 2**20)  # fmt: skip
    assert got == expected


def test_requests_aborted_while_their_step_is_in_flight_give_their_blocks_back(make_llm):
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    expected = outputs(make_llm(), PROMPTS, max_tokens=20)
    llm = LLM(pipeline_parallel_size=2, max_num_batched_tokens=32, **OPTIONS)
    engine = llm.engine
    try:
        ids = [engine.add_request(llm.tokenizer.encode(p), params) for p in PROMPTS]
        tokens = {i: [] for i in ids}
        for _ in range(12):
            for out in engine.step():
                tokens[out.request_id] += out.samples[0].new_token_ids if out.samples else []
        aborted = ids[::2]
        for request_id in aborted:
            engine.abort_request(request_id)
        while engine.has_unfinished_requests():
            for out in engine.step():
                assert out.request_id not in aborted
                tokens[out.request_id] += out.samples[0].new_token_ids if out.samples else []
        assert [tokens[i] for i in ids[1::2]] == expected[1::2]
        assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
    finally:
        engine.shutdown()
        del llm, engine
        gc.collect()
    assert not workers()


@pytest.mark.parametrize("stages, sizes", [(1, [30]), (2, [15, 15]), (4, [8, 8, 7, 7]), (7, [5, 5, 4, 4, 4, 4, 4])])
def test_stages_take_contiguous_even_shares_of_the_layers(stages, sizes):
    ranges = [PipelineParallel(stage=s, num_stages=stages).layers(30) for s in range(stages)]
    assert [len(r) for r in ranges] == sizes
    assert [i for r in ranges for i in r] == list(range(30))


def test_unsupported_pipelines_are_refused():
    with pytest.raises(ValueError, match="pipeline_parallel_size 31 exceeds the model's 30 layers"):
        PipelineParallel(stage=0, num_stages=31).layers(30)
    with pytest.raises(ValueError, match="speculative decoding and LoRA adapters do not run with pipeline"):
        LLM(pipeline_parallel_size=2, speculative_config={"method": "ngram"}, **OPTIONS)
    assert not workers()
