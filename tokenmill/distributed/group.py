"""The ranks of one engine and what they say to each other, over torch.distributed.

A `RankGroup` is a process group of its own (a TCPStore rendezvous, then gloo on CPUs or NCCL on
GPUs, with a gloo group beside it for the CPU-side calls), made without touching
torch.distributed's default group, so an engine never collides with one its host process set up
(under torchrun, say). Tensor parallelism reads the group as a
`TensorParallel`: which heads, rows and columns this rank holds, and the all-reduce and
all-gather that join the partial results. Rank 0 also sends every rank the engine's calls
(`broadcast_object`): the same calls on the same data keep every rank's state alike.
"""

from __future__ import annotations

import datetime
import math
import pickle
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

CONNECT_TIMEOUT = datetime.timedelta(minutes=5)  # workers load the model before they join


@dataclass(frozen=True)
class RankGroup:
    rank: int
    size: int
    group: dist.ProcessGroup | None  # the tensors' collectives; None: one rank, nothing to say
    control: dist.ProcessGroup | None = None  # pickled calls, on the CPU: gloo (the same group off CUDA)

    @classmethod
    def connect(cls, rank: int, size: int, master_addr: str, master_port: int, device: torch.device) -> RankGroup:
        """Joins the rendezvous at master_addr:master_port (rank 0 hosts it); returns once every rank has."""
        store = dist.TCPStore(master_addr, master_port, size, is_master=rank == 0, timeout=CONNECT_TIMEOUT)
        control = dist.ProcessGroupGloo(dist.PrefixStore("control", store), rank, size, CONNECT_TIMEOUT)
        if device.type != "cuda":
            return cls(rank, size, control, control)
        return cls(rank, size, dist.ProcessGroupNCCL(dist.PrefixStore("tensors", store), rank, size), control)

    def broadcast_object(self, obj: object = None) -> object:
        """Rank 0's obj, on every rank (pickled; the others pass nothing)."""
        if self.control is None:
            return obj
        data = pickle.dumps(obj) if self.rank == 0 else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        self._broadcast(size)
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == 0 else torch.empty(
            int(size), dtype=torch.uint8)  # fmt: skip
        self._broadcast(buffer)
        return obj if self.rank == 0 else pickle.loads(buffer.numpy().tobytes())

    def _broadcast(self, tensor: torch.Tensor) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.control.broadcast([tensor], options).wait()


SINGLE = RankGroup(0, 1, None)


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
