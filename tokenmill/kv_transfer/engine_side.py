"""The engine's side of disaggregated serving: which sequences park their blocks when they end
(prefill instance) or pull their prompt's KV before they are scheduled (decode instance), and
freeing parked blocks once pulled. The blocks move through a KVConnector (kv_transfer/connector.py)."""

from __future__ import annotations

import time

from tokenmill.engine.sequence import Sequence
from tokenmill.kv.kv_manager import KVCacheManager
from tokenmill.kv_transfer.connector import KVConnector
from tokenmill.kv_transfer.params import KVTransferParams

_IDLE_WAIT_S = 0.002  # with nothing to run but parked blocks, how long a step waits for a pull


class KVTransfer:
    def __init__(self, role: str, connector: KVConnector, kv: KVCacheManager) -> None:
        self.role, self.connector, self.kv = role, connector, kv
        self.num_pulled = self.num_fallbacks = 0  # decode side: prompts pulled, and prefilled here instead

    def parks(self, seq: Sequence) -> bool:
        """Whether seq's blocks stay when it ends, for a decode instance to pull."""
        transfer = seq.params.kv_transfer
        return self.role == "prefill" and transfer is not None and transfer.do_remote_decode

    def park(self, seq: Sequence) -> KVTransferParams:
        """Parks the ended seq's blocks (the scheduler left them); returns what names them."""
        return self.connector.park(seq.seq_id, self.kv.block_table(seq.seq_id), seq.num_prompt_tokens)

    def pull_prompt(self, seq: Sequence) -> None:
        """On a decode instance, for a new sequence whose request names a transfer: takes blocks for
        its prompt but the last token and pulls their KV, so that it starts with them computed. If
        the transfer does not fit or fails, the sequence prefills here as any other."""
        transfer = seq.params.kv_transfer
        if self.role != "decode" or transfer is None or transfer.transfer_id is None or seq.params.n != 1:
            return
        num_tokens = seq.num_prompt_tokens - 1  # the last one is computed here: its logits give the first token
        fits = transfer.num_tokens == seq.num_prompt_tokens and self.kv.can_allocate(seq.seq_id, num_tokens)
        if fits:
            self.kv.allocate(seq.seq_id, num_tokens)
        if fits and self.connector.pull(transfer, self.kv.block_table(seq.seq_id)):
            seq.num_computed_tokens, seq.num_cached_tokens = num_tokens, 0
            self.num_pulled += 1
        else:
            self.kv.free(seq.seq_id)
            self.num_fallbacks += 1

    def free_pulled(self) -> None:
        """On a prefill instance, answers pulls that arrived and frees the blocks they (or their
        expiry) release."""
        if self.role != "prefill":
            return
        for seq_id in self.connector.serve():
            self.kv.free(seq_id)

    @property
    def has_parked(self) -> bool:
        return self.connector.num_parked > 0

    def wait(self) -> None:
        time.sleep(_IDLE_WAIT_S)
