"""Running one benchmark configuration: cold and warm requests, per-stage times, memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio
from stable_audio_rt.runtime.sampling.guidance import dit_rows

if TYPE_CHECKING:
    from stable_audio_rt.bench.peer import Peer

PROMPT = "warm analog synth pad with slow attack"
NEGATIVE_PROMPT = "low quality"


@dataclass(frozen=True)
class Workload:
    frames: int
    steps: int
    batch: int
    seed: int
    cfg_scale: float

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0

    @property
    def rows(self) -> int:
        """DiT rows per call: the clips, doubled by CFG's unconditional half."""
        return dit_rows(self.batch, self.uses_cfg)

    def options(self, sample_rate: int, ratio: int) -> dict:
        seconds = self.frames * ratio / sample_rate
        negative = NEGATIVE_PROMPT if self.uses_cfg else None
        return dict(
            frames=self.frames,
            seconds_total=seconds,
            steps=self.steps,
            num_outputs=self.batch,
            seed=self.seed,
            cfg_scale=self.cfg_scale,
            negative_prompt=negative,
            vae_chunk=None,
        )


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile, linear between ranks (numpy's default)."""
    return float(np.percentile(values, q))


def spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(values),
        "p90": percentile(values, 90),
        "min": min(values),
        "max": max(values),
    }


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def run_workload(pipe: StableAudio, workload: Workload, warmup: int, repeats: int) -> dict:
    """The first call (cold) and `repeats` calls after `warmup` more (warm); stage timings
    come from the pipeline (CUDA-synchronised on a GPU, perf_counter on the CPU)."""
    config = pipe.config
    options = workload.options(config.sample_rate, config.vae.downsampling_ratio)
    device = pipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cold = pipe.generate(PROMPT, **options)
    for _ in range(warmup):
        pipe.generate(PROMPT, **options)
    warm: list[GenerationResult] = [pipe.generate(PROMPT, **options) for _ in range(repeats)]
    stages = list(cold.timings)
    totals = [sum(r.timings.values()) for r in warm]
    tokenize_s, t5_s = _text_encoder_times(pipe, workload, repeats)
    return {
        "cold_s": {**cold.timings, "total": sum(cold.timings.values())},
        "warm_s": {s: spread([r.timings[s] for r in warm]) for s in stages} | {"total": spread(totals)},
        "per_step_s": statistics.median(r.timings["sampling"] / workload.steps for r in warm),
        "tokenize_s": tokenize_s,
        "t5_s": t5_s,
        "peak_memory_mb": {
            "cuda_max_allocated": torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda"
            else None,
            "process_rss": peak_rss_mb(),
        },
        "result": warm[-1],
    }


def _text_encoder_times(pipe: StableAudio, workload: Workload, repeats: int) -> tuple[float, float]:
    """The conditioning stage's tokenizer and T5 parts, timed on their own (same prompts)."""
    conditioner, device = pipe.components.conditioner, pipe.device
    prompts = [PROMPT] * workload.batch
    tokenize, t5 = [], []
    for _ in range(max(1, repeats)):
        began = time.perf_counter()
        ids, mask = conditioner.tokenize(prompts)
        tokenize.append(time.perf_counter() - began)
        with torch.no_grad():
            began = time.perf_counter()
            conditioner.text_encoder(ids.to(device), mask.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t5.append(time.perf_counter() - began)
    return statistics.median(tokenize), statistics.median(t5)


def interleave_with_peer(peer: Peer, ours: StableAudio, workload: Workload, repeats: int) -> dict:
    """Ours and diffusers on the same work, A B A B after one untimed call each, so drift of
    the machine falls on both; the ratio is diffusers' time over ours, per pair."""
    config = ours.config
    options = workload.options(config.sample_rate, config.vae.downsampling_ratio)
    seconds, negative = options["seconds_total"], options["negative_prompt"]

    def run_ours() -> None:
        ours.generate(PROMPT, **options)

    def run_peer() -> None:
        peer.generate(
            PROMPT, negative, workload.steps, workload.cfg_scale, workload.batch, seconds, workload.seed
        )
        # diffusers returns its audio on the device with the decode still queued: unsynchronised,
        # that decode would be timed in our next request (ours returns host audio: synchronised).
        if ours.device.type == "cuda":
            torch.cuda.synchronize(ours.device)

    run_ours()
    run_peer()
    pairs = []
    for _ in range(repeats):
        ours_s, peer_s = _wall_seconds(run_ours), _wall_seconds(run_peer)
        pairs.append({"ours_s": ours_s, "diffusers_s": peer_s, "ratio": peer_s / ours_s})
    return {
        "frames": workload.frames,
        "steps": workload.steps,
        "batch": workload.batch,
        "cfg_scale": workload.cfg_scale,
        "scheduler": "diffusers CosineDPMSolverMultistepScheduler: one CFG DiT call per step, as ours",
        "pairs": pairs,
        "ours_s_p50": statistics.median(p["ours_s"] for p in pairs),
        "diffusers_s_p50": statistics.median(p["diffusers_s"] for p in pairs),
        "ratio_p50": statistics.median(p["ratio"] for p in pairs),
    }


def _wall_seconds(fn: Callable[[], None]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began
