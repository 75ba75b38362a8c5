"""Recorded kernel calls replayed on new data (kernels/launch.py) against the PyTorch layers.

RMSNorm's kernel takes a float between its integers and RoPE's takes eleven integer-class
arguments (past the six that x86-64 passes in registers), so a replay in one C call that put an
argument in the wrong place would give other numbers here."""

import platform
import sys

import pytest
import torch

from tokenmill.kernels.fused_ops import FusedOps
from tokenmill.kernels.launch import Program, Recording
from tokenmill.model.layers import RMSNorm, RotaryEmbedding

OPS = FusedOps.load()
pytestmark = pytest.mark.skipif(OPS is None, reason="no C compiler for the fused kernels")

ROWS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 3, 64, 4, 2, 16


def record_step(x, residual, norm, positions, q, k, rope):
    with Recording() as recording:
        normed, _ = OPS.rms_norm(x, residual, norm.weight, norm.eps)
        OPS.rotary(positions, q, k, rope.cos, rope.sin)
    return Program(recording.calls), normed


def test_a_replayed_program_computes_on_the_new_contents_of_its_tensors():
    torch.manual_seed(0)
    norm = RMSNorm(HIDDEN, eps=1e-5)
    norm.weight.data.uniform_(0.5, 1.5)
    rope = RotaryEmbedding(HEAD_DIM, 64, 10000.0, None)
    x, residual = torch.randn(ROWS, HIDDEN), torch.randn(ROWS, HIDDEN)
    positions = torch.zeros(ROWS, dtype=torch.int64)
    q, k = torch.randn(ROWS, HEADS, HEAD_DIM), torch.randn(ROWS, KV_HEADS, HEAD_DIM)
    program, normed = record_step(x, residual, norm, positions, q, k, rope)

    new = {"x": torch.randn(ROWS, HIDDEN), "residual": torch.randn(ROWS, HIDDEN),
           "q": torch.randn(ROWS, HEADS, HEAD_DIM), "k": torch.randn(ROWS, KV_HEADS, HEAD_DIM)}
    for tensor, name in ((x, "x"), (residual, "residual"), (q, "q"), (k, "k")):
        tensor.copy_(new[name])
    positions.copy_(torch.tensor([5, 17, 40]))
    program.run()

    expected_normed, expected_residual = norm(new["x"], new["residual"].clone())
    expected_q, expected_k = rope(positions, new["q"], new["k"])
    torch.testing.assert_close(normed, expected_normed)
    torch.testing.assert_close(residual, expected_residual)
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(k, expected_k)


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"),
                    reason="one C call replays steps on x86-64 and AArch64 Linux only")
def test_on_linux_x86_64_and_aarch64_a_step_replays_in_one_c_call():
    norm = RMSNorm(HIDDEN, eps=1e-5)
    rope = RotaryEmbedding(HEAD_DIM, 64, 10000.0, None)
    q, k = torch.randn(ROWS, HEADS, HEAD_DIM), torch.randn(ROWS, KV_HEADS, HEAD_DIM)
    program, _ = record_step(torch.randn(ROWS, HIDDEN), torch.randn(ROWS, HIDDEN), norm,
                             torch.arange(ROWS), q, k, rope)
    assert program.in_c


def test_a_timed_recording_times_each_replayed_call():
    norm = RMSNorm(HIDDEN, eps=1e-5)
    rope = RotaryEmbedding(HEAD_DIM, 64, 10000.0, None)
    # The program holds the tensors' addresses only: they must outlive it.
    tensors = (torch.randn(ROWS, HIDDEN), torch.randn(ROWS, HIDDEN), norm, torch.arange(ROWS),
               torch.randn(ROWS, HEADS, HEAD_DIM), torch.randn(ROWS, KV_HEADS, HEAD_DIM), rope)
    program, _ = record_step(*tensors)
    with Recording(timed=True) as timed:
        program.run()
    assert [name for _, _, name in timed.calls] == ["rms_norm_f32", "rotary_f32"]
    assert len(timed.seconds) == 2 and all(seconds > 0 for seconds in timed.seconds)
