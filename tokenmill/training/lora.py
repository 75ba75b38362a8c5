"""`tokenmill train-lora`: a LoRA adapter fine-tuned with peft on the CPU, saved in PEFT's format.

Two kinds of training text:
- chat pairs, a .jsonl file of {"prompt", "response"} lines: the model learns the responses
  inside its own chat template (the prompt's tokens carry no loss);
- any other file, plain text (code, prose): cut into windows of max_len tokens, every token learned.

The base model is transformers' float32 reading of the GGUF file the engine serves, so an adapter
trained here fits tokenmill's base weights exactly. Its weights are saved in float16 (a few MB);
tokenmill and peft both read them back as float32.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from tokenmill.config import LoRATrainingConfig

logger = logging.getLogger(__name__)

IGNORE = -100  # label of tokens that carry no loss
Example = tuple[list[int], list[int]]  # token ids, labels


def load_examples(paths: list[Path], tokenizer, max_len: int) -> list[Example]:  # noqa: ANN001
    examples: list[Example] = []
    for path in paths:
        if path.suffix == ".jsonl":
            examples += [_chat_example(json.loads(line), tokenizer, max_len)
                         for line in path.read_text().splitlines() if line.strip()]  # fmt: skip
        else:
            ids = tokenizer(path.read_text())["input_ids"]
            examples += [(w, list(w)) for w in (ids[i : i + max_len] for i in range(0, len(ids), max_len)) if len(w) > 1]
    return examples


def _chat_example(pair: dict, tokenizer, max_len: int) -> Example:  # noqa: ANN001
    user = [{"role": "user", "content": pair["prompt"]}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
    whole = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": pair["response"]}],
                                          tokenize=True, return_dict=False)  # fmt: skip
    if whole[: len(prompt)] != prompt:
        raise ValueError("the chat template does not extend the prompt with the answer; cannot mask the prompt")
    whole = whole[:max_len]
    return whole, [IGNORE] * len(prompt) + whole[len(prompt) :]


def _batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (tokens, targets) in enumerate(examples):
        ids[row, : len(tokens)], labels[row, : len(targets)], mask[row, : len(tokens)] = (
            torch.tensor(tokens), torch.tensor(targets), 1)  # fmt: skip
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@torch.no_grad()
def mean_loss(model: torch.nn.Module, examples: list[Example], pad_id: int, batch_size: int) -> float:
    total = count = 0.0
    for i in range(0, len(examples), batch_size):
        batch = _batch(examples[i : i + batch_size], pad_id)
        tokens = (batch["labels"][:, 1:] != IGNORE).sum().item()
        total, count = total + model(**batch).loss.item() * tokens, count + tokens
    return total / max(count, 1)


def train(gguf_path: Path, data: list[Path], output: Path, config: LoRATrainingConfig) -> dict[str, float]:
    """Fine-tunes an adapter and saves it in output; returns the training text's mean loss per
    token before and after."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    source = dict(gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **source)
    base = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **source)
    examples = load_examples(data, tokenizer, config.max_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = get_peft_model(base, LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0,
                                            target_modules=list(config.targets)))  # fmt: skip
    before = mean_loss(model.eval(), examples, pad_id, config.batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.monotonic()
    model.train()
    for step in range(config.steps):
        picked = torch.randint(len(examples), (config.batch_size,), generator=generator).tolist()
        loss = model(**_batch([examples[i] for i in picked], pad_id)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 10 == 0 or step + 1 == config.steps:
            logger.info("step %d/%d: loss %.3f (%.0f s)", step + 1, config.steps, loss.item(), time.monotonic() - start)
    after = mean_loss(model.eval(), examples, pad_id, config.batch_size)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.half()  # a few MB on disk; read back as float32
    model.peft_config["default"].base_model_name_or_path = gguf_path.name  # not this machine's path
    model.save_pretrained(str(output))
    (output / "README.md").unlink(missing_ok=True)  # peft's empty model card
    if not math.isfinite(after):
        raise RuntimeError("training diverged (the loss is not finite)")
    return {"loss_before": before, "loss_after": after}
