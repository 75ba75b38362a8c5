"""Disaggregated prefill and decode with real processes: a prefill instance and a decode instance
(`tokenmill serve --kv-role ...`, their KV moved over gloo) behind `tokenmill disagg-proxy`. Greedy
answers through the proxy, streamed or not, are one process's, every prompt's KV pulled rather
than recomputed; afterwards every block on both sides is free. Killing the prefill instance
mid-run loses no request: the decode instance prefills them itself."""

import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.live_server import API_KEY, MODEL, RUNNING, start_server
from tests.model.test_logits_match_transformers import PROMPTS
from tokenmill import SamplingParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def disaggregated(tmp_path):
    """(proxy URL, prefill server, decode server): the two instances start together (each waits
    for the other at the KV rendezvous)."""
    peer = ["--kv-peer", f"127.0.0.1:{free_port()}"]
    with ThreadPoolExecutor(2) as pool:
        prefill, decode = pool.map(lambda role: start_server(tmp_path, "--kv-role", role, *peer), ["prefill", "decode"])
    port = free_port()
    log = (tmp_path / "proxy.log").open("w")
    proxy = subprocess.Popen([sys.executable, "-m", "tokenmill", "disagg-proxy", "--prefill", prefill.url,
                              "--decode", decode.url, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proxy.poll() is None and time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    try:
        yield url, prefill, decode
    finally:
        proxy.terminate()
        proxy.wait(10)
        decode.stop()
        if prefill.process.poll() is None:
            prefill.stop()
        else:  # killed by the test
            RUNNING.remove(prefill)


def complete(url: str, prompt: str, stream: bool = False, max_tokens: int = 16) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    args = dict(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
    if not stream:
        return client.completions.create(**args).choices[0].text
    return "".join(chunk.choices[0].text for chunk in client.completions.create(**args, stream=True) if chunk.choices)


def expected_texts(make_llm, prompts, max_tokens=16) -> list[str]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return [o.outputs[0].text for o in make_llm().generate(prompts, params, use_tqdm=False)]


def test_prompts_prefilled_elsewhere_decode_to_one_process_answers(disaggregated, make_llm):
    url, prefill, decode = disaggregated
    expected = expected_texts(make_llm, PROMPTS)
    got = [complete(url, prompt, stream=i % 2 == 1) for i, prompt in enumerate(PROMPTS)]
    assert got == expected
    assert decode.metric("tokenmill:kv_transfers_total", result="pulled") == len(PROMPTS)
    assert decode.metric("tokenmill:kv_transfers_total", result="fallback") == 0
    prefill.wait_idle()  # every parked block pulled and freed
    decode.wait_idle()


def test_a_transfer_the_prefill_instance_does_not_hold_is_prefilled_here(disaggregated, make_llm):
    """A made-up transfer id (or one for another prompt) sent straight to the idle decode
    instance: the prefill instance says it holds no such KV, and the decode instance prefills."""
    url, prefill, decode = disaggregated
    client = openai.OpenAI(base_url=f"{decode.url}/v1", api_key=API_KEY, max_retries=0)
    prompt_tokens = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=1).usage.prompt_tokens
    forged = {"transfer_id": "0" * 32, "num_tokens": prompt_tokens}
    answer = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=16, temperature=0,
                                       extra_body={"ignore_eos": True, "kv_transfer_params": forged})
    assert answer.choices[0].text == expected_texts(make_llm, PROMPTS[:1])[0]
    assert decode.metric("tokenmill:kv_transfers_total", result="fallback") == 1
    decode.wait_idle()


def test_a_killed_prefill_instance_loses_no_request(disaggregated, make_llm):
    url, prefill, decode = disaggregated
    prompts = [f"{p} Tell me more." for p in PROMPTS] * 2
    expected = expected_texts(make_llm, prompts, max_tokens=24)
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = complete(url, prompts[i], stream=i % 2 == 0, max_tokens=24)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
        if thread is threads[3]:
            prefill.process.send_signal(signal.SIGKILL)
    for thread in threads:
        thread.join(120)
    assert [results.get(i) for i in range(len(prompts))] == expected
    pulled = decode.metric("tokenmill:kv_transfers_total", result="pulled")
    assert 0 < pulled < len(prompts)  # prefilled there before the kill, here after it
    decode.wait_idle()
    assert complete(url, PROMPTS[0]) == expected_texts(make_llm, PROMPTS[:1])[0]  # still serving, alone
