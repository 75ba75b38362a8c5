"""Content-defined names for full KV blocks: SHA-256 over (parent's hash, token ids, extra keys).

The bytes hashed are fixed by the content alone (token ids as little-endian int64, extra keys
as canonical JSON), so every process and host names a block the same way: two engine instances,
a router comparing prefixes, or a decode instance receiving KV all agree. Extra keys keep apart
what equal tokens must not share: a request's cache salt (and, later, its LoRA adapter).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence

BlockHash = bytes
ExtraKeys = tuple[str | int, ...]

ROOT_HASH: BlockHash = hashlib.sha256(b"tokenmill-prefix-cache-v1").digest()


def hash_block(parent: BlockHash, token_ids: Sequence[int], extra_keys: ExtraKeys = ()) -> BlockHash:
    h = hashlib.sha256(parent)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    if extra_keys:
        h.update(json.dumps(extra_keys, separators=(",", ":")).encode())
    return h.digest()


def chain_hashes(
    token_ids: Sequence[int], block_size: int, num_blocks: int, hashes: list[BlockHash], extra_keys: ExtraKeys = ()
) -> None:
    """Extends `hashes` (the chain so far) to the first num_blocks full blocks of token_ids."""
    parent = hashes[-1] if hashes else ROOT_HASH
    for i in range(len(hashes), num_blocks):
        parent = hash_block(parent, token_ids[i * block_size : (i + 1) * block_size], extra_keys)
        hashes.append(parent)
