"""Stable Audio Open Small end to end at real size: seconds and real-time factor per stage.

    python benchmarks/bench_small.py --json benchmarks/results/small_cpu.json

Random weights of Small's geometry (timings do not depend on the values; no download), 8
pingpong steps, no CFG, batch 1, the full 256-frame window (11.9 s of audio). The text encoder
is a random 2-layer T5 of the conditioning width, not t5-base: the conditioning stage is
therefore cheaper here than with the real weights. RTF = wall seconds / audio seconds (< 1 is
faster than real time). Each variant (precision × kernels) after the first reports its audio's
SNR against the first (fp32, torch maths, same seed) next to its time. `--kernels compiled`
fuses the VAE's Snake with torch.compile, the decode being the costly stage on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from report import emit, header

from stable_audio_rt.kernels.switch import use_kernels
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_SMALL
from stable_audio_rt.models.random_init import random_model
from stable_audio_rt.precision import DTYPES
from stable_audio_rt.runtime.backends.torch_backend import TorchComponents
from stable_audio_rt.runtime.pipeline import StableAudio

PROMPT = "128 bpm tech house drum loop"


def snr_db(signal: torch.Tensor, reference: torch.Tensor) -> float:
    noise = (signal.double() - reference.double()).pow(2).sum()
    return (10 * torch.log10(reference.double().pow(2).sum() / noise)).item()


def run(
    dtype: torch.dtype, kernels: str, device: torch.device, args: argparse.Namespace
) -> tuple[dict, torch.Tensor]:
    model = random_model(STABLE_AUDIO_OPEN_SMALL, seed=0, dtype=dtype, device=device)
    use_kernels(kernels, model.dit, model.vae)
    pipe = StableAudio(TorchComponents(model))
    options = dict(seed=1, vae_chunk=args.vae_chunk)
    runs = [pipe.generate(PROMPT, **options) for _ in range(args.warmup + args.repeats)][args.warmup :]
    audio_seconds = runs[0].audio.shape[-1] / runs[0].sample_rate
    stages = {stage: statistics.median(r.timings[stage] for r in runs) for stage in runs[0].timings}
    total = statistics.median(sum(r.timings.values()) for r in runs)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "kernels": kernels,
        "audio_seconds": round(audio_seconds, 3),
        "end_to_end_s": round(total, 3),
        "rtf": round(total / audio_seconds, 3),
        "x_real_time": round(audio_seconds / total, 3),
        "stages_s": {k: round(v, 4) for k, v in stages.items()},
        "stages_rtf": {k: round(v / audio_seconds, 4) for k, v in stages.items()},
        "repeats": args.repeats,
    }, runs[0].audio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtypes", nargs="+", choices=DTYPES, default=["fp32"], help="fp32 always runs first"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--vae-chunk", type=int, default=None, help="latent frames per VAE chunk (default: one call)"
    )
    parser.add_argument(
        "--kernels",
        nargs="+",
        choices=("torch", "compiled", "triton"),
        default=["torch", "compiled"],
        help="maths variants (default: torch compiled; triton needs CUDA); torch runs first",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows, reference = [], None
    dtypes = ["fp32", *(d for d in args.dtypes if d != "fp32")]
    kernels = ["torch", *(k for k in args.kernels if k != "torch")]
    for name in dtypes:
        for kernel in kernels:
            row, audio = run(DTYPES[name], kernel, device, args)
            if reference is None:
                reference = audio
            else:
                row["snr_db_vs_first"] = round(snr_db(audio, reference), 2)
            rows.append(row)
            done = f"{row['end_to_end_s']} s for {row['audio_seconds']} s of audio (RTF {row['rtf']})"
            print(f"{name}/{kernel}: {done}", file=sys.stderr)
    report = {
        **header(device),
        "command": " ".join(
            ["python", "benchmarks/bench_small.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "model": "stable-audio-open-small geometry, random weights (random 2-layer T5)",
        "steps": 8,
        "cfg_scale": 1.0,
        "batch": 1,
        "threads": torch.get_num_threads(),
        "results": rows,
    }
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
