"""Two "hosts" on this machine: two `tokenmill serve` launchers, node ranks 0 and 1, one rendezvous
address, form one tensor-parallel engine (a rank on each); node 0 serves the API, and its greedy
outputs are the one-process engine's. When node 0 stops, node 1's launcher ends too."""

import socket
import subprocess
import sys

import httpx
import openai

from tests.live_server import API_KEY, start_server
from tests.model.test_logits_match_transformers import PROMPTS
from tokenmill import LLM, SamplingParams


def test_two_launchers_form_one_engine(tmp_path, one_kv_head_model):
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    single = LLM(one_kv_head_model, dtype="float32", quantization="none", kv_cache_memory=64 * 2**20)
    expected = [o.outputs[0].text for o in single.generate(PROMPTS, params, use_tqdm=False)]
    del single
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        rendezvous = ["--tensor-parallel-size", "2", "--nnodes", "2", "--master-addr", "127.0.0.1",
                      "--master-port", str(s.getsockname()[1])]
    node1 = subprocess.Popen([sys.executable, "-m", "tokenmill", "serve", one_kv_head_model, "--dtype", "float32",
                              "--quantization", "none", "--kv-cache-memory", str(64 * 2**20), *rendezvous,
                              "--node-rank", "1"], stdout=(tmp_path / "node1.log").open("w"), stderr=subprocess.STDOUT)
    try:
        server = start_server(tmp_path, one_kv_head_model, *rendezvous, "--node-rank", "0")
        try:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
            for prompt, text in zip(PROMPTS, expected):
                out = client.completions.create(model=server_model(server), prompt=prompt, max_tokens=16,
                                                temperature=0, extra_body={"ignore_eos": True})
                assert out.choices[0].text == text
        finally:
            server.stop()
        assert node1.wait(timeout=30) == 0, (tmp_path / "node1.log").read_text()[-3000:]
    finally:
        node1.kill()


def server_model(server) -> str:
    return httpx.get(f"{server.url}/v1/models", headers=server.headers()).json()["data"][0]["id"]
