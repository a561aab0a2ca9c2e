"""Hands memory the encoder has freed back to the operating system.

glibc keeps freed heap pages for reuse, and a CPU worker that runs thousands of
forward passes of varying shapes fragments its heap so that the pages are never
reused: embedding one 4 MiB document as 6,954 passages, each of two workers grew
by about 300 MiB over four minutes. `malloc_trim` returns those pages. After
every forward pass it held the workers flat at ~920 MiB but cost 3.7% of the
time (the returned pages are faulted in again); at most every `TRIM_INTERVAL`
seconds the cost is a few calls a minute. Elsewhere than glibc (musl, macOS)
this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

TRIM_INTERVAL = 5.0  # seconds between trims; the heap grew ~1.3 MiB/s without them


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


class HeapTrimmer:
    """Calls `malloc_trim(0)` when at least `interval` seconds have passed since the last call."""

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def maybe_trim(self) -> bool:
        """Trim if it is time to; True when it trimmed."""
        if _MALLOC_TRIM is None:
            return False
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval:
                return False
            self._last = now
        _MALLOC_TRIM(0)
        return True
