"""Wall-clock measurement: timers, medians over repeats, a per-run time limit, and the
interleaved runner the benchmarks use (tools alternated repeat by repeat, so that load
from other processes hits them alike)."""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from analysis.harness.memory import peak_rss

__all__ = ["Timer", "Timeout", "time_limit", "times", "median_time", "Scaled", "Run",
           "interleaved"]


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def times(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_time(fn: Callable[[], Any], repeats: int, *, warmup: bool = False) -> tuple[float, Any]:
    """Median seconds over ``repeats`` calls of ``fn`` (after one untimed call when
    ``warmup``) and the value the last call returned."""
    if warmup:
        fn()
    seconds, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), out


class Timeout(Exception):
    """A run exceeded the per-run time limit (its time is then a lower bound)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Timeout` in this (main) thread after ``seconds`` of wall time."""

    def handler(signum, frame):
        raise Timeout

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _is_timeout(err: BaseException) -> bool:
    """Whether ``err`` is our :class:`Timeout`, also when code it interrupted (TorchScript,
    autograd's C++ engine) re-raised it wrapped in a ``RuntimeError`` that names it."""
    if isinstance(err, Timeout):
        return True
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, Timeout):
            return True
        e = e.__cause__ or e.__context__
    return isinstance(err, RuntimeError) and "Timeout: <EMPTY MESSAGE>" in str(err)


@dataclass
class Scaled:
    """A job result measured on a part of the work: ``time = fixed + scale * rest``.

    ``fixed_s`` is the measured time of the work done once (e.g. curvlinops' spectral
    boundaries), ``scale`` the factor from the part run to the whole (e.g. 10 probes / 2).
    """

    value: Any
    hvps: float
    fixed_s: float
    scale: float


@dataclass
class Run:
    """What :func:`interleaved` recorded for one job: seconds per repeat, peak memory
    (MiB, maximum over repeats), the last value and product count, and how it ended."""

    seconds: list[float] = field(default_factory=list)
    mem_mib: float = math.nan
    value: Any = None
    hvps: float = 0
    error: str = ""
    timed_out: bool = False
    extrapolated: bool = False
    scale: float = 1.0  # whole / part run, for an extrapolated (Scaled) job


def interleaved(jobs: dict[str, Callable[[], Any]], repeats: int, *, long_s: float,
                timeout_s: float, log: Callable[[str], None]) -> dict[str, Run]:
    """Run every job ``repeats`` times, interleaved; time, count and measure each.

    A job returns ``(value, hvps)`` or a :class:`Scaled` (the time and HVPs are then
    extrapolated from the part it ran). Every run also measures peak memory (the
    maximum is kept); a job slower than ``long_s`` on its first run is not repeated;
    one slower than ``timeout_s`` is stopped and recorded as timed out (its time a
    lower bound). Exceptions are recorded in ``Run.error`` -- a peer crashing is a
    result, not a benchmark failure.
    """
    runs = {name: Run() for name in jobs}
    for rep in range(repeats):
        for name, job in jobs.items():
            r = runs[name]
            if r.error or r.timed_out or (rep > 0 and r.seconds and r.seconds[0] > long_s):
                continue
            try:
                with peak_rss() as mem:
                    t0 = time.perf_counter()
                    with time_limit(timeout_s):
                        out = job()
                    dt = time.perf_counter() - t0
            except Exception as err:
                if not _is_timeout(err):
                    r.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    log(f"    {name}: FAILED {r.error}")
                    traceback.print_exc(limit=3, file=sys.stderr)
                    continue
                r.timed_out = True
                r.seconds = [timeout_s]
                r.mem_mib = mem["mib"]
                log(f"    {name}: stopped after {timeout_s:g} s")
                continue
            if isinstance(out, Scaled):
                dt = out.fixed_s + out.scale * (dt - out.fixed_s)
                value, hvps, r.extrapolated = out.value, out.hvps, out.scale != 1
                r.scale = out.scale
            else:
                value, hvps = out
            r.seconds.append(dt)
            r.mem_mib = mem["mib"] if math.isnan(r.mem_mib) else max(r.mem_mib, mem["mib"])
            r.value, r.hvps = value, hvps
    return runs
