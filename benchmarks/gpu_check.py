"""The one command for whoever has an NVIDIA GPU: installs what it needs, runs the GPU tests, and
measures Stable Audio Open 1.0 at real size end to end; writes one results file.

    python benchmarks/gpu_check.py                  # from a checkout; ~5 min on an H100 + TensorRT builds
    python benchmarks/gpu_check.py --no-install --model /path/to/stable-audio-open-1.0

What it does, in order (each part's outcome goes into the results, a failure does not stop the rest):
1. `pip install -e .[test,bench]` into this Python (skip with --no-install);
2. the GPU tests (`pytest -m gpu tests/gpu`, Triton compiled, not interpreted);
3. the Triton kernels against the torch maths (benchmarks/kernels.py);
4. end to end, torch backend: fp32 / fp16 / bf16 × the full 47.55 s window and a trimmed 10 s one
   × eager and whole-request CUDA graph; 100 steps, CFG 7 with a negative prompt, batch 1.
   Random weights of the real geometry unless --model gives real ones (the speed is the same);
5. with TensorRT installed: sa-export --fp16 of the same weights (ONNX + engines), then the same
   requests on the tensorrt backend (skip with --no-tensorrt; engine builds take minutes).
Results: benchmarks/results/gpu_check_<gpu>_<date>.json and a short markdown table beside it.
Time = wall seconds of `generate` (tokenize to audio on the host), warm median of --repeats
after one cold request (which includes the capture). RTF = seconds / audio seconds.
Targets (issue 9, H100, full window, 100 steps, CFG, fp16): torch + CUDA graph <= 2.0 s,
TensorRT <= 0.8 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "warm analog synth pad with slow attack, 120 bpm"
NEGATIVE = "low quality, distorted"
RANDOM_REAL_SIZE = "random-stable-audio-open-1.0"
TRIMMED_SECONDS = 10.0
FULL_WINDOW_SECONDS = 47.0
TARGETS_S = {"torch fp16 full cuda_graph": 2.0, "tensorrt fp16 full cuda_graph": 0.8}


def install() -> dict:
    command = [sys.executable, "-m", "pip", "install", "-e", f"{ROOT}[test,bench]"]
    done = subprocess.run(command, capture_output=True, text=True)
    return {"command": " ".join(command), "returncode": done.returncode, "tail": done.stderr[-2000:]}


def gpu_tests() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return {
        "command": " ".join(command),
        "returncode": done.returncode,
        "summary": summary,
        "seconds": round(time.perf_counter() - began, 1),
        "tail": done.stdout[-4000:],
    }


def kernel_benchmark(out: Path) -> dict:
    path = out / "kernels.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--json", str(path)],
        cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": "0"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"returncode": done.returncode, "tail": done.stderr[-2000:]}
    return json.loads(path.read_text())


def time_requests(pipe, window: dict, repeats: int, steps: int) -> dict:
    """Cold request, then the warm median of `repeats`; wall seconds around `generate`."""
    import torch

    options = dict(steps=steps, cfg_scale=7.0, negative_prompt=NEGATIVE, seed=0, **window)
    times = []
    for k in range(repeats + 1):
        torch.cuda.synchronize()
        began = time.perf_counter()
        result = pipe.generate(PROMPT, **{**options, "seed": k})
        times.append(time.perf_counter() - began)
    audio_seconds = result.audio.shape[-1] / result.sample_rate
    warm = statistics.median(times[1:])
    return {
        "audio_seconds": round(audio_seconds, 3),
        "frames": int(result.latents.shape[-1]),
        "cold_s": round(times[0], 3),
        "warm_p50_s": round(warm, 3),
        "warm_min_s": round(min(times[1:]), 3),
        "rtf": round(warm / audio_seconds, 4),
        "x_real_time": round(audio_seconds / warm, 1),
        "replayed": "replay" in result.timings,
        "stages_s": {k: round(v, 4) for k, v in result.timings.items()},
    }


WINDOWS = {
    "full": {"seconds_total": FULL_WINDOW_SECONDS},
    "trim": {"seconds_total": TRIMMED_SECONDS, "window": "trim"},
}


def torch_rows(model: str, repeats: int, steps: int) -> list[dict]:
    import torch

    from stable_audio_rt.runtime.pipeline import StableAudio

    rows = []
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        pipe = StableAudio.from_pretrained(model, device="cuda", dtype=dtype)
        for window, options in WINDOWS.items():
            for graph in (False, True):
                pipe.cuda_graph = graph
                row = {"backend": "torch", "dtype": name, "window": window, "cuda_graph": graph}
                try:
                    row |= time_requests(pipe, options, repeats, steps)
                except Exception as e:  # record and go on: one failure must not hide the rest
                    row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                print(json.dumps(row), flush=True)
        pipe.graphs.clear()
        del pipe
        torch.cuda.empty_cache()
    return rows


def tensorrt_rows(model: str, out: Path, repeats: int, steps: int) -> tuple[dict, list[dict]]:
    from stable_audio_rt.runtime.pipeline import StableAudio
    from stable_audio_rt.trt_import import TensorRTUnavailable, import_tensorrt

    try:
        trt, _ = import_tensorrt()
    except TensorRTUnavailable as e:
        return {"skipped": str(e)}, []
    folder = out / "engines_fp16"
    command = ["sa-export", "--model", model, "--out", str(folder), "--fp16"]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    export = {
        "tensorrt": trt.__version__,
        "command": " ".join(command),
        "returncode": done.returncode,
        "seconds": round(time.perf_counter() - began, 1),
        "tail": (done.stdout + done.stderr)[-2000:],
    }
    if done.returncode != 0:
        return export, []
    pipe = StableAudio.from_engines(folder, backend="tensorrt", device="cuda")
    rows = []
    for window, options in WINDOWS.items():
        for graph in (False, True):
            pipe.cuda_graph = graph
            row = {"backend": "tensorrt", "dtype": "fp16", "window": window, "cuda_graph": graph}
            try:
                row |= time_requests(pipe, options, repeats, steps)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return export, rows


def targets(rows: list[dict]) -> dict:
    found = {}
    for row in rows:
        mode = "cuda_graph" if row["cuda_graph"] else "eager"
        key = f"{row['backend']} {row['dtype']} {row['window']} {mode}"
        if key in TARGETS_S and "warm_p50_s" in row:
            found[key] = {"target_s": TARGETS_S[key], "measured_s": row["warm_p50_s"]}
            found[key]["met"] = row["warm_p50_s"] <= TARGETS_S[key]
    return found


def markdown(report: dict) -> str:
    lines = [
        f"# gpu_check: {report['gpu']}, {report['date']}",
        "",
        f"GPU tests: {report['gpu_tests'].get('summary', 'not run')}",
        "",
        "| backend | dtype | window | graph | audio s | cold s | warm p50 s | RTF | x real time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['backend']} | {r['dtype']} | {r['window']} | {r['cuda_graph']} | {r['error']} |"
            )
            continue
        lines.append(
            f"| {r['backend']} | {r['dtype']} | {r['window']} | {r['cuda_graph']} | {r['audio_seconds']} | "
            f"{r['cold_s']} | {r['warm_p50_s']} | {r['rtf']} | {r['x_real_time']} |"
        )
    lines += ["", "Targets: " + json.dumps(report["targets"])]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=RANDOM_REAL_SIZE, help="real weights (Hub id or folder); default random"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-install", action="store_true", help="use this Python's packages as they are")
    parser.add_argument("--no-tests", action="store_true", help="skip the GPU tests")
    parser.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT export and rows")
    args = parser.parse_args()

    installed = {"skipped": True} if args.no_install else install()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; this script measures GPUs only", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    date = dt.datetime.now(dt.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    model = args.model
    if model == RANDOM_REAL_SIZE:
        # One checkpoint folder for every backend (sa-export reads folders): diffusers' random
        # initialisation of the real geometry, with a t5-base-shaped T5, saved in its layout.
        from stable_audio_rt.bench.peer import build_peer
        from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0

        model = str(
            build_peer(STABLE_AUDIO_OPEN_1_0, STABLE_AUDIO_OPEN_1_0.latent_frames, work / "checkpoint").folder
        )
    report = {
        "date": date.isoformat(timespec="seconds"),
        "gpu": gpu,
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "model": args.model,
        "steps": args.steps,
        "install": installed,
        "gpu_tests": {"skipped": True} if args.no_tests else gpu_tests(),
        "kernels": kernel_benchmark(work),
    }
    rows = torch_rows(model, args.repeats, args.steps)
    report["tensorrt"], trt_rows = (
        ({"skipped": "--no-tensorrt"}, [])
        if args.no_tensorrt
        else tensorrt_rows(model, work, args.repeats, args.steps)
    )
    report["rows"] = rows + trt_rows
    report["targets"] = targets(report["rows"])
    stem = f"gpu_check_{gpu.replace(' ', '_')}_{date:%Y-%m-%d}"
    write(args.out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    write(args.out / f"{stem}.md", markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
