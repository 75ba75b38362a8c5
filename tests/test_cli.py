"""`tokenmill generate` and `tokenmill chat` on the real model (the session's engine); what the CLI imports."""

import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tokenmill import SamplingParams, cli


@pytest.fixture
def cli_llm(llm, monkeypatch):
    """The CLI builds its engine through build_llm: hand it the session's, already loaded."""
    built = []
    monkeypatch.setattr(cli, "build_llm", lambda args: built.append(args) or llm)
    return built


def test_generate_prints_the_greedy_completion(cli_llm, llm, capsys):
    assert cli.main(["generate", "The capital of France is", "--max-tokens", "8"]) == 0
    [expected] = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    assert capsys.readouterr().out == expected.outputs[0].text + "\n"
    assert cli_llm[0].max_tokens == 8 and cli_llm[0].dtype == "auto"


def test_generate_reads_prompts_from_a_file(cli_llm, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("One, two, three,\n\nThe quick brown fox\n")
    assert cli.main(["generate", "--file", str(prompts), "--max-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "--- 'One, two, three,'" in out and "--- 'The quick brown fox'" in out


def test_chat_streams_the_answer_and_keeps_the_conversation(cli_llm, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\nAnd of Germany?\n\n"))
    assert cli.main(["chat", "--max-tokens", "32"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "Berlin" in out  # the second answer needed the first turn's context


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "tokenmill"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "generate" in result.stdout and "chat" in result.stdout


def test_speculative_config_is_a_json_object(cli_llm, capsys):
    assert cli.main(["generate", "Hi", "--max-tokens", "2", "--speculative-config",
                     '{"method": "ngram", "num_speculative_tokens": 5}']) == 0
    assert cli.engine_options(cli_llm[0])["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 5}
    for bad in ("{method: ngram}", '["ngram"]'):
        with pytest.raises(SystemExit):
            cli.main(["generate", "Hi", "--speculative-config", bad])
    assert "--speculative-config" in capsys.readouterr().err


def test_draft_layers_makes_a_self_draft(cli_llm):
    assert cli.main(["generate", "Hi", "--max-tokens", "2", "--draft-layers", "6"]) == 0
    assert cli.engine_options(cli_llm[0])["speculative_config"] == {"method": "draft", "draft_layers": 6}
    assert cli.main(["generate", "Hi", "--max-tokens", "2", "--draft-layers", "4", "--speculative-config",
                     '{"method": "draft", "num_speculative_tokens": 2}']) == 0
    assert cli.engine_options(cli_llm[1])["speculative_config"] == {
        "method": "draft", "num_speculative_tokens": 2, "draft_layers": 4}


def run_without_torch(code: str) -> str:
    """Runs `code` in a fresh interpreter and checks it imported neither torch nor the engine; its stdout."""
    check = f"import sys\n{code}\nloaded = [m for m in ('torch', 'tokenmill.llm') if m in sys.modules]\n"
    result = subprocess.run([sys.executable, "-c", check + "assert not loaded, loaded"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("argv", [["--help"], ["bench", "serve", "--help"], ["bench", "offline", "--help"]])
def test_help_loads_no_torch(argv):
    out = run_without_torch(f"from tokenmill.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert out.startswith("usage: tokenmill")


def test_bench_serve_runs_without_torch():
    """All of `bench serve` (its parser, the workload and its tokenizer, the load, the report) talks HTTP
    only; here to a port that refuses, so every request fails at once."""
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))
        argv = ["bench", "serve", "--base-url", f"http://127.0.0.1:{unlistened.getsockname()[1]}", "--model", "m",
                "--num-requests", "2", "--concurrency", "1"]
        out = run_without_torch(
            "import argparse\nfrom tokenmill.bench import cli\n"
            "parser = argparse.ArgumentParser()\ncli.add_bench_commands(parser.add_subparsers())\n"
            f"args = parser.parse_args({argv!r})\nargs.run(args)"
        )
    assert "requests (failed)" in out
