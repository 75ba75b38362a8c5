"""Schemathesis, the command its users run, over every route of a real server's OpenAPI document:
valid and invalid bodies from the schema, seeded and bounded. No answer may be a 5xx or differ
from what the document declares, and the server must come out unharmed."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.live_server import API_KEY, MODEL, start_server

SEED = 20261205
MAX_EXAMPLES = 40  # per route in the fuzzing phase; the coverage phase adds its boundary cases
# positive_data_acceptance expects every body the schema allows to be served; a few cannot be, by
# rules no schema states (a prompt longer than the context, a token id past the vocabulary), and
# those are refused with a 400 that the other checks still hold to the error schema.
EXCLUDED_CHECKS = "positive_data_acceptance"


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory):
    # A short context and few samples bound what each generated request can cost.
    # The default mode (quantized weights, the fast step), as users serve: it answers soonest.
    running = start_server(tmp_path_factory.mktemp("fuzz"), "--dtype", "auto", "--quantization", "auto",
                           "--max-model-len", "32", "--max-n", "2")
    yield running
    running.stop()


def greedy_answer(server) -> str:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=server.headers(), timeout=60)
    return response.json()["choices"][0]["text"]


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(fuzzed_server, tmp_path):
    before = greedy_answer(fuzzed_server)
    report = tmp_path / "report.json"
    command = [
        Path(sys.executable).with_name("schemathesis"), "run", f"{fuzzed_server.url}/openapi.json",
        "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS, "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED), "--workers", "1", "--request-timeout", "60", "--max-response-time", "60",
        "--phases", "examples,coverage,fuzzing",
        "-H", f"Authorization: Bearer {API_KEY}", "--report", "json", "--report-json-path", str(report),
        "--no-color", "--suppress-health-check", "all",
    ]  # fmt: skip  (one worker: Hypothesis describing its strategies from two threads at once fails)
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache there
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    run = json.loads(report.read_text())
    assert run["operations"]["tested"] == 8 and not run["failures"] and not run["errors"]
    assert run["test_cases"]["generated"] >= 300, run["test_cases"]
    assert before and greedy_answer(fuzzed_server) == before  # unharmed


def test_a_max_tokens_past_the_context_ends_at_the_context(fuzzed_server):
    body = {"model": MODEL, "prompt": "word " * 19, "max_tokens": 10**9}  # 20 tokens of a 32-token context
    response = httpx.post(f"{fuzzed_server.url}/v1/completions", json=body, headers=fuzzed_server.headers(),
                          timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["finish_reason"] == "length" and answer["usage"]["total_tokens"] == 32
