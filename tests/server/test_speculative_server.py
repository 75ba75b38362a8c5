"""`tokenmill serve --speculative-config`: the same greedy answers, and the proposer's counts in /metrics."""

import json

import openai

from tests.live_server import API_KEY, MODEL, start_server

PROMPT = "Repeat exactly, three times: red, green, blue, yellow, purple."


def test_speculative_server_answers_as_the_plain_one_and_counts_proposals(tmp_path, client):
    config = json.dumps({"method": "ngram", "num_speculative_tokens": 4})
    server = start_server(tmp_path, "--speculative-config", config)
    try:
        spec_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        request = dict(model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=60, temperature=0)
        expected = client.chat.completions.create(**request).choices[0].message.content
        assert spec_client.chat.completions.create(**request).choices[0].message.content == expected
        server.wait_idle()
        drafts = server.metric("tokenmill:spec_decode_num_draft_tokens_total", method="ngram")
        accepted = server.metric("tokenmill:spec_decode_num_accepted_tokens_total", method="ngram")
        assert 0 < accepted <= drafts
    finally:
        server.stop()
