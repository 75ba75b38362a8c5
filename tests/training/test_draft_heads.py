"""`tokenmill train-draft`'s pieces on the real model: the self-distilled examples line up with the
model's own greedy tokens, and training makes the heads guess them better."""

import torch

from tokenmill import LLM
from tokenmill.config import DraftTrainingConfig
from tokenmill.speculative.heads import DraftHeads
from tokenmill.training.draft_heads import accuracy, hidden_states, make_examples, self_distill, train_heads

CONFIG = DraftTrainingConfig(num_heads=2, num_prompts=6, epochs=3, batch_size=64, learning_rate=3e-3)


def test_self_distilled_heads_learn_the_models_own_continuations(tmp_path):
    # A small token budget: the prefill that reads the hidden states comes in several chunks.
    llm = LLM(dtype="float32", quantization="none", enable_prefix_caching=False, kv_cache_memory=64 << 20,
              max_num_batched_tokens=64)
    model = llm.engine.runner.model
    conversations = self_distill(llm, CONFIG)
    prompt, answer = conversations[0]
    hidden = hidden_states(llm, prompt + answer)
    assert hidden.shape == (len(prompt) + len(answer), 576)
    # The hidden state before each answer token is the one the model chose it from (greedy).
    predicted = model.compute_logits(hidden[len(prompt) - 1 : -1]).argmax(-1).tolist()
    assert predicted == answer

    examples = make_examples(llm, conversations, CONFIG.num_heads)
    assert len(examples.labels) == sum(len(a) for _, a in conversations)
    assert examples.next_ids[: len(answer)].tolist() == answer
    assert examples.labels[0].tolist() == answer[1:3]

    before = accuracy(model, DraftHeads(576, CONFIG.num_heads), examples)
    heads, after = train_heads(llm, examples, examples, CONFIG)
    assert after[0] > before[0] + 0.2 and after[1] > before[1]

    path = tmp_path / "heads.safetensors"
    heads.save(path, {"model": "test"})
    loaded = DraftHeads.load(path, 576)
    assert torch.equal(loaded.weight, heads.weight.detach().to(torch.bfloat16).float())
