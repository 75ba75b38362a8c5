"""`tokenmill eval quality` as a user runs it, on the session's engines."""

import json

from tokenmill import cli
from tokenmill.eval import cli as eval_cli


def test_quality_prints_the_table_and_writes_every_figure(engines, monkeypatch, tmp_path, capsys):
    built = []
    monkeypatch.setattr(eval_cli, "build_engine", lambda args, precision: built.append(precision) or engines[precision])
    out = tmp_path / "quality.json"
    assert cli.main(["eval", "quality", "--precisions", "float32,bfloat16", "--windows", "2", "--window-tokens", "64",
                     "--out", str(out)]) == 0
    assert built == ["float32", "bfloat16"]  # the reference is float32 itself, built once
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "bfloat16" in printed
    run = json.loads(out.read_text())
    assert run["reference"] == "float32" and run["windows"] == 2 and run["window_tokens"] == 64
    float32, bfloat16 = run["results"]
    assert [float32["precision"], bfloat16["precision"]] == ["float32", "bfloat16"]
    assert float32["mean_kl"] == 0 and float32["top1_agreement"] == 1 and bfloat16["mean_kl"] > 0
    assert float32["num_positions"] == bfloat16["num_positions"] == 2 * 63
    assert bfloat16["weight_bytes"] < 0.75 * float32["weight_bytes"]  # the matrices in two bytes a weight
    assert bfloat16["kv_bytes_per_token"] == float32["kv_bytes_per_token"]  # on the CPU the KV stays float32
    assert float32["perplexity"] > 1
