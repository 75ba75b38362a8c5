from collections.abc import Iterator

import pytest

from tokenmill.cli import build_parser
from tokenmill.engine.engine import LLMEngine
from tokenmill.eval.cli import build_engine

_engines: dict[str, LLMEngine] = {}


@pytest.fixture(scope="session")
def engines(make_llm) -> dict[str, LLMEngine]:
    """float32 (the session's engine) and bfloat16, built as `tokenmill eval quality` builds it."""
    _engines["float32"] = make_llm().engine
    _engines["bfloat16"] = build_engine(build_parser().parse_args(["eval", "quality"]), "bfloat16")
    return _engines


@pytest.fixture(autouse=True)
def every_eval_kv_block_comes_back() -> Iterator[None]:
    yield
    for engine in _engines.values():
        assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks
