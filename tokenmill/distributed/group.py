"""The ranks of one engine and what they say to each other, over torch.distributed.

A `RankGroup` is a process group of its own (a TCPStore rendezvous, then gloo on CPUs or NCCL on
GPUs, with a gloo group beside it for the CPU-side messages), made without touching
torch.distributed's default group, so an engine never collides with one its host process set up
(under torchrun, say). `connect` joins a rank to the world of all ranks and to its pipeline
stage's tensor-parallel group: rank = stage * tensor_parallel_size + its rank in the stage.

- Tensor parallelism reads the stage's group as a `TensorParallel`: which heads, rows and columns
  this rank holds, and the all-reduce and all-gather that join the partial results.
- Pipeline parallelism reads the world as a `PipelineParallel`: this stage's layers, and the
  activations sent to the same tensor-parallel rank of the next stage.
- Rank 0 sends every rank the engine's calls (`send_object`, which does not wait for the other
  side: a stage still busy with the last micro-batch takes the call when it is done), and the
  last stage sends rank 0 each step's output.
"""

from __future__ import annotations

import datetime
import math
import pickle
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tokenmill.config import ParallelConfig

CONNECT_TIMEOUT = datetime.timedelta(minutes=5)  # the rendezvous: workers load the model before they join
# How long a receive may wait. A worker waits for its next call as long as the server idles, so
# no bound short of this: a peer that dies closes its connections, which fails the wait at once.
WAIT_TIMEOUT = datetime.timedelta(days=365)
# Point-to-point tags: messages with one tag between two ranks arrive in the order sent. Objects
# go on a channel, a pair of tags (the size, then the pickle): calls and outputs on one, replies
# to rank 0's questions on another, so that rank 0 takes a reply without first taking the
# outputs of the steps still in flight.
_ACTIVATION_TAG = 3
CALLS, REPLIES = (1, 2), (4, 5)


@dataclass(frozen=True)
class RankGroup:
    rank: int
    size: int
    group: dist.ProcessGroup | None  # the tensors' collectives; None: one rank, nothing to say
    control: dist.ProcessGroup | None = None  # pickled messages, on the CPU: gloo (the same group off CUDA)
    # sends not yet taken by their receiver, kept (with their buffers) until they complete
    _pending: list[tuple[dist.Work, torch.Tensor]] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def on_store(cls, store: dist.Store, name: str, rank: int, size: int, device: torch.device) -> RankGroup:
        control = dist.ProcessGroupGloo(dist.PrefixStore(f"{name}/control", store), rank, size, WAIT_TIMEOUT)
        if device.type != "cuda":
            return cls(rank, size, control, control)
        return cls(rank, size, dist.ProcessGroupNCCL(dist.PrefixStore(f"{name}/tensors", store), rank, size), control)

    def send_object(self, obj: object, dst: int, channel: tuple[int, int] = CALLS) -> None:
        """Sends obj (pickled) to rank dst, without waiting for dst to take it."""
        data = pickle.dumps(obj)
        self._send(self.control, torch.tensor([len(data)], dtype=torch.int64), dst, channel[0])
        self._send(self.control, torch.frombuffer(bytearray(data), dtype=torch.uint8), dst, channel[1])

    def recv_object(self, src: int, channel: tuple[int, int] = CALLS) -> object:
        """The next object rank src sent this rank on the channel."""
        size = torch.empty(1, dtype=torch.int64)
        self.control.recv([size], src, channel[0]).wait()
        data = torch.empty(int(size), dtype=torch.uint8)
        self.control.recv([data], src, channel[1]).wait()
        return pickle.loads(data.numpy().tobytes())

    def send_tensor(self, tensor: torch.Tensor, dst: int) -> None:
        self._send(self.group, tensor.contiguous(), dst, _ACTIVATION_TAG)

    def recv_tensor(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """Fills tensor (of the sent shape and dtype) with what src sent."""
        self.group.recv([tensor], src, _ACTIVATION_TAG).wait()
        return tensor

    def wait_sent(self) -> None:
        """Returns once every send has been taken."""
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()

    def _send(self, group: dist.ProcessGroup, tensor: torch.Tensor, dst: int, tag: int) -> None:
        self._pending[:] = [(work, t) for work, t in self._pending if not work.is_completed()]
        self._pending.append((group.send([tensor], dst, tag), tensor))


SINGLE = RankGroup(0, 1, None)


def connect(rank: int, parallel: ParallelConfig, master_addr: str, master_port: int,
            device: torch.device) -> tuple[RankGroup, TensorParallel, PipelineParallel]:  # fmt: skip
    """Joins the rendezvous at master_addr:master_port (rank 0 hosts it); returns, once every rank
    has joined, the world, and this rank's tensor-parallel and pipeline-parallel views."""
    size, tp_size = parallel.world_size, parallel.tensor_parallel_size
    store = dist.TCPStore(master_addr, master_port, size, is_master=rank == 0, timeout=CONNECT_TIMEOUT)
    world = RankGroup.on_store(store, "world", rank, size, device)
    stage = rank // tp_size
    if tp_size == size:
        tensor = world
    elif tp_size == 1:
        tensor = SINGLE  # a stage of one rank: nothing to reduce
    else:
        tensor = RankGroup.on_store(store, f"stage{stage}", rank % tp_size, tp_size, device)
    return world, TensorParallel(tensor), PipelineParallel(world, stage, parallel.pipeline_parallel_size, tp_size)


@dataclass
class CommStats:
    """What this rank's collectives moved and how long it waited on them (which includes waiting
    for slower ranks to arrive): the benchmark's split of a step into compute and communication."""

    calls: int = 0
    bytes: int = 0  # this rank's payload: each all-reduce's tensor, each all-gather's part
    seconds: float = 0.0

    def add(self, tensor: torch.Tensor, start: float) -> None:
        self.calls += 1
        self.bytes += tensor.numel() * tensor.element_size()
        self.seconds += time.perf_counter() - start


@dataclass(frozen=True)
class TensorParallel:
    """One rank's share of every split matrix: query heads, KV heads (replicated where there are
    fewer than ranks, as vLLM does), MLP columns and vocabulary rows split evenly."""

    ranks: RankGroup = SINGLE
    stats: CommStats = field(default_factory=CommStats, compare=False)

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def size(self) -> int:
        return self.ranks.size

    def split(self, total: int, what: str) -> tuple[int, int]:
        """(first, count) of this rank's even share of `total` items."""
        if total % self.size:
            raise ValueError(f"tensor_parallel_size {self.size} does not divide the model's {total} {what}")
        count = total // self.size
        return self.rank * count, count

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """(first, count) of this rank's KV heads: a share where they split evenly; where there are
        fewer heads than ranks, one head, each serving size // num_kv_heads ranks."""
        if num_kv_heads >= self.size:
            return self.split(num_kv_heads, "KV heads")
        if self.size % num_kv_heads:
            raise ValueError(f"tensor_parallel_size {self.size} must be a multiple of the model's {num_kv_heads} "
                             "KV heads to replicate them")
        return self.rank // (self.size // num_kv_heads), 1

    def vocab_rows(self, vocab_size: int) -> tuple[int, int]:
        """(first, count) of this rank's vocabulary rows, the vocabulary padded to a multiple of size."""
        count = math.ceil(vocab_size / self.size)
        return self.rank * count, count

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's x, in place."""
        if self.ranks.group is not None:
            start = time.perf_counter()
            self.ranks.group.allreduce([x]).wait()
            self.stats.add(x, start)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's x side by side along the last dimension, rank 0's first."""
        if self.ranks.group is None:
            return x
        start = time.perf_counter()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self.ranks.group.allgather([parts], [x]).wait()
        self.stats.add(x, start)
        return torch.cat(parts, dim=-1)


@dataclass(frozen=True)
class PipelineParallel:
    """One rank's pipeline stage: a contiguous range of the layers (the first stage also embeds the
    tokens, the last also norms and computes logits), and the activations that cross from each
    stage to the next: from a rank to the rank with the same tensor-parallel rank one stage on."""

    ranks: RankGroup = SINGLE  # the world
    stage: int = 0
    num_stages: int = 1
    tp_size: int = 1
    stats: CommStats = field(default_factory=CommStats, compare=False)  # the activations sent on

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1

    def layers(self, num_layers: int) -> range:
        """This stage's layers: an even share, the first stages taking one more where they do not
        divide evenly (the last stage also has the LM head)."""
        if num_layers < self.num_stages:
            raise ValueError(f"pipeline_parallel_size {self.num_stages} exceeds the model's {num_layers} layers")
        share, extra = divmod(num_layers, self.num_stages)
        start = self.stage * share + min(self.stage, extra)
        return range(start, start + share + (self.stage < extra))

    def send_next(self, activations: torch.Tensor) -> None:
        start = time.perf_counter()
        self.ranks.send_tensor(activations, self.ranks.rank + self.tp_size)
        self.stats.add(activations, start)

    def recv_prev(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.ranks.recv_tensor(torch.empty(shape, dtype=dtype, device=device), self.ranks.rank - self.tp_size)
