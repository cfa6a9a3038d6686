"""Timing a block as the pipeline's stages are timed: CUDA events around it on a GPU (device time
from its first queued kernel to its last, no host sync inside), perf_counter on the CPU. Whole
requests and end-to-end rows are timed by wall clock around their calls instead."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# The most calls a CPU probe times to reach its `min_total_s` (`best_seconds`).
MAX_PROBE_CALLS = 1000


@dataclass
class Elapsed:
    """Filled in when the timed block ends without raising."""

    seconds: float = float("nan")


@contextmanager
def stopwatch(device: torch.device) -> Iterator[Elapsed]:
    """Time the block on `device`; read `.seconds` of what it yields after the block."""
    elapsed = Elapsed()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield elapsed
        end.record()
        end.synchronize()
        elapsed.seconds = start.elapsed_time(end) / 1e3
        return
    began = time.perf_counter()
    yield elapsed
    elapsed.seconds = time.perf_counter() - began


def best_seconds(call: Callable[[], object], repeats: int, min_total_s: float = 0.0) -> float:
    """The fastest of `repeats` timed calls on the CPU after one untimed, and of more until
    `min_total_s` of calls have run (at most MAX_PROBE_CALLS): a short probe's figure, the
    fastest run being the least disturbed by the rest of the machine (three calls of a product
    of microseconds can all meet the same busy spell)."""
    call()
    best, total, calls = float("inf"), 0.0, 0
    while calls < repeats or (total < min_total_s and calls < MAX_PROBE_CALLS):
        began = time.perf_counter()
        call()
        seconds = time.perf_counter() - began
        best, total, calls = min(best, seconds), total + seconds, calls + 1
    return best
