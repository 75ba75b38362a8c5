"""The server's OpenAI API tests (the real openai client: completions and chat, streamed and not,
logprobs, stop strings, errors, the API key, a repeated conversation's cached prompt), each run
through a prefix-aware router over three backends (this directory's `server` and `client`)."""

from tests.server.test_openai_api import *  # noqa: F403 -- the same tests, collected here against the router
