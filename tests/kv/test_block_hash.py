"""Block hashes are content-defined: two processes name the same tokens and salt the same way."""

import hashlib
import json
import struct
import subprocess
import sys

import pytest

from tokenmill.cli import build_parser
from tokenmill.kv.block_hash import ROOT_HASH, chain_hashes, hash_block

TOKENS = list(range(100, 132))
_CHILD = (
    "from tokenmill.kv.block_hash import chain_hashes\n"
    "hashes = []\n"
    f"chain_hashes({TOKENS}, 16, 2, hashes, ('tenant-a',))\n"
    "print(','.join(h.hex() for h in hashes))"
)


def _in_a_new_process(seed: str) -> list[str]:
    env = {"PYTHONHASHSEED": seed}  # a different str-hash randomization in each
    out = subprocess.run([sys.executable, "-c", _CHILD], check=True, capture_output=True, text=True, env=env)
    return out.stdout.strip().split(",")


def test_two_processes_compute_the_same_block_hashes():
    here: list[bytes] = []
    chain_hashes(TOKENS, 16, 2, here, ("tenant-a",))
    assert _in_a_new_process("1") == _in_a_new_process("2") == [h.hex() for h in here]


def test_every_input_changes_the_hash():
    base = hash_block(ROOT_HASH, [1, 2, 3])
    assert len(base) == 32  # SHA-256
    others = {hash_block(ROOT_HASH, [1, 2, 4]), hash_block(base, [1, 2, 3]), hash_block(ROOT_HASH, [1, 2, 3], ("s",)),
              hash_block(ROOT_HASH, [1, 2, 3], (7,)), hash_block(ROOT_HASH, [1, 2])}
    assert base not in others and len(others) == 5


def test_a_block_hash_is_sha256_of_its_documented_bytes():
    """Independently of the module: SHA-256 over the parent's digest, the token ids as little-endian
    int64, then the extra keys as compact JSON (what --prefix-caching-hash-algo sha256 promises)."""
    expected = hashlib.sha256(ROOT_HASH + struct.pack("<3q", 5, 6, 7) + json.dumps(["salt"]).replace(" ", "").encode())
    assert hash_block(ROOT_HASH, [5, 6, 7], ("salt",)) == expected.digest()


def test_only_sha256_is_offered_as_the_hash_algorithm():
    assert build_parser().parse_args(["serve", "--prefix-caching-hash-algo", "sha256"]).prefix_caching_hash_algo
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--prefix-caching-hash-algo", "builtin"])
