"""What gpu_check measures, one function per kind of result: a timed row of requests, the GPU
against the CPU on one request, ours against diffusers interleaved. benchmarks/gpu_check.py runs
them in order under its time budget and writes each result as it comes."""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import torch

from stable_audio_rt.bench.flops import dit_step_flops, dit_step_gemms
from stable_audio_rt.bench.gemm import torch_gemm_rate
from stable_audio_rt.bench.runner import NEGATIVE_PROMPT, PROMPT, Workload, interleave_with_peer, peak_rss_mb
from stable_audio_rt.runtime import region
from stable_audio_rt.runtime.pipeline import CAPTURE_FAILED, StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request
from stable_audio_rt.runtime.sampling.guidance import dit_rows

# The speed rows' request: SAO 1.0's defaults as the issue fixes them (CFG 7, a negative prompt).
CFG_SCALE = 7.0
# GPU vs CPU, fp32 on both with TF32 off: only reduction order and the attention implementation
# (Triton on the GPU, SDPA on the CPU) differ, ~1e-6 per op; eight SDE steps through a 24-layer
# DiT amplify that, so 1e-3 of the latents' scale (tests use 1e-4 for one pass of the same maths).
GPU_VS_CPU_REL_TOL = 1e-3
# The VAE alone on identical latents: one pass of the same fp32 maths, the tests' bound. The H200
# run's end-to-end audio differed by 1.7e-3 while its latents agreed to 2.4e-5; a random 2.4e-5
# change of the latents moves this VAE's audio by under 1e-4 (CPU, 3 seeds), so this check tells
# a VAE difference on the GPU from the latents' difference carried through.
DECODE_REL_TOL = 1e-4


@dataclass(frozen=True)
class Window:
    name: str  # "full" or "trim"
    seconds: float
    trim: bool

    def options(self) -> dict:
        return {"seconds_total": self.seconds, **({"window": "trim"} if self.trim else {})}


def timed_row(pipe: StableAudio, window: Window, steps: int, repeats: int, **extra) -> dict:
    """One cold request, then `repeats` warm ones (new seed each); wall seconds around `generate`
    (tokenize to audio on the host), the graph cache's captures and replays over the row, the
    last warm request's stages and the peak memory."""
    options = dict(steps=steps, **window.options(), **extra)
    device = pipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    captures, replays = pipe.graphs.captures, pipe.graphs.replays
    failed_before = set(pipe.graphs.failed)
    times, result = [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            result = pipe.generate(PROMPT, seed=seed, **options)
            times.append(time.perf_counter() - began)
    # A pipeline warns of its first failed capture only; each row's own failures are said in the
    # row (the trimmed window's graph row, after the full window's on one pipeline, read 0/0).
    failures = [f"{CAPTURE_FAILED} ({why})" for shape, why in pipe.graphs.failed.items()
                if shape not in failed_before]  # fmt: skip
    others = [str(w.message) for w in caught if not str(w.message).startswith(CAPTURE_FAILED)]
    said = list(dict.fromkeys([*failures, *others]))
    for line in said:  # in the log too, where they went before
        print(f"gpu_check: warning: {line}", file=sys.stderr)
    audio_s = result.audio.shape[-1] / result.sample_rate
    warm = statistics.median(times[1:])
    return {
        "audio_seconds": round(audio_s, 3),
        "frames": int(result.latents.shape[-1]),
        "batch": int(result.audio.shape[0]),
        "requests": repeats + 1,
        "cold_s": round(times[0], 4),
        "warm_p50_s": round(warm, 4),
        "warm_min_s": round(min(times[1:]), 4),
        "rtf": round(warm / audio_s, 5),
        "x_real_time": round(audio_s / warm, 1),
        "captures": pipe.graphs.captures - captures,
        "replays": pipe.graphs.replays - replays,
        "peak_memory_mb": round(
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb(), 1
        ),
        "stages_s": {k: round(v, 5) for k, v in result.timings.items()},
        **({"warnings": said} if said else {}),
    }


def kernel_profile(pipe: StableAudio, window: Window, steps: int, top: int = 15) -> dict:
    """One warm eager request under torch.profiler: its device time by kernel (by aten op on the
    CPU) with call counts, over the steps (T5 and the decode are in the request, so in the
    totals): where a step's time goes beyond its GEMMs (the H200's graph rows ran 1.3× the
    GEMM time at the full window)."""
    from torch.profiler import ProfilerActivity, profile

    options = dict(steps=steps, **window.options(), cfg_scale=CFG_SCALE, negative_prompt=NEGATIVE_PROMPT)
    on_gpu = pipe.device.type == "cuda"
    graph, pipe.cuda_graph = pipe.cuda_graph, False
    try:
        pipe.generate(PROMPT, seed=0, **options)  # Triton compiles and cuBLAS picks outside the profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
        with profile(activities=activities) as profiled:
            pipe.generate(PROMPT, seed=1, **options)
            if on_gpu:
                torch.cuda.synchronize(pipe.device)
    finally:
        pipe.cuda_graph = graph
    kind = torch.autograd.DeviceType.CUDA if on_gpu else torch.autograd.DeviceType.CPU
    events = [e for e in profiled.key_averages() if e.device_type == kind]
    own_us = {e.key: e.self_device_time_total if on_gpu else e.self_cpu_time_total for e in events}
    total_us = sum(own_us.values())
    ranked = sorted(events, key=lambda e: own_us[e.key], reverse=True)[:top]
    return {
        "window": window.name,
        "steps": steps,
        "timed": "kernels (device time)" if on_gpu else "aten ops (self CPU time)",
        "total_ms_per_step": round(total_us / 1e3 / steps, 3),
        "launches_per_step": round(sum(e.count for e in events) / steps, 1),
        "top": [_profile_entry(e.key, own_us[e.key], total_us, e.count, steps) for e in ranked],
    }


def _profile_entry(name: str, own_us: float, total_us: float, count: int, steps: int) -> dict:
    return {
        "name": name[:90],
        "share": round(own_us / total_us, 4),
        "ms_per_step": round(own_us / 1e3 / steps, 4),
        "calls_per_step": round(count / steps, 2),
    }


def graph_counts_ok(row: dict) -> bool:
    """N requests of one shape on the graph path: 1 capture, N − 1 replays."""
    return row["captures"] == 1 and row["replays"] == row["requests"] - 1


def dit_floor(pipe: StableAudio, row: dict, steps: int, gemm_rates: dict) -> dict:
    """The DiT step's GEMM floor at this row's shape and dtype (cuBLAS on the DiT's own product
    shapes, measured once per shape in this run) and the measured step's share of it. Eager rows
    time the sampling stage; a graph row has no stages, so its whole request over the steps is
    used (an upper bound on the step, so its share is a lower bound)."""
    config, rows = pipe.config, dit_rows(row["batch"], uses_cfg=True)
    context = config.conditioning.context_tokens
    key = f"{pipe.dtype} {rows}x{row['frames']}"
    if key not in gemm_rates:
        gemms = dit_step_gemms(config.dit, rows, row["frames"])
        gemm_rates[key] = torch_gemm_rate(gemms, pipe.device, pipe.dtype).gflops_per_s
    floor_s = dit_step_flops(config.dit, rows, row["frames"], context) / (gemm_rates[key] * 1e9)
    sampling = row["stages_s"].get("sampling")
    step_s = (sampling if sampling is not None else row["warm_p50_s"]) / steps
    return {
        "gemm_gflops_per_s": round(gemm_rates[key], 1),
        "dit_step_floor_s": round(floor_s, 6),
        "step_s": round(step_s, 6),
        "step_from": "sampling stage" if sampling is not None else "whole request / steps",
        "floor_share": round(floor_s / step_s, 3),
    }


def gpu_vs_cpu(gpu: StableAudio, cpu: StableAudio, frames: int, steps: int) -> dict:
    """One request's fp32 latents and audio on the GPU and on the CPU, same weights and the
    same random draws (the GPU's, copied into the CPU's buffers: a device's generator gives its
    own numbers for a seed, in the reference too)."""
    config = gpu.config
    seconds = frames * config.vae.downsampling_ratio / config.sample_rate
    request = GenerationRequest((PROMPT,), frames=frames, seconds_total=seconds, steps=steps, seed=0,
                                cfg_scale=CFG_SCALE, negative_prompt=NEGATIVE_PROMPT)  # fmt: skip
    buffers = []
    for pipe in (gpu, cpu):
        resolved = resolve_request(request, pipe.config)
        buffers.append(pipe.prepare(resolved))
    on_gpu, on_cpu = buffers
    for target, source in zip(on_cpu.input_buffers(), on_gpu.input_buffers(), strict=True):
        target.copy_(source.cpu())
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            region.run_region(on_gpu, gpu.components)
            region.run_region(on_cpu, cpu.components)
            latents = on_cpu.state.x
            decoded = gpu.components.decode(latents.to(gpu.device)).cpu(), cpu.components.decode(latents)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    latent_error = _rel_error(on_gpu.state.x.cpu(), latents)
    decode_error = _rel_error(*decoded)
    return {
        "frames": frames,
        "steps": steps,
        "latents_rel_error": latent_error,
        "tolerance": GPU_VS_CPU_REL_TOL,
        "decode_rel_error": decode_error,
        "decode_tolerance": DECODE_REL_TOL,
        "audio_rel_error": _rel_error(on_gpu.audio.cpu(), on_cpu.audio),  # both carried: no bound
        "passed": latent_error <= GPU_VS_CPU_REL_TOL and decode_error <= DECODE_REL_TOL,
    }


def _rel_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours − reference| / max |reference|, as the tests measure it."""
    scale = reference.abs().max().clamp_min(1e-12)
    return float((ours.double() - reference.double()).abs().max() / scale)


def peer_pairs(peer, ours: StableAudio, frames: int, steps: int, repeats: int) -> dict:
    """Ours and diffusers on the same weights and work, A B A B (bench.runner)."""
    workload = Workload(frames=frames, steps=steps, batch=1, seed=0, cfg_scale=CFG_SCALE)
    return interleave_with_peer(peer, ours, workload, repeats)
