"""64 concurrent streams, a third of them dropped midway: the rest finish right, every block comes back."""

import asyncio

import openai

from tests.live_server import API_KEY, MODEL
from tokenmill import SamplingParams

NUM_REQUESTS = 64
MAX_TOKENS = 24


def prompt(i: int) -> str:
    return f"Request {i}. " + "The river ran past the old mill, " * (1 + i % 7) + "and then"


async def stream_one(client: openai.AsyncOpenAI, i: int, drop_after: int | None) -> tuple[str, str | None] | None:
    stream = await client.completions.create(model=MODEL, prompt=prompt(i), max_tokens=MAX_TOKENS, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
    text, reason, chunks = "", None, 0
    async for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            text += choice.text
            reason = choice.finish_reason or reason
        if drop_after is not None and chunks == drop_after:
            await stream.close()  # the client goes away mid-stream
            return None
    return text, reason


def test_64_concurrent_streams_with_a_third_dropped(server, llm):
    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=600)
        async with client:
            return await asyncio.gather(*(stream_one(client, i, 4 if i % 3 == 0 else None)
                                          for i in range(NUM_REQUESTS)))

    results = asyncio.run(run())
    kept = [i for i in range(NUM_REQUESTS) if i % 3]
    alone = llm.generate([prompt(i) for i in kept], SamplingParams(max_tokens=MAX_TOKENS, temperature=0,
                                                                   ignore_eos=True), use_tqdm=False)
    for i, expected in zip(kept, alone):
        assert results[i] == (expected.outputs[0].text, "length"), i
    assert all(results[i] is None for i in range(0, NUM_REQUESTS, 3))
    server.wait_idle()
    assert server.metric("tokenmill:kv_cache_usage_perc") == 0
