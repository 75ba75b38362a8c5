"""The engine's side of disaggregated serving: which sequences park their blocks when they end
(prefill instance) or pull their prompt's KV as they are first admitted (decode instance, called
by the scheduler), and freeing parked blocks once pulled. The blocks move through a KVConnector
(kv_transfer/connector.py)."""

from __future__ import annotations

import time

from tokenmill.engine.sequence import Sequence
from tokenmill.kv.kv_manager import KVCacheManager
from tokenmill.kv_transfer.connector import KVConnector
from tokenmill.kv_transfer.params import KVTransferParams

_IDLE_WAIT_S = 0.002  # with nothing to run but parked blocks, how long a step waits for them to be pulled


class KVTransfer:
    def __init__(self, role: str, connector: KVConnector, kv: KVCacheManager) -> None:
        self.role, self.connector, self.kv = role, connector, kv
        self.num_pulled = self.num_fallbacks = 0  # decode side: prompts pulled, and prefilled here instead

    def parks(self, seq: Sequence) -> bool:
        """Whether seq's blocks stay when it ends, for a decode instance to pull."""
        transfer = seq.params.kv_transfer
        return (self.role == "prefill" and transfer is not None and transfer.do_remote_decode
                and seq.params.n == 1 and not self.connector.broken)  # fmt: skip

    def park(self, seq: Sequence) -> KVTransferParams:
        """Parks the ended seq's blocks (the scheduler left them); returns what names them."""
        return self.connector.park(seq.seq_id, self.kv.block_table(seq.seq_id), seq.prompt_token_ids)

    def pull_prompt(self, seq: Sequence) -> None:
        """On a decode instance, as the scheduler first admits a sequence whose request names a
        transfer: takes blocks for its prompt but the last token and pulls their KV, so that it
        starts with them computed. Where the transfer does not fit or fails, the sequence prefills
        here as any other."""
        transfer = seq.params.kv_transfer
        if (self.role != "decode" or transfer is None or transfer.transfer_id is None or seq.params.n != 1
                or seq.num_cached_tokens is not None or self.kv.block_table(seq.seq_id)):  # fmt: skip
            return
        num_tokens = seq.num_prompt_tokens - 1  # the last one is computed here: its logits give the first token
        fits = transfer.num_tokens == seq.num_prompt_tokens and self.kv.can_allocate(seq.seq_id, seq.num_prompt_tokens)
        if fits:
            self.kv.allocate(seq.seq_id, num_tokens)
        if fits and self.connector.pull(transfer, self.kv.block_table(seq.seq_id), seq.prompt_token_ids):
            seq.num_computed_tokens, seq.num_cached_tokens = num_tokens, 0
            self.num_pulled += 1
        else:
            self.kv.free(seq.seq_id)
            self.num_fallbacks += 1

    def free_released(self) -> None:
        """On a prefill instance, frees the parked blocks that were pulled or expired."""
        if self.role == "prefill":
            for seq_id in self.connector.released():
                self.kv.free(seq_id)

    @property
    def has_parked(self) -> bool:
        return self.connector.num_parked > 0

    def wait(self) -> None:
        time.sleep(_IDLE_WAIT_S)
