"""`tokenmill train-draft`: draft heads trained by self-distillation.

The model answers chat prompts itself (greedy, so the labels are exactly the tokens greedy
verification accepts); one prefill of each whole conversation then gives its final hidden states.
Head i learns, from the hidden state at position t and the embedding of token t + 1, the model's
token t + 2 + i. The model stays frozen, and its LM head scores the heads' hidden states.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenmill.bench.chat_workloads import WorkloadSpec, build_workload
from tokenmill.config import DraftTrainingConfig
from tokenmill.llm import LLM
from tokenmill.sampling_params import SamplingParams
from tokenmill.speculative.heads import DraftHeads

logger = logging.getLogger(__name__)

IGNORE = -100  # label of positions with no token that far ahead


@dataclass
class Examples:
    hidden: torch.Tensor  # [N, H]: the final hidden state at position t
    next_ids: torch.Tensor  # [N]: token t + 1
    labels: torch.Tensor  # [N, num_heads]: tokens t + 2 + i, IGNORE past the end


def self_distill(llm: LLM, config: DraftTrainingConfig) -> list[tuple[list[int], list[int]]]:
    """Conversations the model wrote itself: each prompt's tokens and its greedy answer's."""
    requests = build_workload(WorkloadSpec(config.workload, config.num_prompts, seed=config.seed), llm.tokenizer)
    params = [SamplingParams(max_tokens=r.output_len, temperature=0.0) for r in requests]
    outputs = llm.chat([r.messages for r in requests], params)
    return [(out.prompt_token_ids, out.outputs[0].token_ids) for out in outputs]


def hidden_states(llm: LLM, token_ids: list[int]) -> torch.Tensor:
    """The final hidden state at every position of token_ids, [T, H], from one prefill."""
    hidden = llm.engine.score_prompt(token_ids).hidden_states
    assert hidden is not None
    return hidden


def make_examples(llm: LLM, conversations: list[tuple[list[int], list[int]]], num_heads: int) -> Examples:
    """One example per answer position t (from the prompt's last token), with its labels."""
    hidden, next_ids, labels = [], [], []
    for prompt, answer in conversations:
        ids = prompt + answer
        tokens = torch.tensor(ids)
        positions = torch.arange(len(prompt) - 1, len(ids) - 1)
        hidden.append(hidden_states(llm, ids)[positions])
        next_ids.append(tokens[positions + 1])
        ahead = positions.unsqueeze(1) + 2 + torch.arange(num_heads)
        padded = torch.cat((tokens, torch.full((num_heads + 1,), IGNORE)))
        labels.append(padded[ahead])
    return Examples(torch.cat(hidden), torch.cat(next_ids), torch.cat(labels))


def train_heads(llm: LLM, train: Examples, test: Examples,
                config: DraftTrainingConfig) -> tuple[DraftHeads, list[float]]:
    """Fits the heads with the model frozen; returns them and each head's top-1 accuracy on test."""
    model = llm.engine.runner.model
    heads = DraftHeads(train.hidden.shape[1], config.num_heads)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.learning_rate)
    steps = config.epochs * -(-len(train.labels) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=steps)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        start, total = time.monotonic(), 0.0
        order = torch.randperm(len(train.labels), generator=generator)
        for batch in order.split(config.batch_size):
            logits = _head_logits(model, heads, train.hidden[batch], train.next_ids[batch])
            loss = F.cross_entropy(logits.flatten(0, 1), train.labels[batch].flatten(), ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        held_out = ", ".join(f"{a:.3f}" for a in accuracy(model, heads, test))
        logger.info("epoch %d: loss %.3f, held-out accuracy per head %s (%.0f s)", epoch + 1,
                    total / len(train.labels), held_out, time.monotonic() - start)
    return heads, accuracy(model, heads, test)


@torch.no_grad()
def accuracy(model: torch.nn.Module, heads: DraftHeads, data: Examples) -> list[float]:
    """Per head, how often its top guess is the model's token, where there is one."""
    hits = torch.zeros(heads.num_heads)
    counts = (data.labels != IGNORE).sum(0)
    for batch in torch.arange(len(data.labels)).split(1024):
        guesses = _head_logits(model, heads, data.hidden[batch], data.next_ids[batch]).argmax(-1)
        hits += (guesses == data.labels[batch]).sum(0)
    return (hits / counts.clamp_min(1)).tolist()


def _head_logits(model: torch.nn.Module, heads: DraftHeads, hidden: torch.Tensor,
                 next_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        embedded = model.embed(next_ids).float()
    return model.compute_logits(heads(hidden, embedded))


def run(llm: LLM, config: DraftTrainingConfig, output: Path, model_name: str) -> list[float]:
    start = time.monotonic()
    conversations = self_distill(llm, config)
    logger.info("self-distillation: %d answers written in %.0f s", len(conversations), time.monotonic() - start)
    num_test = max(1, int(len(conversations) * config.held_out))
    test = make_examples(llm, conversations[:num_test], config.num_heads)
    train = make_examples(llm, conversations[num_test:], config.num_heads)
    logger.info("%d training and %d held-out positions", len(train.labels), len(test.labels))
    heads, acc = train_heads(llm, train, test, config)
    output.parent.mkdir(parents=True, exist_ok=True)
    heads.save(output, {"model": model_name, "config": json.dumps(config.__dict__),
                        "held_out_accuracy": json.dumps(acc), "train_positions": str(len(train.labels)),
                        "seconds": f"{time.monotonic() - start:.0f}"})
    return acc
