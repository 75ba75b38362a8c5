"""tokenmill's next-token logits against Hugging Face transformers on the same GGUF weights."""

import pytest
import torch

from tokenmill import SamplingParams

PROMPTS = [
    "The capital of France is",
    "In 1859, Charles Darwin published a book that changed how people thought about",
    "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n",
    "Water is made of two elements: hydrogen and",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old woman who",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
]
DECODE_STEPS = 6


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                dtype=torch.float32).eval()


class RecordingSampler:
    """Wraps the engine's sampler to keep each sampled row's logits, keyed by prompt and step."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.logits: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}

    def __call__(self, logits, seqs, grammar_bitmask=None):
        for row, seq in enumerate(seqs):
            self.logits[(tuple(seq.prompt_token_ids), seq.num_output_tokens)] = logits[row].clone()
        return self.sampler(logits, seqs, grammar_bitmask)


@pytest.mark.parametrize("attention_backend", ["auto", "torch"])  # auto: the C kernel where it compiles
def test_logits_match_transformers_while_decoding(make_llm, hf_model, monkeypatch, attention_backend):
    llm = make_llm() if attention_backend == "auto" else make_llm(attention_backend=attention_backend)
    recorder = RecordingSampler(llm.engine.runner.sampler)
    monkeypatch.setattr(llm.engine.runner, "sampler", recorder)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=DECODE_STEPS, ignore_eos=True),
                        use_tqdm=False)
    assert_logits_match(outs, recorder, hf_model, DECODE_STEPS)


def assert_logits_match(outs, recorder: RecordingSampler, hf_model, steps: int) -> None:
    """Each decode step's logits within 1e-3 (relative) of transformers' on the same tokens, and
    each greedy token transformers' argmax."""
    for out in outs:
        ids = out.prompt_token_ids + out.outputs[0].token_ids
        with torch.no_grad():
            ref = hf_model(torch.tensor([ids])).logits[0]
        for step in range(steps):
            ours = recorder.logits[(tuple(out.prompt_token_ids), step)]
            theirs = ref[len(out.prompt_token_ids) - 1 + step]
            rel = ((ours - theirs).norm() / theirs.norm()).item()
            assert rel < 1e-3, f"prompt of {len(out.prompt_token_ids)} tokens, decode step {step}: relative error {rel:.2e}"
            assert out.outputs[0].token_ids[step] == int(theirs.argmax()), "greedy tokens differ"
