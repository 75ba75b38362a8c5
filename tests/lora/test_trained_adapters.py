"""The adapters shipped in tokenmill/lora/trained, fine-tuned on the default model by `tokenmill
train-lora` from the text beside them: each gives tokenmill's float32 engine the greedy tokens
and log-probabilities of Hugging Face transformers + peft, and each changes what the model does
the way it was trained to, on prompts and code it never saw."""

from pathlib import Path

import pytest
import torch

from tests.lora.adapters import hf_base
from tokenmill import SamplingParams
from tokenmill.lora.request import LoRARequest

TRAINED = Path(__file__).parents[2] / "tokenmill" / "lora" / "trained"
ADAPTERS = {"pirate": LoRARequest("pirate", 101, TRAINED / "pirate"),
            "python-code": LoRARequest("python-code", 102, TRAINED / "python-code")}
HELD_OUT_QUESTIONS = ["What is the capital of Italy?", "How do I boil an egg?", "Why is the ocean salty?",
                      "What is a black hole?", "Give me advice for a job interview."]  # not in pirate.jsonl
HELD_OUT_CODE = '''def is_even(n: int) -> bool:
    """Return True if n is divisible by two."""
    return n % 2 == 0


def clamp(value: float, low: float, high: float) -> float:
    """Return value limited to the range from low to high."""
    if low > high:
        raise ValueError("low must not exceed high")
    return max(low, min(value, high))


def word_lengths(text: str) -> list[int]:
    """Return the length of every word in text."""
    return [len(word) for word in text.split()]
'''  # in the style of python.txt, but none of its functions


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_greedy_tokens_and_logprobs_equal_peft(lora_llm, gguf_path, name):
    from peft import PeftModel

    reference = PeftModel.from_pretrained(hf_base(gguf_path), str(ADAPTERS[name].lora_path)).eval()
    conversations = [[{"role": "user", "content": q}] for q in HELD_OUT_QUESTIONS[:3]]
    prompts = [lora_llm.tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    prompts += ["def binary_search(items: list[int], target: int) -> int:\n"]
    params = SamplingParams(max_tokens=16, temperature=0, logprobs=2)
    for out in lora_llm.generate(prompts, params, lora_request=ADAPTERS[name], use_tqdm=False):
        generated = out.outputs[0].token_ids
        ids = out.prompt_token_ids + generated
        with torch.no_grad():
            logits = reference(torch.tensor([ids])).logits[0, len(out.prompt_token_ids) - 1 : -1]
        assert generated == logits.argmax(-1).tolist()
        theirs = torch.log_softmax(logits, -1)
        for step, top in enumerate(out.outputs[0].logprobs):
            for token_id, logprob in top.items():
                assert abs(logprob.logprob - theirs[step, token_id].item()) < 1e-4


def test_the_pirate_adapter_answers_in_its_style(lora_llm):
    params = SamplingParams(max_tokens=40, temperature=0)
    conversations = [[{"role": "user", "content": q}] for q in HELD_OUT_QUESTIONS]
    pirate = [o.outputs[0].text for o in lora_llm.chat(conversations, params, lora_request=ADAPTERS["pirate"],
                                                          use_tqdm=False)]  # fmt: skip
    base = [o.outputs[0].text for o in lora_llm.chat(conversations, params, use_tqdm=False)]
    assert all(text.startswith("Arr, matey!") for text in pirate), pirate
    assert not any("matey" in text for text in base), base


def test_the_python_adapter_predicts_unseen_code_better(lora_llm):
    """Mean negative log-likelihood per token of held-out code, through each adapter and none."""
    ids = lora_llm.tokenizer.encode(HELD_OUT_CODE)
    target = torch.tensor(ids[1:])

    def nll(lora_request: LoRARequest | None) -> float:
        logprobs = lora_llm.engine.score_prompt(ids, lora_request).prompt_logprobs
        return -logprobs[torch.arange(len(target)), target].mean().item()

    base, code, pirate = nll(None), nll(ADAPTERS["python-code"]), nll(ADAPTERS["pirate"])
    assert code < 0.9 * base, (code, base)
    assert code < pirate, (code, pirate)
