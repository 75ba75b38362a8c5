"""Moving a prompt's KV from a prefill instance to a decode instance (disaggregated serving).

The prefill instance (`--kv-role prefill`) runs a request that asks for it (`do_remote_decode`;
the proxy also sets max_tokens 1) and, when the request ends, keeps its blocks *parked* under a
transfer id instead of freeing them; its answer carries `kv_transfer_params` (the transfer id and
the prompt's token count). The decode instance (`--kv-role decode`), given those params with the
same request, allocates blocks for all of the prompt but its last token, pulls their KV into them,
and admits the sequence with those tokens computed, as a prefix-cache hit is admitted: the last
prompt token is computed there, and decoding goes on there. A pull that cannot be made (the
prefill instance gone, the transfer expired, no room) leaves the decode instance to prefill the
prompt itself; parked blocks are freed once pulled, or after `timeout_s`.

`KVConnector` is the interface (where NIXL- or Mooncake-style transports would go).
`DistributedKVConnector` moves blocks as torch.distributed point-to-point messages (gloo) between
the two instances' engine cores: the prefill instance hosts the rendezvous at --kv-peer, the
decode instance joins it. On the prefill side a thread answers each pull as it comes, even while
the engine idles: it reads parked blocks, which no step writes, and hands their sequences back
for the engine loop to free. On the decode side the pull runs in the engine loop as the sequence
is admitted, before any step uses its blocks. A pull names its transfer by an unguessable id and
its prompt by a hash, so that no request gets another prompt's KV.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import queue
import secrets
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from tokenmill.config import KVTransferConfig
from tokenmill.distributed.group import WAIT_TIMEOUT, RankGroup
from tokenmill.kv_transfer.params import KVTransferParams

logger = logging.getLogger(__name__)

_PREFILL, _DECODE = 0, 1  # the two ranks


class KVConnector(Protocol):
    def park(self, seq_id: int, block_ids: list[int], prompt: list[int]) -> KVTransferParams:
        """Prefill side: keeps a finished sequence's blocks for a pull; returns what names them."""

    def released(self) -> list[int]:
        """Prefill side: the sequences whose parked blocks can now be freed (pulled or expired)."""

    @property
    def num_parked(self) -> int:
        """Prefill side: sequences whose blocks are parked or not yet freed."""

    @property
    def broken(self) -> bool:
        """The other instance is gone: nothing more is parked or pulled."""

    def pull(self, params: KVTransferParams, block_ids: list[int], prompt: list[int]) -> bool:
        """Decode side: fills block_ids with the transfer's first len(block_ids) blocks, if it holds
        this prompt's KV; False where it could not (the caller computes the prompt itself)."""


def prompt_hash(token_ids: list[int]) -> str:
    return hashlib.sha256(array("q", token_ids).tobytes()).hexdigest()


@dataclass(frozen=True)
class _Pull:
    transfer_id: str
    num_blocks: int
    prompt_hash: str


@dataclass(frozen=True)
class _Parked:
    seq_id: int
    block_ids: list[int]
    prompt_hash: str
    deadline: float


@dataclass(frozen=True)
class _Layout:
    """What both sides' pools must agree on for blocks to move as they are."""

    kv_shape: tuple[int, ...]  # [layers, 2, block elements]: the pool's shape less its block count
    kv_dtype: str
    scales_shape: tuple[int, ...] | None


class DistributedKVConnector:
    def __init__(self, config: KVTransferConfig, kv_cache: torch.Tensor, kv_scales: torch.Tensor | None) -> None:
        self.role, self.timeout_s = config.kv_role, config.timeout_s
        self.pools = [t for t in (kv_cache, kv_scales) if t is not None]  # [layers, 2, blocks, elements] each
        rank = _PREFILL if self.role == "prefill" else _DECODE
        host, _, port = config.kv_peer.rpartition(":")
        timeout = datetime.timedelta(seconds=config.connect_timeout_s)
        logger.info("KV transfer (%s): %s at %s", self.role, "waiting for the decode instance" if rank == _PREFILL
                    else "joining the prefill instance", config.kv_peer)  # fmt: skip
        store = dist.TCPStore(host, int(port), 2, is_master=rank == _PREFILL, timeout=timeout)
        group = dist.ProcessGroupGloo(dist.PrefixStore("kv-transfer", store), rank, 2, WAIT_TIMEOUT)
        self.ranks = RankGroup(rank, 2, group, group)
        self._check_layout()
        self._parked: dict[str, _Parked] = {}
        self._lock = threading.Lock()  # _parked: the engine loop parks, the answering thread takes
        self._released: queue.SimpleQueue[int] = queue.SimpleQueue()  # pulled, for the engine loop to free
        self._broken = False
        if rank == _PREFILL:
            threading.Thread(target=self._answer_pulls, name="kv-transfer-pulls", daemon=True).start()

    @property
    def broken(self) -> bool:
        return self._broken

    def _check_layout(self) -> None:
        mine = _Layout((*self.pools[0].shape[:2], self.pools[0].shape[3]), str(self.pools[0].dtype),
                       None if len(self.pools) == 1 else (*self.pools[1].shape[:2], self.pools[1].shape[3]))  # fmt: skip
        self.ranks.send_object(mine, 1 - self.ranks.rank)
        theirs = self.ranks.recv_object(1 - self.ranks.rank)
        if theirs != mine:
            raise ValueError(f"the prefill and decode instances' KV caches differ ({mine} here, {theirs} there): "
                             "serve the same model with the same --dtype, --kv-cache-dtype and --block-size")

    # ---- the prefill side -------------------------------------------------------------------

    def park(self, seq_id: int, block_ids: list[int], prompt: list[int]) -> KVTransferParams:
        transfer_id = secrets.token_hex(16)
        with self._lock:
            self._parked[transfer_id] = _Parked(seq_id, list(block_ids), prompt_hash(prompt),
                                                time.monotonic() + self.timeout_s)  # fmt: skip
        return KVTransferParams(transfer_id=transfer_id, num_tokens=len(prompt))

    @property
    def num_parked(self) -> int:
        return len(self._parked) + self._released.qsize()

    def released(self) -> list[int]:
        done = []
        while not self._released.empty():
            done.append(self._released.get())
        now = time.monotonic()
        with self._lock:
            for transfer_id in [t for t, p in self._parked.items() if p.deadline < now]:
                done.append(self._parked.pop(transfer_id).seq_id)
        return done

    def _answer_pulls(self) -> None:
        """The prefill side's thread: answers each pull, in order, as it arrives."""
        try:
            while True:
                pull: _Pull = self.ranks.recv_object(_DECODE)
                with self._lock:
                    parked = self._parked.get(pull.transfer_id)
                    fits = (parked is not None and parked.prompt_hash == pull.prompt_hash
                            and pull.num_blocks <= len(parked.block_ids))  # fmt: skip
                    if fits:
                        del self._parked[pull.transfer_id]
                self._send_blocks(parked.block_ids[: pull.num_blocks] if fits else None)
                if fits:
                    self._released.put(parked.seq_id)
        except RuntimeError as exc:  # the decode instance went away; parked blocks expire
            self._broken = True
            logger.warning("KV transfer: the decode instance is gone (%s)", exc)

    def _send_blocks(self, block_ids: list[int] | None) -> None:
        """Each pool's blocks (None: no such transfer here, or not this prompt's), after a line saying which."""
        self.ranks.send_object(block_ids is not None, _DECODE)
        if block_ids is not None:
            index = torch.tensor(block_ids, device=self.pools[0].device)
            for pool in self.pools:
                self.ranks.send_tensor(pool.index_select(2, index).cpu(), _DECODE)

    # ---- the decode side --------------------------------------------------------------------

    def pull(self, params: KVTransferParams, block_ids: list[int], prompt: list[int]) -> bool:
        if self._broken or not block_ids:
            return False
        try:
            self.ranks.send_object(_Pull(params.transfer_id, len(block_ids), prompt_hash(prompt)), _PREFILL)
            if not self.ranks.recv_object(_PREFILL):
                logger.warning("KV transfer %s: the prefill instance does not hold it for this prompt; prefilling "
                               "here", params.transfer_id)
                return False
            index = torch.tensor(block_ids, device=self.pools[0].device)
            for pool in self.pools:
                shape = (*pool.shape[:2], len(block_ids), pool.shape[3])
                blocks = self.ranks.recv_tensor(torch.empty(shape, dtype=pool.dtype), _PREFILL)
                pool.index_copy_(2, index, blocks.to(pool.device))
        except RuntimeError as exc:  # gloo's error when the peer's connection closes
            self._broken = True
            logger.warning("KV transfer: the prefill instance is gone (%s); prompts are prefilled here from now on",
                           exc)
            return False
        return True
