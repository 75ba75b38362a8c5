from pathlib import Path

import pytest

from tokenmill.model.default import default_model_path


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return default_model_path()
