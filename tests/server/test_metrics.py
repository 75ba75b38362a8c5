"""/metrics parses with prometheus-client's parser and counts what was sent."""

from tests.live_server import MODEL

PROMPTS = ["One", "Two words", "Three more words"]


def test_counters_match_the_requests_sent(server, client):
    server.wait_idle()
    before = server.metrics()
    prompt_tokens = 0
    for p in PROMPTS:
        result = client.completions.create(model=MODEL, prompt=p, max_tokens=5, temperature=0,
                                           extra_body={"ignore_eos": True})
        prompt_tokens += result.usage.prompt_tokens
    server.wait_idle()
    after = server.metrics()
    label = (("model_name", MODEL),)

    def grew(name: str, labels: tuple = label) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("tokenmill:request_success_total", (("finished_reason", "length"), *label)) == len(PROMPTS)
    assert grew("tokenmill:generation_tokens_total") == 5 * len(PROMPTS)
    assert grew("tokenmill:prompt_tokens_total") == prompt_tokens
    assert grew("tokenmill:prefix_cache_queries_total") == prompt_tokens
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
                      "request_prefill_time_seconds", "request_decode_time_seconds"):
        assert grew(f"tokenmill:{histogram}_count") == len(PROMPTS), histogram
    assert grew("tokenmill:inter_token_latency_seconds_count") == 4 * len(PROMPTS)  # 5 tokens, 4 gaps each
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert after[(f"tokenmill:{gauge}", label)] == 0
    rank = (*label, ("pipeline_stage", "0"), ("rank", "0"))  # the one rank, its steps since start
    assert after[("tokenmill:rank_steps_total", rank)] > 0 and after[("tokenmill:rank_peak_resident_memory_bytes", rank)] > 0
