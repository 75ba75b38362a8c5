"""`tokenmill serve` with no precision flags, as `make serve` runs it: it serves in the mode that
auto chose for this machine, says so in its log, and has warmed up before it reports ready."""

import openai

from tests.live_server import API_KEY, MODEL, start_server
from tokenmill import LLM, SamplingParams


def test_the_default_server_serves_the_mode_it_chose_and_logged(tmp_path):
    server = start_server(tmp_path, "--dtype", "auto", "--quantization", "auto")
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        result = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12,
                                           temperature=0)
        log = server.log.read_text()
    finally:
        server.stop()
    assert "auto: quantization gguf" in log and "auto: kv_cache_dtype int8" in log and "auto: dtype" in log
    assert log.index("warmed up in") < log.index("Application startup complete")
    offline = LLM(kv_cache_memory=256 * 2**20).generate(["The capital of France is"],
                                                        SamplingParams(max_tokens=12, temperature=0), use_tqdm=False)
    assert result.choices[0].text == offline[0].outputs[0].text
