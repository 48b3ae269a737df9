"""Peak resident-set probes (Linux ``/proc``).

Before the measured code, garbage is collected, ``malloc_trim(0)`` returns freed heap
pages to the kernel and ``/proc/self/clear_refs`` resets the high-water mark ``VmHWM``
to the current ``VmRSS``; after it, ``VmHWM - VmRSS_before`` is what the code needed on
top of what was live. ``tracemalloc`` does not see torch's CPU allocations.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
from collections.abc import Iterator

__all__ = ["peak_rss"]


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # Linux >= 4.0: reset VmHWM to the current VmRSS
        return True
    except OSError:
        return False


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: RSS deltas may then be understated by retained free pages
    _LIBC = None


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Measure the peak resident-set rise (MiB) of the enclosed code; NaN if unsupported.

    Yields a dict whose ``"mib"`` entry is filled in when the block exits."""
    out = {"mib": math.nan}
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    ok = _reset_peak()
    base = _status_kib("VmRSS") if ok else 0
    try:
        yield out
    finally:
        if ok:
            out["mib"] = max(_status_kib("VmHWM") - base, 0) / 1024
