"""Warm-up runs every lazily prepared step before the first request and leaves nothing behind."""

import gc

from tokenmill import LLM
from tokenmill.runner.step_graph import MAX_ROWS
from tokenmill.sampling_params import SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]


def test_warm_up_captures_every_batch_size_and_leaves_the_engine_as_new(make_llm):
    """A fresh engine of its own (freed after), against the session's eager one."""
    warmed = LLM(dtype="float32", quantization="none", kv_cache_memory=32 * 2**20)
    eager = make_llm(enforce_eager=True)
    engine = warmed.engine
    assert engine.warm_up() > 0
    graphs = engine.runner.decode_graphs
    if graphs is not None:  # C kernels here
        assert sorted(graphs.graphs) == [(n, n, False) for n in range(1, MAX_ROWS + 1)] and not graphs.eager_shapes
    stats = engine.stats()
    assert not engine.has_unfinished_requests() and stats.num_free_blocks == stats.num_blocks
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits, stats.num_preemptions) == (0, 0, 0)
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    outputs = [o.outputs[0].token_ids for o in warmed.generate(PROMPTS, params, use_tqdm=False)]
    assert outputs == [o.outputs[0].token_ids for o in eager.generate(PROMPTS, params, use_tqdm=False)]
    assert engine.stats().prefix_cache_hits == 0  # the warm-up's blocks are no prefix of these prompts
    del warmed, engine
    gc.collect()
