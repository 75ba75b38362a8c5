"""`tokenmill bench roofline`: the FLOP count against the model's own layers, and the command end to end."""

from torch import nn

from tokenmill.bench.roofline import StepFraction, prefill_flops, profile_decode
from tokenmill.cli import main
from tokenmill.eval.quality import kv_bytes_per_token
from tokenmill.runner.sampler import Sampler


def test_prefill_flops_count_every_decoder_weight_once_per_token(llm):
    """2 FLOPs a weight a token for the decoder's linear layers (read off the model), one row of the
    LM head, and causal attention's two products per query head."""
    model, arch, tokens = llm.engine.runner.model, llm.engine.arch, 64
    decoder = sum(m.in_features * m.out_features for name, m in model.named_modules()
                  if isinstance(m, nn.Linear) and name.startswith("model.layers."))
    attention = 2 * 2 * arch.num_layers * arch.num_heads * arch.head_dim * sum(range(1, tokens + 1))
    expected = 2 * tokens * decoder + 2 * arch.hidden_size * arch.vocab_size + attention
    assert prefill_flops(llm.engine, tokens) == expected


def test_a_step_at_its_floor_is_all_of_the_roofline():
    assert StepFraction("decode", seconds=0.02, work=1e8, floor_s=0.005).fraction == 0.25


def test_the_command_measures_the_machine_and_both_steps(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line a row
    assert main(["bench", "roofline", "--read-bytes", str(64 << 20), "--context", "32", "--decode-tokens", "8",
                 "--prefill-tokens", "64", "--kv-cache-memory", str(32 << 20), "--long-context", "200", "--batch", "3",
                 "--batch-context", "16"]) == 0
    out = capsys.readouterr().out
    assert "read GB/s" in out and "bfloat16 GFLOP/s" in out and "int8 GFLOP/s" in out
    assert "decode, batch 1, context 32" in out and "prefill, 64 tokens" in out and "%" in out
    assert "1 x 32" in out and "3 x 16" in out and "1 x 200" in out  # the decode profiles


def test_a_decode_profile_splits_the_step_and_leaves_the_engine_as_it_was(llm):
    profile = profile_decode(llm, batch=2, context=20, num_tokens=6)
    assert 0 < profile.attention_seconds < profile.kernel_seconds
    assert 0 < profile.sampler_seconds < profile.seconds and 0 < profile.forward_seconds < profile.seconds
    assert 0 <= profile.fixed_share < 1 and 0 < profile.host_share < 1
    assert profile.kv_bytes == 2 * kv_bytes_per_token(llm.engine) * (20 + 6)  # 12 steps: 6 more keys on average
    assert not llm.engine.has_unfinished_requests()  # its requests were ended
    runner = llm.engine.runner
    assert isinstance(runner.sampler, Sampler) and "_forward" not in vars(runner)  # the timers are gone
