"""Pipeline parallelism with real worker processes over gloo: the default model's 30 layers split
into stages, alone and with each stage split 3 ways by tensor parallelism, give one process's
greedy tokens in float32, batched with chunked prefill, with two micro-batches in flight at once;
so do preemption, n-gram speculation, LoRA, GGUF weights and prefix caching under two stages; a
request aborted while its step is in flight gives every block back."""

import gc

import pytest
import torch

from tests.distributed.split import OPTIONS, outputs, run_split, single_process_outputs, workers
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
    """Every rank ran every step; each stage's ranks all-reduced, the first stage's sent activations."""
    def every_rank_reports(llm):
        ranks = llm.engine.stats(ranks_max_age_s=0).ranks
        assert [(r.rank, r.pipeline_stage) for r in ranks] == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]
        assert len({r.steps for r in ranks}) == 1 and ranks[0].steps > 0
        assert all(r.collective_bytes > 0 for r in ranks)
        assert [r.activation_bytes > 0 for r in ranks] == [True] * 3 + [False] * 3

    expected = outputs(make_llm(), PROMPTS)
    assert run_split(None, 3, PROMPTS, pipeline_parallel_size=2, inspect=every_rank_reports) == expected


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs: the same pipeline over NCCL")
def test_two_gpus_as_two_stages_over_nccl_give_one_gpus_greedy_tokens():
    expected = single_process_outputs(None, PROMPTS, device="cuda")
    assert run_split(None, 1, PROMPTS, pipeline_parallel_size=2, device="cuda") == expected


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
    with pytest.raises(ValueError, match="speculative method 'ngram' only for now, not 'draft'"):
        LLM(pipeline_parallel_size=2, speculative_config={"method": "draft", "draft_layers": 4}, **OPTIONS)
    assert not workers()


def test_ngram_speculation_under_two_stages_keeps_one_process_greedy_tokens(make_llm):
    """The last stage verifies and proposes; the proposals reach every stage with the next step."""
    def speculated(llm):
        stats = llm.engine.stats()
        assert stats.spec_draft_tokens > 0 and stats.spec_accepted_tokens > 0

    repetitive = ["1, 2, 3, 1, 2, 3, 1, 2, 3, 1,", "red green blue red green blue red"]
    expected = outputs(make_llm(), repetitive)
    method = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2}
    got = run_split(None, 1, repetitive, pipeline_parallel_size=2, inspect=speculated, speculative_config=method)
    assert got == expected


def test_lora_under_two_stages_keeps_one_process_greedy_tokens(make_llm, gguf_path, tmp_path):
    """Each stage holds its layers' part of the adapter: a mixed adapter/base batch gives one process's tokens."""
    from tests.lora.adapters import TARGETS, make_adapter
    from tokenmill.lora.request import LoRARequest

    make_adapter(gguf_path, tmp_path / "adapter", seed=5, rank=8, targets=TARGETS)
    mix = [LoRARequest("adapter", 1, tmp_path / "adapter"), None] * 3
    options = dict(enable_lora=True, max_loras=2, max_lora_rank=8)
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)

    def run(llm):
        return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, lora_request=mix, use_tqdm=False)]

    expected = run(make_llm(**options))
    assert expected[0::2] != outputs(make_llm(), PROMPTS, max_tokens=16)[0::2]  # the adapter changes the tokens
    split = LLM(pipeline_parallel_size=2, max_num_batched_tokens=32, **OPTIONS, **options)
    try:
        assert run(split) == expected
    finally:
        split.engine.shutdown()
        del split
        gc.collect()


def test_quantized_weights_and_prefix_caching_under_two_stages(make_llm):
    """Each stage keeps its layers' GGUF blocks; a second run of the prompts takes their cached
    blocks on every stage and gives the same tokens."""
    def cached(llm):
        hits = llm.engine.stats().prefix_cache_hits
        assert outputs(llm, PROMPTS) == expected
        assert llm.engine.stats().prefix_cache_hits > hits

    expected = outputs(make_llm(quantization="gguf"), PROMPTS)
    got = run_split(None, 1, PROMPTS, pipeline_parallel_size=2, inspect=cached, quantization="gguf",
                    enable_prefix_caching=True)  # fmt: skip
    assert got == expected
