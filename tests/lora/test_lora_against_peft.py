"""Adapters against Hugging Face transformers + peft on the same base weights: an adapter made by
peft on the default model (every target layer, nonzero B, rsLoRA and plain scaling), saved in
PEFT's format, gives tokenmill's float32 engine the same greedy tokens and logits within 1e-4;
a batch mixing adapters and the base model gives each request its tokens run alone; the prefix
cache keeps adapters apart."""

import gc

import pytest
import torch

from tests.lora.adapters import TARGETS, make_adapter
from tokenmill import LLM, SamplingParams
from tokenmill.engine.engine import InvalidRequestError
from tokenmill.kernels.lora import LoRAKernel
from tokenmill.lora.request import LoRARequest

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def adapters(gguf_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    made = {
        "all": make_adapter(gguf_path, root / "all", seed=1, rank=8, targets=TARGETS),
        "qv-rslora": make_adapter(gguf_path, root / "qv", seed=2, rank=4, targets=["q_proj", "v_proj"], rslora=True),
    }
    paths = {"all": root / "all", "qv-rslora": root / "qv"}
    requests = {name: LoRARequest(name, i + 1, paths[name]) for i, name in enumerate(made)}
    yield made, requests
    del made
    gc.collect()


@pytest.mark.parametrize("name", ["all", "qv-rslora"])
def test_greedy_tokens_and_logits_equal_peft(lora_llm, adapters, name):
    peft_models, requests = adapters
    reference = peft_models[name]
    params = SamplingParams(max_tokens=12, temperature=0, logprobs=0)
    outs = lora_llm.generate(PROMPTS, params, lora_request=requests[name], use_tqdm=False)
    base = lora_llm.generate(PROMPTS, params, use_tqdm=False)
    changed = 0
    for out, plain in zip(outs, base):
        ids = out.prompt_token_ids + out.outputs[0].token_ids
        with torch.no_grad():
            logits = reference(torch.tensor([ids])).logits[0]
        expected = logits[len(out.prompt_token_ids) - 1 : -1].argmax(-1).tolist()
        assert out.outputs[0].token_ids == expected
        theirs = torch.log_softmax(logits[len(out.prompt_token_ids) - 1], -1)
        ours = out.outputs[0].logprobs[0][out.outputs[0].token_ids[0]].logprob
        assert abs(ours - theirs[out.outputs[0].token_ids[0]].item()) < 1e-4
        changed += out.outputs[0].token_ids != plain.outputs[0].token_ids
    assert changed > 0, "the adapter changes the model's output"


def test_a_mixed_batch_gives_each_request_its_tokens_alone(lora_llm, adapters):
    _, requests = adapters
    params = SamplingParams(max_tokens=10, temperature=0)
    mix = [requests["all"], None, requests["qv-rslora"], requests["all"], None, requests["qv-rslora"]]
    prompts = PROMPTS * 2
    together = [o.outputs[0].token_ids for o in lora_llm.generate(prompts, params, lora_request=mix, use_tqdm=False)]
    alone = [lora_llm.generate([p], params, lora_request=r, use_tqdm=False)[0].outputs[0].token_ids
             for p, r in zip(prompts, mix)]
    assert together == alone
    graphs = lora_llm.engine.runner.decode_graphs
    if LoRAKernel.load() is not None:  # the C kernel's steps with adapters are captured and replayed
        assert (6, 6, True) in graphs.graphs and not any(shape[2] for shape in graphs.eager_shapes)


def test_prefix_cache_blocks_are_shared_by_one_adapter_and_never_across(lora_llm, adapters):
    _, requests = adapters
    prompt = {"prompt_token_ids": list(range(100, 164))}  # four full blocks
    params = SamplingParams(max_tokens=1, temperature=0)
    first = lora_llm.generate(prompt, params, lora_request=requests["all"], use_tqdm=False)[0]
    same = lora_llm.generate(prompt, params, lora_request=requests["all"], use_tqdm=False)[0]
    other = lora_llm.generate(prompt, params, lora_request=requests["qv-rslora"], use_tqdm=False)[0]
    base = lora_llm.generate(prompt, params, use_tqdm=False)[0]
    assert first.num_cached_tokens == 0 and same.num_cached_tokens == 48
    assert other.num_cached_tokens == 0 and base.num_cached_tokens == 0


def test_bad_adapters_are_refused_by_name(lora_llm, adapters, tmp_path, make_llm):
    _, requests = adapters
    with pytest.raises(InvalidRequestError, match="not a PEFT LoRA adapter"):
        lora_llm.generate("hi", lora_request=LoRARequest("missing", 9, tmp_path / "nothing"), use_tqdm=False)
    lora_llm.generate("hi", SamplingParams(max_tokens=1), lora_request=requests["all"], use_tqdm=False)
    other = requests["qv-rslora"].lora_path  # the id of "all" with another adapter's folder
    with pytest.raises(InvalidRequestError, match="already names the adapter"):
        lora_llm.generate("hi", lora_request=LoRARequest("impostor", requests["all"].lora_int_id, other), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="enable_lora"):
        make_llm().generate("hi", lora_request=LoRARequest("x", 9, tmp_path), use_tqdm=False)


def test_more_adapters_than_slots_all_complete_correctly_and_swap(gguf_path, adapters, tmp_path):
    """max_loras 2 with 4 adapters in one batch: the scheduler runs at most 2 adapters' requests at
    once, the others wait (base requests go on), and every output equals the request run alone.
    Host memory keeps at most max_cpu_loras (3) adapters: the others are read again when next used."""
    _, requests = adapters
    extra = [LoRARequest(f"extra{i}", 10 + i, tmp_path / f"extra{i}") for i in range(2)]
    for i, request in enumerate(extra):
        make_adapter(gguf_path, request.lora_path, seed=20 + i, rank=4, targets=["o_proj", "down_proj"])
    four = [requests["all"], requests["qv-rslora"], *extra]
    llm = LLM(dtype="float32", quantization="none", kv_cache_memory=64 * 2**20, enable_lora=True, max_loras=2,
              max_lora_rank=8, max_cpu_loras=3)
    try:
        params = SamplingParams(max_tokens=8, temperature=0)
        mix = [*four, None, *four]
        prompts = [PROMPTS[i % 3] for i in range(len(mix))]
        together = [o.outputs[0].token_ids for o in llm.generate(prompts, params, lora_request=mix, use_tqdm=False)]
        manager = llm.engine.runner.lora
        swaps, reads = manager.num_swaps, manager.num_reads
        alone = [llm.generate([p], params, lora_request=r, use_tqdm=False)[0].outputs[0].token_ids
                 for p, r in zip(prompts, mix)]
        assert together == alone and swaps >= 2
        assert manager.num_host_adapters <= 3 and manager.num_reads > reads  # alone, in turn: dropped, read again
    finally:
        del llm
        gc.collect()
