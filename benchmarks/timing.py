"""Timing one call with the package's stopwatch (CUDA events on a GPU, perf_counter on the CPU),
as the benchmarks that time single calls do; end-to-end ones time by wall clock."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from stable_audio_rt.runtime.timing import stopwatch


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes on `device`."""
    with stopwatch(device) as elapsed:
        fn()
    return elapsed.seconds


def repeat(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [seconds(fn, device) for _ in range(repeats)]


def summary_ms(times: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}
