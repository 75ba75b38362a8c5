"""LLM: the offline API, shaped like vLLM's so users can switch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence as Seq
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tokenmill.config import EngineConfig
from tokenmill.engine.engine import InvalidRequestError, LLMEngine
from tokenmill.engine.output_processor import OutputProcessor, RequestDelta
from tokenmill.lora.request import LoRARequest
from tokenmill.outputs import RequestOutput
from tokenmill.sampling_params import SamplingParams

PromptType = str | dict[str, Any]  # a string, or {"prompt_token_ids": [...]} / {"prompt": "..."}


class LLM:
    def __init__(self, model: str | Path | None = None, **engine_options: Any) -> None:
        """`model`: a GGUF file or a Hugging Face directory (None: the default model). The options
        are vLLM's names, listed with their defaults in `EngineConfig.create`: dtype, device, seed,
        block_size, max_num_seqs, max_num_batched_tokens, max_model_len, kv_cache_memory,
        kv_cache_memory_fraction, attention_backend, enable_prefix_caching, kv_cache_dtype,
        quantization, quantization_group_size, speculative_config, enforce_eager, enable_lora,
        max_loras, max_lora_rank, max_cpu_loras, tensor_parallel_size, pipeline_parallel_size."""
        self.engine = LLMEngine(EngineConfig.create(model, **engine_options))
        self.tokenizer = self.engine.tokenizer
        self._processor = OutputProcessor(self.tokenizer)  # text, in this process, off the engine's step

    def generate(
        self,
        prompts: PromptType | Seq[PromptType],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        priority: Seq[int] | None = None,
        lora_request: LoRARequest | Seq[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """lora_request: one adapter for every prompt, or one (or None) per prompt (needs enable_lora)."""
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        params = _per_prompt(sampling_params or SamplingParams(), len(prompts))
        adapters = list(lora_request) if isinstance(lora_request, Seq) else [lora_request] * len(prompts)
        if len(adapters) != len(prompts):
            raise ValueError(f"got {len(adapters)} lora requests for {len(prompts)} prompts")
        ids = []
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                ids.append(self._add(prompt, p, priority[i] if priority else 0, adapters[i]))
        except Exception:
            for request_id in ids:  # leave nothing half-added behind
                self._abort(request_id)
            raise
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict[str, str]] | list[list[dict[str, str]]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        lora_request: LoRARequest | Seq[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=add_generation_prompt)
                   for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request)

    def stream(self, prompt: PromptType, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Generates for one prompt, yielding its output (text so far) after every step that adds to it."""
        request_id = self._add(prompt, sampling_params or SamplingParams())
        try:
            while True:
                for delta in self._step():
                    if delta.request_id == request_id:
                        yield self._processor.output(request_id)
                        if delta.finished:
                            return
        finally:
            self._abort(request_id)  # a consumer that stops early frees the request

    def _add(self, prompt: PromptType, params: SamplingParams, priority: int = 0,
             lora_request: LoRARequest | None = None) -> str:  # fmt: skip
        text, token_ids = self._tokenize(prompt)
        request_id = self.engine.add_request(token_ids, params, priority=priority, lora_request=lora_request)
        self._processor.add_request(request_id, text, token_ids, params)
        return request_id

    def _tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        prompt = _engine_prompt(prompt)
        if not isinstance(prompt, str):
            return None, prompt
        if not prompt:
            raise InvalidRequestError("prompt", "prompt is empty")
        return prompt, self.tokenizer.encode(prompt)

    def _abort(self, request_id: str) -> None:
        self.engine.abort_request(request_id)
        self._processor.forget(request_id)

    def _step(self) -> list[RequestDelta]:
        """One engine step, its token ids made text; samples that a stop string ended are aborted."""
        deltas = self._processor.process(self.engine.step())
        for request_id, indices in self._processor.take_aborts():
            self.engine.abort_request(request_id, indices)
        for request_id, error in self.engine.take_rejected():
            self._processor.forget(request_id)
            raise error  # _run frees the rest of the batch
        return deltas

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        try:
            with tqdm(total=len(request_ids), desc="Generating", unit="req", disable=not use_tqdm) as bar:
                while self.engine.has_unfinished_requests():
                    for delta in self._step():
                        if delta.finished:
                            finished[delta.request_id] = self._processor.pop_output(delta.request_id)
                            bar.update(1)
        except BaseException:  # an interrupt, or an error inside a step: free what is still running
            for request_id in request_ids:
                self._abort(request_id)
            raise
        return [finished[i] for i in request_ids]


def _per_prompt(params: SamplingParams | Seq[SamplingParams], n: int) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} sampling params for {n} prompts")
    return params


def _engine_prompt(prompt: PromptType) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
        return list(prompt["prompt_token_ids"])
    if isinstance(prompt, dict) and "prompt" in prompt:
        return prompt["prompt"]
    raise TypeError(f"a prompt is a string or a dict with 'prompt' or 'prompt_token_ids', got {type(prompt).__name__}")
