"""The machine's limits and the engine's steps, measured in one run, each step as a fraction of its floor.

A decode step's floor is the bytes it must read (the weights, and the KV it attends over) at the
measured read bandwidth; a prefill chunk's is its FLOPs at the measured matrix-product rate of its
precision. Speed claims are stated as these fractions, which hold from one machine (and minute)
to the next better than absolute times do.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tokenmill.engine.engine import LLMEngine
from tokenmill.eval.quality import kv_bytes_per_token, weight_bytes
from tokenmill.kernels.launch import Recording
from tokenmill.llm import LLM
from tokenmill.sampling_params import SamplingParams

# The default model's widest decoder product (gate/up): [tokens, 576] x [576, 3072].
MATMUL_SHAPE = (512, 576, 3072)


@dataclass(frozen=True)
class MachineLimits:
    read_gb_s: float  # reading a buffer far larger than the caches, every thread
    gflop_s: dict[str, float]  # matrix products by precision: float32, bfloat16, int8


@dataclass(frozen=True)
class StepFraction:
    name: str
    seconds: float  # one step
    work: float  # bytes (decode) or FLOPs (prefill) the step cannot do without
    floor_s: float  # that work at the machine's limit

    @property
    def fraction(self) -> float:
        return self.floor_s / self.seconds


@dataclass(frozen=True)
class DecodeProfile:
    """Medians over the decode steps of `batch` sequences: where an engine step's time goes."""

    batch: int
    context: int  # prompt tokens before the first decode step
    seconds: float  # the whole engine step
    kernel_seconds: float  # inside its C kernel calls (replayed ones included)
    attention_seconds: float  # of those, the attention kernel's
    forward_seconds: float  # the model's forward and logits (C kernels, and PyTorch's products where used)
    sampler_seconds: float
    kv_bytes: float  # the KV the attention read per step (at the mean context)

    @property
    def fixed_share(self) -> float:
        """Of the step, what is not kernel work: where every product is a C kernel (small batches),
        the fixed cost around the kernels (Python, dispatch, input preparation, sampling, bookkeeping).
        The kernels are timed one by one in other steps than the whole: where a replayed step runs them
        faster than that (no timer between them), the share is taken as none."""
        return max(0.0, 1 - self.kernel_seconds / self.seconds)

    @property
    def host_share(self) -> float:
        """Of the step, what is outside the model: input preparation, sampling, the scheduler's and
        the engine's bookkeeping."""
        return 1 - self.forward_seconds / self.seconds


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: pages, packed weights, kernel choice
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def read_bandwidth(num_bytes: int, repeats: int = 5) -> float:
    """GB/s of a summing read over num_bytes of float32 (make it several times the last cache)."""
    data = torch.ones(num_bytes // 4)
    return num_bytes / best_time(data.sum, repeats) / 1e9


def matmul_rate(precision: str, shape: tuple[int, int, int] = MATMUL_SHAPE, repeats: int = 10) -> float:
    """GFLOP/s of one [m, k] x [k, n] product repeated with its operands in cache, the matrix
    units' own rate (the compute roofline): float32 or bfloat16 (F.linear, as the model runs them;
    oneDNN takes AMX where the CPU has it), int8 with int32 accumulation (torch._int_mm)."""
    m, k, n = shape
    if precision == "int8":
        a, b = torch.randint(-127, 128, (m, k), dtype=torch.int8), torch.randint(-127, 128, (k, n), dtype=torch.int8)
        seconds = best_time(lambda: torch._int_mm(a, b), repeats)
    else:
        dtype = getattr(torch, precision)
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        seconds = best_time(lambda: F.linear(x, w), repeats)
    return 2 * m * k * n / seconds / 1e9


def measure_limits(read_bytes: int, precisions: tuple[str, ...]) -> MachineLimits:
    return MachineLimits(read_bandwidth(read_bytes), {p: matmul_rate(p) for p in dict.fromkeys(precisions)})


def decode_step(llm: LLM, limits: MachineLimits, context: int, num_tokens: int) -> StepFraction:
    """Single-stream decode after a prompt of `context` tokens: the weights and the whole KV so far
    are read once a token. (An embedding table that is not the LM head's counts in full, though a
    token reads one row of it; the default model's is tied.)"""
    engine = llm.engine
    out = _run(llm, context, num_tokens, offset=0)
    seconds = out.metrics.decode_seconds_per_token(num_tokens)
    kv_read = kv_bytes_per_token(engine) * (context + num_tokens / 2)  # the mean context while decoding
    work = weight_bytes(engine.runner.model) + kv_read
    return StepFraction(f"decode, batch 1, context {context}", seconds, work, work / (limits.read_gb_s * 1e9))


def profile_decode(llm: LLM, batch: int, context: int, num_tokens: int) -> DecodeProfile:
    """`batch` sequences decoding together after prompts of `context` tokens (no shared prefix), the
    engine's steps taking turns: one timed whole (its forward and sampler too), one with each kernel call timed."""
    engine, runner = llm.engine, llm.engine.runner
    # Long enough that no sequence ends while later prompts are still being prefilled.
    params = SamplingParams(temperature=0, max_tokens=engine.max_model_len - context, ignore_eos=True)
    request_ids = [engine.add_request([(7 * i + 3 * seq + 2) % 1000 + 100 for i in range(context)], params)
                   for seq in range(batch)]
    started: set[str] = set()
    while len(started) < batch:  # the prompts, chunk by chunk, until every sequence has its first token
        started |= {out.request_id for out in engine.step() if out.samples}
    steps: list[float] = []
    forward: list[float] = []
    sampler: list[float] = []
    kernels: list[float] = []
    attention: list[float] = []
    # Steps taking turns: one as it runs (replayed in one C call), one with each kernel call timed.
    for _ in range(num_tokens):
        with _timed(runner, "_forward") as forward_seconds, _timed(runner, "sampler") as sampler_seconds:
            start = time.perf_counter()
            engine.step()
            steps.append(time.perf_counter() - start)
        forward += forward_seconds
        sampler += sampler_seconds
        with Recording(timed=True) as recording:
            engine.step()
        kernels.append(sum(recording.seconds))
        attention.append(sum(t for (_, _, name), t in zip(recording.calls, recording.seconds)
                             if name.startswith("paged_attention")))
    for request_id in request_ids:
        engine.abort_request(request_id)
    median = statistics.median
    # At least: a sequence that started decoding while later prompts were prefilled holds a few more.
    kv_bytes = batch * kv_bytes_per_token(engine) * (context + num_tokens)  # 2 x num_tokens steps
    return DecodeProfile(batch, context, median(steps), median(kernels), median(attention), median(forward),
                         median(sampler), kv_bytes)


@contextlib.contextmanager
def _timed(owner: object, name: str) -> Iterator[list[float]]:
    """Times every call of owner.name while open (one duration per call, in the list yielded)."""
    function, seconds = getattr(owner, name), []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    own = name in vars(owner)  # an attribute of the instance (the sampler), or a method of its class
    setattr(owner, name, timed)
    try:
        yield seconds
    finally:
        if own:
            setattr(owner, name, function)
        else:
            delattr(owner, name)


def prefill_step(llm: LLM, limits: MachineLimits, num_tokens: int, precision: str) -> StepFraction:
    """One prompt of num_tokens in one chunk: its matrix products' FLOPs (attention's included)."""
    out = _run(llm, num_tokens, 1, offset=1)
    seconds = out.metrics.first_token_time - out.metrics.first_scheduled_time
    work = prefill_flops(llm.engine, num_tokens)
    return StepFraction(f"prefill, {num_tokens} tokens", seconds, work, work / (limits.gflop_s[precision] * 1e9))


def prefill_flops(engine: LLMEngine, num_tokens: int) -> float:
    """2 FLOPs a weight a token for the decoder's matrices (the LM head reads one row), and for
    causal attention 2 products of (head_dim x keys) per query head and query."""
    arch = engine.arch
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    per_layer = arch.hidden_size * (q + 2 * kv) + q * arch.hidden_size + 3 * arch.hidden_size * arch.intermediate_size
    matrices = 2 * num_tokens * arch.num_layers * per_layer + 2 * arch.hidden_size * arch.vocab_size
    attention = 2 * 2 * arch.num_layers * q * num_tokens * (num_tokens + 1) / 2
    return matrices + attention


def _run(llm: LLM, prompt_len: int, max_tokens: int, offset: int):
    """One request alone; prompts of different offsets share no prefix, so no cached KV helps."""
    prompt = {"prompt_token_ids": [(7 * i + offset) % 1000 + 100 for i in range(prompt_len)]}
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate(prompt, params, use_tqdm=False)[0]
