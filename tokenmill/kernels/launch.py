"""One way to call the C kernels, so that a step's calls can be recorded once and replayed.

Every binding wraps its entry points in `Kernel`. Called normally, a Kernel converts its arguments
by their C types and runs. While a `Recording` is open on this thread (tokenmill/runner/step_graph.py
opens one to capture a decode step), each call is also kept with its converted arguments, so that
replaying the step is a loop of ready-made C calls with no Python work between them. Recording is a
mode of the thread, as CUDA graph capture is a mode of the stream: the layers' code stays the same.
A timed Recording also keeps each call's duration, replayed calls included: what a step spends
inside its kernels, against what it spends around them.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Sequence

_ArgType = type[ctypes._SimpleCData]
Call = tuple[ctypes._CFuncPtr, tuple, str]  # the function, its converted arguments, its name
_open = threading.local()  # .recordings: the Recordings open on this thread, innermost last


class Recording:
    """`with Recording() as rec:` keeps in rec.calls every Kernel call made on this thread inside
    the block (and replayed ones, with timed=True, in rec.seconds, one duration per call)."""

    def __init__(self, timed: bool = False) -> None:
        self.calls: list[Call] = []
        self.seconds: list[float] | None = [] if timed else None

    def __enter__(self) -> Recording:
        _recordings().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _recordings().remove(self)

    def add(self, call: Call, seconds: float) -> None:
        self.calls.append(call)
        if self.seconds is not None:
            self.seconds.append(seconds)


class Kernel:
    """A C function returning nothing, with its argument types."""

    def __init__(self, function: ctypes._CFuncPtr, argtypes: Sequence[_ArgType]) -> None:
        # An unprototyped pointer to the same function: it takes arguments already converted.
        self._raw = ctypes.CFUNCTYPE(None)(ctypes.cast(function, ctypes.c_void_p).value)
        self._argtypes = tuple(argtypes)
        self.name = function.__name__

    def __call__(self, *args: int | float | None) -> None:
        if len(args) != len(self._argtypes):
            raise TypeError(f"{self.name} takes {len(self._argtypes)} arguments, got {len(args)}")
        _run((self._raw, tuple(kind(arg) for kind, arg in zip(self._argtypes, args)), self.name))


def replay(calls: Sequence[Call]) -> None:
    if _recordings():
        for call in calls:
            _run(call)
        return
    for function, args, _ in calls:
        function(*args)


def _run(call: Call) -> None:
    recordings = _recordings()
    start = time.perf_counter()
    call[0](*call[1])
    seconds = time.perf_counter() - start
    for recording in recordings:
        recording.add(call, seconds)


def _recordings() -> list[Recording]:
    if not hasattr(_open, "recordings"):
        _open.recordings = []
    return _open.recordings
