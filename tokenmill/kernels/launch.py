"""One way to call the C kernels, so that a step's calls can be recorded once and replayed.

Every binding wraps its entry points in `Kernel`. Called normally, a Kernel converts its arguments
by their C types and runs. While a `Recording` is open on this thread (tokenmill/runner/step_graph.py
opens one to capture a decode step), each call is also kept with its converted arguments, and a
`Program` of those calls replays the step as one C call (csrc/replay.c) with no Python between the
kernels. Recording is a mode of the thread, as CUDA graph capture is a mode of the stream: the
layers' code stays the same. A timed Recording also keeps each call's duration, replayed calls
included: what a step spends inside its kernels, against what it spends around them.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys
import threading
import time
from collections.abc import Sequence

from tokenmill.kernels.cpu_build import load_library

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


class Program:
    """Recorded calls, replayed in order: as one C call where this platform allows it (see
    csrc/replay.c), else as a loop of ctypes calls; call by call, each timed, while a Recording is open.
    The calls hold raw addresses: the caller keeps every tensor they read or write alive."""

    def __init__(self, calls: Sequence[Call]) -> None:
        self.calls = list(calls)
        self._packed = _pack(self.calls)

    @property
    def in_c(self) -> bool:
        return self._packed is not None

    def run(self) -> None:
        if _recordings():
            for call in self.calls:
                _run(call)
        elif self._packed is not None:
            _replayer().replay_calls(self._packed, len(self.calls))
        else:
            for function, args, _ in self.calls:
                function(*args)


_INT_SLOTS, _FLOAT_SLOTS = 24, 8  # as csrc/replay.c
_INTEGERS = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32)


class _StepCall(ctypes.Structure):
    _fields_ = [("function", ctypes.c_void_p), ("ints", ctypes.c_int64 * _INT_SLOTS),
                ("floats", ctypes.c_float * _FLOAT_SLOTS)]


@functools.cache
def _replayer() -> ctypes.CDLL | None:
    # Only where integer and float arguments take separate register sequences (csrc/replay.c).
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    library = load_library("replay", fallback="ctypes calls")
    if library is None:
        return None
    if (library.replay_int_slots(), library.replay_float_slots()) != (_INT_SLOTS, _FLOAT_SLOTS):
        raise RuntimeError("csrc/replay.c and kernels/launch.py disagree on a step call's argument slots")
    library.replay_calls.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    library.replay_calls.restype = None
    return library


def _pack(calls: Sequence[Call]) -> ctypes.Array | None:
    """The calls as csrc/replay.c's entries, or None where it cannot run them all."""
    if _replayer() is None:
        return None
    packed = (_StepCall * len(calls))()
    for entry, (function, args, _) in zip(packed, calls):
        ints = [arg.value or 0 for arg in args if isinstance(arg, _INTEGERS)]
        floats = [arg.value for arg in args if isinstance(arg, ctypes.c_float)]
        if len(ints) + len(floats) != len(args) or len(ints) > _INT_SLOTS or len(floats) > _FLOAT_SLOTS:
            return None  # an argument of another kind (a double, a struct) or too many
        entry.function = ctypes.cast(function, ctypes.c_void_p).value
        entry.ints[: len(ints)] = ints
        entry.floats[: len(floats)] = floats
    return packed


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
