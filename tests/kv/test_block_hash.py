"""Block hashes are content-defined: two processes name the same tokens and salt the same way."""

import subprocess
import sys

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
