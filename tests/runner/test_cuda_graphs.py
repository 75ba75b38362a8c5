"""The CUDA-graph decode path's padding and filling, on any machine: a capture that reruns the step
eagerly stands in for CUDA graphs, so padded steps of 3 sequences (as 4), then 2, then 1 must give
the tokens of the same engine stepping eagerly (padding rows that wrote a real block would change
them); the padding writes the scratch block."""

import gc

import pytest
import torch

from tokenmill import LLM, SamplingParams
from tokenmill.runner.cuda_graphs import CudaDecodeGraphs, batch_sizes


class EagerCapture:
    """Runs the step at capture, and again at each replay into the captured outputs."""

    def __call__(self, step):
        outputs = step()
        return _Rerun(step, outputs), outputs


class _Rerun:
    def __init__(self, step, outputs) -> None:
        self.step, self.outputs = step, outputs
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        for static, new in zip(self.outputs, self.step()):
            static.copy_(new)


def test_batch_sizes():
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(30) == [1, 2, 4, 8, 16, 24, 30]
    assert batch_sizes(256)[:6] == [1, 2, 4, 8, 16, 24] and batch_sizes(256)[-1] == 256


@pytest.fixture
def eager_torch_llm():
    llm = LLM(dtype="float32", quantization="none", kv_cache_memory=64 * 2**20, attention_backend="torch",
              enforce_eager=True)
    yield llm
    del llm
    gc.collect()


def test_padded_replays_give_the_eager_tokens_and_touch_only_the_scratch_block(eager_torch_llm):
    llm, runner = eager_torch_llm, eager_torch_llm.engine.runner
    prompts = ["The capital of France is", "def add(a, b):", "Once upon a time"]
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (9, 6, 3)]  # 3 decoding, then 2, then 1
    eager = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    paged = runner.paged
    scratch = paged.scratch_block
    runner.decode_graphs = CudaDecodeGraphs(paged.model, paged.attention, llm.engine.max_model_len, paged.block_size,
                                            scratch, max_num_seqs=8, device=torch.device("cpu"), capture=EagerCapture())
    replayed = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert replayed == eager
    graphs = runner.decode_graphs.graphs
    assert sorted(graphs) == [1, 2, 4] and all(g.graph.replays > 0 for g in graphs.values())
    # the padding rows wrote the scratch block, which the KV manager never gives out
    assert paged.kv_cache[:, :, scratch].abs().sum() > 0
    assert paged.kv_cache.shape[2] == llm.engine.kv_manager.num_blocks + 1
