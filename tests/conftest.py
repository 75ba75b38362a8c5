import gc
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.live_server import API_KEY, COMMON_ARGS, RUNNING, RunningServer, start_server
from tokenmill import LLM
from tokenmill.model.default import default_model_path
from tokenmill.runner.model_runner import ModelRunner

# The engines built so far, the most recently used last. Each holds its weights and KV pool (about
# 1 GB); kept all, the suite's ~25 engine configurations outgrow the machine's memory, so only the
# last few stay (a test uses at most three at once).
_llms: OrderedDict[tuple, LLM] = OrderedDict()
_MAX_LLMS = 4


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--enforce-eager", action="store_true",
                     help="run every engine and server of the suite eagerly: no captured decode steps")


@pytest.fixture(scope="session", autouse=True)
def eager_when_asked(request) -> Iterator[None]:
    if not request.config.getoption("--enforce-eager"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelRunner, "enable_decode_graphs", lambda self, *limits: None)
        COMMON_ARGS.append("--enforce-eager")
        yield


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def make_llm() -> Callable[..., LLM]:
    """LLMs on the real default model, built once per distinct set of arguments."""

    def make(**kwargs) -> LLM:
        options = {"dtype": "float32", "quantization": "none", "kv_cache_memory": 256 * 2**20, **kwargs}
        key = tuple(sorted(options.items()))  # the same engine, however its options were spelled
        if key not in _llms:
            if len(_llms) >= _MAX_LLMS:
                _llms.popitem(last=False)
                gc.collect()
            _llms[key] = LLM(**options)
        _llms.move_to_end(key)
        return _llms[key]

    return make


@pytest.fixture(scope="session")
def llm(make_llm) -> LLM:
    return make_llm()


@pytest.fixture(autouse=True)
def every_kv_block_comes_back() -> Iterator[None]:
    """After every test, each engine built so far is idle with its whole block pool free."""
    yield
    for engine in (llm.engine for llm in _llms.values()):
        assert not engine.has_unfinished_requests()
        assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
        assert all(count == 0 for count in engine.kv_manager.ref_counts)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture
def post(server) -> Callable[..., httpx.Response]:
    """Raw POSTs to /v1/<path>, with the API key."""

    def send(path: str, content: bytes | None = None, **kwargs) -> httpx.Response:
        headers = {**server.headers(), **kwargs.pop("headers", {})}
        return httpx.post(f"{server.url}/v1/{path}", content=content, headers=headers, timeout=120, **kwargs)

    return send


@pytest.fixture(autouse=True)
def every_server_ends_idle() -> Iterator[None]:
    """After every test, each running server has nothing in flight and its whole KV pool free."""
    yield
    for running in list(RUNNING):
        running.wait_idle()
