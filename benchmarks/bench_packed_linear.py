"""One bf16 DiT step on the CPU with plain `nn.Linear` against oneDNN-packed weights.

    python benchmarks/bench_packed_linear.py --json benchmarks/results/packed_linear_cpu.json

Real geometries (Stable Audio Open 1.0 with CFG: 2 rows; Small without: 1 row), random weights
(timings do not depend on the values). The two DiTs are timed interleaved, A B A B, so that a
machine's drift reaches both; the report gives each one's products' rate and whether the outputs
are bit-equal.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
from report import emit, header
from timing import seconds

from stable_audio_rt.bench.flops import dit_step_flops
from stable_audio_rt.kernels.packed_linear import pack_linears_
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0, STABLE_AUDIO_OPEN_SMALL
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.io_spec import axis_sizes, component_specs, sample_inputs
from stable_audio_rt.models.random_init import randomize_
from stable_audio_rt.runtime.backends.torch_backend import TorchDiTStep

CPU = torch.device("cpu")
# (name, config, rows): SAO 1.0's default request runs CFG (cond + uncond); Small's does not.
MODELS = {"sao": (STABLE_AUDIO_OPEN_1_0, 2), "small": (STABLE_AUDIO_OPEN_SMALL, 1)}


def _steps(model: str, frames: int) -> tuple[TorchDiTStep, TorchDiTStep, torch.Tensor, int]:
    config, rows = MODELS[model]
    plain = randomize_(DiT(config.dit), torch.Generator().manual_seed(0)).eval().to(torch.bfloat16)
    packed = copy.deepcopy(plain)
    if not pack_linears_(packed):
        raise SystemExit("this torch/CPU has no packed bf16 linear (torch.ops.mkldnn); nothing to compare")
    spec = component_specs(config)["dit"]
    x, t, context, global_cond = sample_inputs(
        spec, axis_sizes(config, rows, frames), torch.float32, torch.Generator().manual_seed(1), 2
    )
    steps = []
    for dit in (plain, packed):
        step = TorchDiTStep(dit, 1, rows, config.conditioning.context_tokens)
        step.bind(t[:1], context, global_cond)
        steps.append(step)
    flops = dit_step_flops(config.dit, rows, frames, config.conditioning.context_tokens)
    return steps[0], steps[1], x.to(torch.bfloat16), flops


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["sao", "small"])
    parser.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rows = []
    with torch.inference_mode():
        for model in args.models:
            for frames in args.frames:
                plain, packed, x, flops = _steps(model, frames)
                calls = {"plain": partial(plain, x, 0), "packed": partial(packed, x, 0)}
                for _ in range(args.warmup):
                    for call in calls.values():
                        call()
                times: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(args.repeats):
                    for name, call in calls.items():
                        times[name].append(seconds(call, CPU))
                plain_s, packed_s = (statistics.median(times[k]) for k in ("plain", "packed"))
                row = {
                    "model": model,
                    "frames": frames,
                    "rows": x.shape[0],
                    "plain_s": plain_s,
                    "packed_s": packed_s,
                    "speedup": plain_s / packed_s,
                    "plain_gflops": flops / plain_s / 1e9,
                    "packed_gflops": flops / packed_s / 1e9,
                    "bit_equal": torch.equal(plain(x, 0), packed(x, 0)),
                }
                rows.append(row)
                print(
                    f"{model:5s} {frames:5d} frames: plain {plain_s:.3f} s  packed {packed_s:.3f} s  "
                    f"x{row['speedup']:.2f}  bit-equal {row['bit_equal']}",
                    flush=True,
                )
    report = {
        **header(CPU),
        "threads": torch.get_num_threads(),
        "precision": "bf16",
        "weights": "random (real geometry)",
        "command": " ".join(["python", "benchmarks/bench_packed_linear.py", *sys.argv[1:]]),
        "steps": rows,
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
