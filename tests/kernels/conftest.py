import ctypes
import os
import shutil
import subprocess

import pytest

from tests.kernels.paged_inputs import NATIVE
from tokenmill.kernels.cpu_build import FLAGS, SOURCE_DIR
from tokenmill.kernels.paged_attention import PagedAttentionKernels


@pytest.fixture(scope="session")
def portable_kernels(tmp_path_factory) -> PagedAttentionKernels:
    """The attention library as a machine without AVX-512 builds it: the portable C at every shape."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")  # as cpu_build
    if NATIVE is None or compiler is None:
        pytest.skip("no C compiler for the cpu attention kernel")
    target = tmp_path_factory.mktemp("portable") / "paged_attention.so"
    source = SOURCE_DIR / "paged_attention.c"
    subprocess.run([compiler, *FLAGS, "-mno-avx512f", str(source), "-o", str(target), "-lm"], check=True)
    return PagedAttentionKernels.from_library(ctypes.CDLL(str(target)))
