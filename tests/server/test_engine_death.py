"""The engine core process dies under a stream: the front end notices at once (the end of the core's
pipe), fails what is in flight with an error event, answers 503 from then on and still exits cleanly."""

import openai
import psutil

from tests.live_server import API_KEY, MODEL, start_server


def engine_core(server) -> psutil.Process:
    children = psutil.Process(server.process.pid).children()
    return next(c for c in children if "spawn_main" in " ".join(c.cmdline()))


def test_a_killed_core_fails_the_stream_and_later_requests_get_503(tmp_path):
    server = start_server(tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        messages = [{"role": "user", "content": "Count to a thousand."}]
        stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2000, stream=True,
                                                extra_body={"ignore_eos": True})
        chunks = iter(stream)
        for _ in range(2):  # the role, then the first token: the request is running in the core
            next(chunks)
        engine_core(server).kill()
        server.assert_engine_dead(chunks)
    finally:
        server.stop()
