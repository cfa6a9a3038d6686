"""One DiT step on the CPU with plain `nn.Linear` against oneDNN-packed weights, per dtype.

    python benchmarks/bench_packed_linear.py --json benchmarks/results/packed_linear_cpu.json

Real geometries (Stable Audio Open 1.0 with CFG: 2 rows; Small without: 1 row), random weights
(timings do not depend on the values). The two DiTs are timed interleaved, A B A B, so that a
machine's drift reaches both; the report gives each one's rate, how far the packed output is from
the plain one, and whether a load on this CPU packs that dtype (`packed_linear.packs`).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
from report import emit, header
from timing import seconds

from stable_audio_rt.bench.flops import dit_step_flops
from stable_audio_rt.kernels.packed_linear import pack_linears_, packing_available
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0, STABLE_AUDIO_OPEN_SMALL
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.io_spec import axis_sizes, component_specs, sample_inputs
from stable_audio_rt.models.random_init import randomize_
from stable_audio_rt.precision import DTYPES
from stable_audio_rt.runtime.backends.torch_backend import TorchDiTStep

CPU = torch.device("cpu")
# (name, config, rows): SAO 1.0's default request runs CFG (cond + uncond); Small's does not.
MODELS = {"sao": (STABLE_AUDIO_OPEN_1_0, 2), "small": (STABLE_AUDIO_OPEN_SMALL, 1)}


def _steps(
    model: str, frames: int, dtype: torch.dtype
) -> tuple[TorchDiTStep, TorchDiTStep, torch.Tensor, int, bool]:
    config, rows = MODELS[model]
    plain = randomize_(DiT(config.dit), torch.Generator().manual_seed(0)).eval().to(dtype)
    packed = copy.deepcopy(plain)
    at_load = pack_linears_(packed) > 0  # what a load on this CPU decides
    pack_linears_(packed, lambda *shape: True)  # and the rest, where it decides otherwise
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
    return steps[0], steps[1], x.to(dtype), flops, at_load


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["sao", "small"])
    parser.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--dtypes", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for name in args.dtypes:
        if not packing_available(DTYPES[name]):
            raise SystemExit(f"this torch/CPU has no packed oneDNN linear in {name} (torch.ops.mkldnn)")

    rows = []
    with torch.inference_mode():
        for dtype_name, model, frames in itertools.product(args.dtypes, args.models, args.frames):
            plain, packed, x, flops, at_load = _steps(model, frames, DTYPES[dtype_name])
            calls = {"plain": partial(plain, x, 0), "packed": partial(packed, x, 0)}
            for _ in range(args.warmup):
                for call in calls.values():
                    call()
            times: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(args.repeats):
                for name, call in calls.items():
                    times[name].append(seconds(call, CPU))
            plain_s, packed_s = (statistics.median(times[k]) for k in ("plain", "packed"))
            plain_out, packed_out = plain(x, 0), packed(x, 0)
            row = {
                "dtype": dtype_name,
                "model": model,
                "frames": frames,
                "rows": x.shape[0],
                "plain_s": plain_s,
                "packed_s": packed_s,
                "speedup": plain_s / packed_s,
                "plain_gflops": flops / plain_s / 1e9,
                "packed_gflops": flops / packed_s / 1e9,
                "bit_equal": torch.equal(plain_out, packed_out),
                "max_rel_difference": float(
                    (packed_out.float() - plain_out.float()).abs().max() / plain_out.float().abs().max()
                ),
                "packed_at_load": at_load,
            }
            rows.append(row)
            print(
                f"{dtype_name} {model:5s} {frames:5d} frames: plain {plain_s:.3f} s  "
                f"packed {packed_s:.3f} s  "
                f"x{row['speedup']:.2f}  bit-equal {row['bit_equal']}  packed at load {at_load}",
                flush=True,
            )
    report = {
        **header(CPU),
        "threads": torch.get_num_threads(),
        "weights": "random (real geometry)",
        "command": " ".join(["python", "benchmarks/bench_packed_linear.py", *sys.argv[1:]]),
        "steps": rows,
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
