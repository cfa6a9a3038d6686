"""How long a CPU request takes at the least, said before it starts when that is minutes.

The request's FLOPs (bench/flops.py: its matrix products and convolutions) over the rate this
CPU multiplies matrices at in the model's dtype, measured now on one DiT-sized product. The
products are most of the work and run at best at that rate, so the figure is a floor; the
faster options that apply to the request are named with it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from stable_audio_rt.bench.flops import matmul, request_flops
from stable_audio_rt.bench.runner import Workload
from stable_audio_rt.kernels.packed_linear import linear_as_run
from stable_audio_rt.models.config import T5_BASE, StableAudioConfig
from stable_audio_rt.precision import NAMES, choose_dtype
from stable_audio_rt.runtime.requests import GenerationRequest, ResolvedRequest, window_frames
from stable_audio_rt.runtime.timing import best_seconds

# A request whose floor reaches this is announced (seconds).
ANNOUNCE_FROM_S = 60.0
# t5-base's (d_model, d_ff, layers), as the FLOP counts take them.
T5_BASE_DIMS = (T5_BASE.d_model, T5_BASE.d_ff, T5_BASE.layers)
# The probe: the DiT feed-forward's product at this many token rows, timed a few times.
PROBE_ROWS = 512
PROBE_REPEATS = 3


@dataclass(frozen=True)
class Estimate:
    flops: int
    gflops_per_s: float  # this CPU's matrix rate in the model's dtype, measured now
    dtype: torch.dtype
    faster: tuple[str, ...]  # options that would shorten it
    what: str = "this request"

    @property
    def seconds(self) -> float:
        return self.flops / (self.gflops_per_s * 1e9)

    def line(self) -> str:
        minutes = self.seconds / 60
        text = (
            f"{self.what} is {self.flops / 1e12:.1f} TFLOP: at least {minutes:.0f} min on this CPU "
            f"({NAMES[self.dtype]} products at {self.gflops_per_s:.0f} GFLOP/s, measured now)"
        )
        return text + (f"; faster: {'; '.join(self.faster)}" if self.faster else "")


def matrix_rate(width: int, dtype: torch.dtype) -> float:
    """This CPU's GFLOP/s of one (PROBE_ROWS × width) @ (width × 4·width) product, best of a few,
    run as the model runs its linears (`packed_linear.linear_as_run`). Estimates are the CPU's
    only: a GPU's requests take seconds."""
    a = torch.randn(PROBE_ROWS, width, dtype=dtype)
    product = linear_as_run(width, 4 * width, dtype)
    with torch.inference_mode():
        best = best_seconds(functools.partial(product, a), PROBE_REPEATS)
    return matmul(PROBE_ROWS, width, 4 * width) / best / 1e9


def estimate(
    config: StableAudioConfig, resolved: ResolvedRequest, device: torch.device, dtype: torch.dtype
) -> Estimate:
    """The request's floor on `device` in `dtype`, with the options that would shorten it."""
    request = resolved.request
    flops = request_flops(
        config, resolved.batch, resolved.frames, request.steps, request.uses_cfg, T5_BASE_DIMS
    )
    rate = matrix_rate(config.dit.embed_dim, dtype)
    faster = []
    # The trimmed window from the clip's length alone: resolving again would re-read its audio.
    trim = replace(request, window="trim")
    trimmed = window_frames(trim, resolved.seconds_total, config) if _full(request) else None
    if trimmed is not None and trimmed < resolved.frames:
        faster.append(f"--window trim ({trimmed} latent frames for this clip instead of {resolved.frames})")
    if config.objective == "v":
        faster.append("Stable Audio Open Small (--model stabilityai/stable-audio-open-small, 8 steps)")
    if dtype == torch.float32 and choose_dtype("auto", device).dtype == torch.bfloat16:
        faster.append("--dtype bf16 (this CPU multiplies bf16 in hardware)")
    return Estimate(flops.total, rate, dtype, tuple(faster))


def _full(request: GenerationRequest) -> bool:
    return request.window == "full" and request.frames is None and request.sample_size is None


def announce(
    config: StableAudioConfig, resolved: ResolvedRequest, device: torch.device, dtype: torch.dtype
) -> Estimate | None:
    """The estimate of a CPU request, when it is minutes; None otherwise (and on a GPU)."""
    if device.type != "cpu":
        return None
    found = estimate(config, resolved, device, dtype)
    return found if found.seconds >= ANNOUNCE_FROM_S else None


def announce_benchmark(
    config: StableAudioConfig,
    workloads: Sequence[Workload],
    runs: int,
    device: torch.device,
    faster: tuple[str, ...],
) -> Estimate | None:
    """sa-bench's first row (fp32, always run) on a CPU, when it is minutes: each workload `runs`
    times (cold, warm-up, timed), the rows after it on top; `faster`: the options that shorten it."""
    if device.type != "cpu":
        return None
    flops = runs * sum(
        request_flops(config, w.batch, w.frames, w.steps, w.uses_cfg, T5_BASE_DIMS).total for w in workloads
    )
    rate = matrix_rate(config.dit.embed_dim, torch.float32)
    found = Estimate(flops, rate, torch.float32, faster, what="this benchmark's fp32 row alone")
    return found if found.seconds >= ANNOUNCE_FROM_S else None
