"""gpu_check's parts in their order (see benchmarks/gpu_check.py): each records its results as it
goes, and the dry run gives each the tiny models on the CPU and stand-ins only for CUDA graphs."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from gpu_check_measure import (
    CFG_SCALE,
    Window,
    dit_floor,
    gpu_vs_cpu,
    graph_counts_ok,
    kernel_profile,
    peer_pairs,
    timed_row,
)

from stable_audio_rt.bench.runner import NEGATIVE_PROMPT
from stable_audio_rt.models.random_init import RANDOM_MODELS
from stable_audio_rt.precision import DTYPES, NAMES
from stable_audio_rt.runtime import pipeline
from stable_audio_rt.runtime.cuda_graph import CapturedRequest
from stable_audio_rt.runtime.pipeline import StableAudio

TRIMMED_SECONDS = 10.0
SMALL_STEPS = 8
SMALL_BATCHES = (1, 8)
# GPU against CPU: a short request (CPU time at real size stays in seconds).
CORRECTNESS_FRAMES, CORRECTNESS_STEPS = 32, 8
# Enough steps that the per-step kernels outweigh T5 and the decode in the profile.
PROFILE_STEPS = 10


@dataclass(frozen=True)
class Setting:
    """What the parts run: the real geometry on the GPU, or the tiny models on the CPU."""

    device: torch.device
    model: str
    small_model: str
    steps: int
    peer_dtype: torch.dtype
    trimmed_seconds: float
    correctness_frames: int
    correctness_steps: int
    small_batches: tuple[int, ...]
    cpu_precisions: bool  # fp16 only where it is native: the GPU


REAL = Setting(torch.device("cuda"), "random-stable-audio-open-1.0", "random-stable-audio-open-small", 100,
               torch.float16, TRIMMED_SECONDS, CORRECTNESS_FRAMES, CORRECTNESS_STEPS, SMALL_BATCHES,
               cpu_precisions=False)  # fmt: skip
# The CPU's dry run: the same parts at tiny sizes, batch 2 for Small's 8.
DRY = Setting(torch.device("cpu"), "tiny-random", "tiny-random-small", 4,
              torch.float32, 1.0, 16, 4, (1, 2), cpu_precisions=True)  # fmt: skip


def run_all(check) -> None:
    setting = DRY if check.dry else REAL
    if check.dry:
        _stand_in_cuda_graphs()
    check.attempt("tests", "tests", lambda: tests(check))
    check.attempt("correctness", "correctness", lambda: correctness(check, setting))
    check.attempt("speed bf16", "speed model", lambda: speed(check, setting, "bf16"))
    check.attempt("small", "small", lambda: small(check, setting))
    check.attempt("peer", "peer", lambda: peer(check, setting))
    if setting.cpu_precisions:  # emulated on the CPU: minutes for nothing
        check.results.skip("speed fp16", "fp16 on the CPU (dry run): the GPU run has these rows")
    else:
        check.attempt("speed fp16", "speed model", lambda: speed(check, setting, "fp16"))
    # The kernels before fp32: whether each kernel beats the torch maths on this GPU decides
    # `kernels="auto"`; the fp32 row (no TF32: ~10 s a request) is the likeliest to be cut.
    check.attempt("kernels", "kernels", lambda: kernels(check))
    check.attempt("speed fp32", "speed model", lambda: speed(check, setting, "fp32"))
    check.attempt("tensorrt", "tensorrt", lambda: tensorrt(check))


def tests(check) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"]
    began = time.perf_counter()
    done = check.subprocess(command, "tests")
    if done is None:
        return
    lines = done.stdout.strip().splitlines()
    check.results.add("tests", {
        "command": " ".join(command[1:]),
        "returncode": done.returncode,
        "summary": lines[-1] if lines else "",
        "seconds": round(time.perf_counter() - began, 1),
        "tail": (done.stdout + done.stderr)[-4000:],
    })  # fmt: skip


def correctness(check, setting: Setting) -> None:
    check.mark(f"correctness: build {setting.model} twice")
    # fp32 named on both: "auto" is bf16 on a CPU with bf16 matrix units (precision.choose_dtype),
    # as the GPU machines' CPUs have. The CPU runs the reference maths (SDPA, eager Snake), not
    # its compiled path (packed linears, channels-last convolutions, a torch.compile of Snake).
    on_device = StableAudio.from_pretrained(
        setting.model, device=setting.device, dtype=torch.float32, cuda_graph=False
    )
    on_cpu = StableAudio.from_pretrained(
        setting.model, device="cpu", dtype=torch.float32, kernels="torch", cuda_graph=False
    )
    compared = gpu_vs_cpu(on_device, on_cpu, setting.correctness_frames, setting.correctness_steps)
    check.results.add("correctness", {"check": "device fp32 latents vs CPU fp32, same weights and draws",
                                      "model": setting.model, **compared})  # fmt: skip


def speed(check, setting: Setting, name: str) -> None:
    """SAO 1.0's rows in one precision: graph rows first (the goals read them), then eager; fp32
    only the full window's graph row."""
    config = RANDOM_MODELS[setting.model]
    full = Window("full", config.sample_size / config.sample_rate, trim=False)
    trimmed = Window("trim", setting.trimmed_seconds, trim=True)
    windows = (full,) if name == "fp32" else (full, trimmed)
    graphs = (True,) if name == "fp32" else (True, False)
    check.mark(f"speed {name}: build {setting.model}")
    pipe = StableAudio.from_pretrained(setting.model, device=setting.device, dtype=DTYPES[name])
    gemm_rates: dict = {}
    for graph in graphs:
        for window in windows:
            label = f"speed {name} {window.name} {'graph' if graph else 'eager'}"
            if not check.fits("speed row", label):
                continue
            check.mark(label)
            pipe.cuda_graph = graph
            row = {"part": "speed", "dtype": name, "window": window.name, "cuda_graph": graph}
            try:
                row |= timed_row(pipe, window, setting.steps, check.args.repeats,
                                 cfg_scale=CFG_SCALE, negative_prompt=NEGATIVE_PROMPT)  # fmt: skip
                row["floor"] = dit_floor(pipe, row, setting.steps, gemm_rates)
                if graph:
                    row["graph_counts_ok"] = graph_counts_ok(row)
            except Exception as e:  # the row says why; the next row runs
                row["error"] = f"{type(e).__name__}: {e}"
            check.results.add("speed", row)
    if name == "bf16":  # where the step's time goes, at both windows (eager: kernels by name)
        for window in windows:
            if check.fits("speed row", f"profile {window.name}"):
                check.mark(f"profile bf16 {window.name}")
                check.results.add("profile", kernel_profile(pipe, window, PROFILE_STEPS))
    _release(pipe)


def peer(check, setting: Setting) -> None:
    try:
        from stable_audio_rt.bench.peer import build_peer
    except ImportError as e:
        check.results.skip("peer", f"needs diffusers ({e})")
        return
    config = RANDOM_MODELS[setting.model]
    check.mark(f"peer: build the diffusers checkpoint of {setting.model}")
    folder = Path(tempfile.mkdtemp(prefix="gpu_check_peer_"))
    try:
        built = build_peer(config, config.latent_frames, folder)
    except Exception as e:  # diffusers missing shows here: build_peer imports it lazily
        check.results.skip("peer", f"{type(e).__name__}: {e}")
        shutil.rmtree(folder, ignore_errors=True)
        return
    check.mark("peer: diffusers and ours on the device")
    built.pipeline.to(setting.device, setting.peer_dtype)
    ours = StableAudio.from_pretrained(built.folder, device=setting.device, dtype=setting.peer_dtype)
    pairs = peer_pairs(built, ours, config.latent_frames, setting.steps, check.args.repeats)
    check.results.add("peer", {"part": "peer", "dtype": NAMES[setting.peer_dtype],
                               "ours": "torch + CUDA graph", **pairs})  # fmt: skip
    _release(ours)
    shutil.rmtree(folder, ignore_errors=True)


def small(check, setting: Setting) -> None:
    config = RANDOM_MODELS[setting.small_model]
    pipe = StableAudio.from_pretrained(setting.small_model, device=setting.device, dtype=torch.bfloat16)
    window = Window("full", config.sample_size / config.sample_rate, trim=False)
    for batch in setting.small_batches:
        check.mark(f"small batch {batch}")
        row = {"part": "small", "dtype": "bf16", "window": "full", "cuda_graph": True}
        try:
            row |= timed_row(pipe, window, SMALL_STEPS, check.args.repeats, num_outputs=batch)
            row["graph_counts_ok"] = graph_counts_ok(row)
        except Exception as e:
            row |= {"batch": batch, "error": f"{type(e).__name__}: {e}"}
        check.results.add("small", row)
    _release(pipe)


def kernels(check) -> None:
    out = Path(tempfile.mkdtemp(prefix="gpu_check_kernels_")) / "kernels.json"
    command = [sys.executable, "benchmarks/kernels.py", "--json", str(out)]
    if check.dry:  # the interpreter on tiny shapes: the flow, not the speed
        command += ["--device", "cpu", "--dtypes", "fp32", "--tokens", "33", "--context-tokens", "9",
                    "--samples", "3000", "--warmup", "0", "--repeats", "1"]  # fmt: skip
    done = check.subprocess(command, "kernels")
    if done is None:
        return
    if done.returncode != 0:
        check.results.add("kernels", {"returncode": done.returncode, "tail": done.stderr[-3000:]})
        return
    report = json.loads(out.read_text())
    check.results.add("kernels", {"returncode": 0, "goals": report["goals"], "results": report["results"]})


def tensorrt(check) -> None:
    from stable_audio_rt.trt_import import TensorRTUnavailable, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTUnavailable as e:
        check.results.skip("tensorrt", str(e).splitlines()[0])
        return
    reason = "TensorRT is here; its rows come from sa-export --fp16 then sa-bench --backend tensorrt"
    check.results.skip("tensorrt", reason)


def _release(pipe: StableAudio) -> None:
    pipe.graphs.clear()
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
        torch.cuda.empty_cache()


class _EagerGraph:
    """--dry-run's stand-in for a CUDA graph: replaying runs the captured region eagerly on the
    same buffers, so everything around the graph (keys, counts, input writes) runs for real."""

    def __init__(self, request, run) -> None:
        self.request, self.run = request, run

    def replay(self) -> None:
        self.run(self.request)

    def reset(self) -> None:
        pass


def _eager_capture(request, run) -> CapturedRequest:
    run(request)  # the warm-up, as on a GPU
    host = (torch.empty(request.audio.shape), torch.empty(request.state.x.shape))
    return CapturedRequest(request, _EagerGraph(request, run), 0, *host)


def _stand_in_cuda_graphs() -> None:
    """CUDA graphs cannot exist on the CPU: the dry run's pipelines take the graph path with the
    eager stand-in (this process only)."""
    pipeline.StableAudio.uses_graphs = property(lambda self: self.cuda_graph)
    pipeline.capture_request = _eager_capture
    pipeline.default_memory_cap = lambda device: None  # no GPU memory to share out
