"""Memory of the experiment process: peak resident set size (RSS) per runner step, and freeing
memory between steps.

What is measured (all in MiB, 1 MiB = 2**20 bytes):

- ``peak_rss_mib`` of a step: the largest RSS of the *process tree* (this process plus all its
  live descendants, summed) seen by a background sampler thread (:class:`PeakRSS`, psutil, every
  ``interval_s`` seconds, default 0.1 s) while the step ran. Spikes shorter than the interval can
  be missed; the sum counts shared pages once per process (an upper bound for forked workers).
- ``rss_after_mib``: this process's RSS after the step and :func:`release_memory`.
- ``process_peak_rss_mib`` / ``children_peak_rss_mib`` (whole run): the kernel's high-water
  marks ``getrusage(RUSAGE_SELF).ru_maxrss`` and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the
  largest single waited-for descendant), exact but monotonic over the process's life, so they
  cannot be split per stage.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
from typing import Any

MIB = 2 ** 20


def _proc() -> Any:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None
    return psutil.Process()


def tree_rss_bytes(proc: Any = None) -> int:
    """RSS of ``proc`` (default: this process) plus all its live descendants, in bytes (0 without psutil)."""
    proc = proc or _proc()
    if proc is None:
        return 0
    total = 0
    try:
        total += proc.memory_info().rss
        kids = proc.children(recursive=True)
    except Exception:  # noqa: BLE001 - process vanished
        return total
    for c in kids:
        try:
            total += c.memory_info().rss
        except Exception:  # noqa: BLE001 - child exited between listing and reading
            pass
    return total


def rss_mib() -> float:
    """This process's current RSS in MiB (0.0 without psutil)."""
    p = _proc()
    return round(p.memory_info().rss / MIB, 1) if p is not None else 0.0


def maxrss_mib() -> dict[str, float]:
    """Kernel high-water marks: ``{"self": ..., "children": ...}`` in MiB (``ru_maxrss`` is KiB on
    Linux, bytes on macOS)."""
    import resource

    unit = 1 if sys.platform == "darwin" else 1024
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / MIB, 1),
            "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit / MIB, 1)}


def release_memory() -> bool:
    """``gc.collect()`` then glibc's ``malloc_trim(0)`` (returns freed heap pages to the OS, which
    lowers RSS after a model was deleted). Returns True when malloc_trim ran (glibc only)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


class PeakRSS:
    """Context manager sampling the process tree's RSS in a daemon thread; ``peak_mib`` after exit.

    >>> with PeakRSS() as m:
    ...     pass
    >>> m.peak_mib >= 0
    True
    """

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = _proc()

    def _sample(self) -> None:
        self.peak = max(self.peak, tree_rss_bytes(self._proc))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="lorasoups-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def peak_mib(self) -> float:
        return round(self.peak / MIB, 1)
