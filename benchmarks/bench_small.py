"""Stable Audio Open Small end to end at real size: seconds and real-time factor per stage.

    python benchmarks/bench_small.py --json benchmarks/results/small_cpu.json
    python benchmarks/bench_small.py --no-bf16-units --json benchmarks/results/small_cpu_no_bf16.json

Random weights of Small's geometry (timings do not depend on the values; no download), 8
pingpong steps, no CFG, batch 1, the full 256-frame window (11.9 s of audio). The text encoder
is a random 2-layer T5 of the conditioning width, not t5-base: the conditioning stage is
therefore cheaper here than with the real weights. RTF = wall seconds / audio seconds (< 1 is
faster than real time). Each variant is dtype/kernels as `StableAudio.load` takes them and is
loaded through it (so "auto" is what users get); the first is the reference of every SNR.
`--no-bf16-units` makes "auto" see a CPU without bf16 matrix units (precision.cpu_capabilities
answers none), to check that such a CPU gets fp32 and nothing slower than the torch maths.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from report import emit, header

from stable_audio_rt import precision
from stable_audio_rt.bench.quality import snr_db
from stable_audio_rt.precision import NAMES, dtype_request
from stable_audio_rt.runtime.load import WeightOptions, plan_load
from stable_audio_rt.runtime.pipeline import StableAudio

MODEL = "random-stable-audio-open-small"
PROMPT = "128 bpm tech house drum loop"
# Today's default before `auto` (fp32, eager torch maths), the fast path in fp32, and auto.
VARIANTS = ("fp32/torch", "fp32/compiled", "auto/auto")


def run(variant: str, device: torch.device, args: argparse.Namespace) -> tuple[dict, torch.Tensor]:
    dtype_name, kernels = variant.split("/")
    plan = plan_load(MODEL, device=device, options=WeightOptions(dtype_request(dtype_name), kernels=kernels))
    pipe = StableAudio.from_plan(plan, cuda_graph=False)
    options = dict(seed=1, vae_chunk=args.vae_chunk)
    runs = [pipe.generate(PROMPT, **options) for _ in range(args.warmup + args.repeats)][args.warmup :]
    audio_seconds = runs[0].audio.shape[-1] / runs[0].sample_rate
    stages = {stage: statistics.median(r.timings[stage] for r in runs) for stage in runs[0].timings}
    total = statistics.median(sum(r.timings.values()) for r in runs)
    return {
        "variant": variant,
        "dtype": NAMES[plan.options.dtype],
        "dtype_reason": plan.dtype_choice.reason,
        "kernels": plan.options.kernels,
        "audio_seconds": round(audio_seconds, 3),
        "end_to_end_s": round(total, 3),
        "rtf": round(total / audio_seconds, 3),
        "x_real_time": round(audio_seconds / total, 3),
        "stages_s": {k: round(v, 4) for k, v in stages.items()},
        "repeats": args.repeats,
    }, runs[0].audio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), help="dtype/kernels, e.g. bf16/compiled"
    )
    parser.add_argument("--no-bf16-units", action="store_true", help="auto sees a CPU without bf16 units")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--vae-chunk", type=int, default=None, help="latent frames per VAE chunk (default: one call)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.no_bf16_units:
        none = {name: False for name in precision.BF16_MATRIX_FEATURES}
        precision.cpu_capabilities = lambda: {**none, "cpu_name": "this CPU (bf16 units hidden)"}
    device = torch.device(args.device)
    rows, reference = [], None
    for variant in args.variants:
        row, audio = run(variant, device, args)
        if reference is None:
            reference = audio
        else:
            row["snr_db_vs_first"] = round(snr_db(audio, reference), 2)
        rows.append(row)
        print(f"{variant} ({row['dtype']}/{row['kernels']}): {row['end_to_end_s']} s for "
              f"{row['audio_seconds']} s of audio (RTF {row['rtf']})", file=sys.stderr)  # fmt: skip
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
        "bf16_units_hidden": args.no_bf16_units,
        "results": rows,
    }
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
