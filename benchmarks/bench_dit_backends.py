"""One CFG DiT step at Stable Audio Open 1.0 size: onnxruntime (CPU) against PyTorch eager.

    python benchmarks/bench_dit_backends.py --frames 32 64 128 --json benchmarks/results/dit_backends_cpu.json

Random weights of the real geometry (timings do not depend on the values). The DiT is exported
once to --onnx-dir (fp32, external data) and reused on later runs.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from report import emit, header
from timing import repeat

from stable_audio_rt.export.onnx_export import Profile, export_component
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0
from stable_audio_rt.models.dit import DiT
from stable_audio_rt.models.io_spec import axis_sizes, component_specs, sample_inputs
from stable_audio_rt.models.random_init import randomize_
from stable_audio_rt.runtime.backends.onnxruntime_backend import session_options

CFG_ROWS = 2  # one clip: [cond; uncond]


def _median_seconds(fn, warmup: int, repeats: int) -> float:
    return statistics.median(repeat(fn, torch.device("cpu"), warmup, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onnx-dir", type=Path, default=Path("benchmarks/.cache/dit-fp32"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort

    config = STABLE_AUDIO_OPEN_1_0
    dit = randomize_(DiT(config.dit), torch.Generator().manual_seed(0))
    path = args.onnx_dir / "dit.onnx"
    if not path.exists():
        args.onnx_dir.mkdir(parents=True, exist_ok=True)
        profile = Profile((1, CFG_ROWS, CFG_ROWS), (1, config.latent_frames, config.latent_frames))
        export_component(dit, component_specs(config)["dit"], "fp32", profile, config, path)
    # The onnxruntime backend's options: its threads are torch's, as for the torch rows.
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    spec = component_specs(config)["dit"]

    rows = []
    for frames in args.frames:
        inputs = sample_inputs(
            spec, axis_sizes(config, CFG_ROWS, frames), torch.float32, torch.Generator(), 2
        )
        feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, inputs, strict=True)}
        with torch.inference_mode():
            torch_s = _median_seconds(lambda inputs=inputs: dit(*inputs), args.warmup, args.repeats)
        ort_s = _median_seconds(lambda feeds=feeds: session.run(None, feeds), args.warmup, args.repeats)
        with torch.inference_mode():
            expected = dit(*inputs).numpy()
        error = float(np.abs(session.run(None, feeds)[0] - expected).max() / np.abs(expected).max())
        rows.append(
            {
                "frames": frames,
                "torch_eager_s": torch_s,
                "onnxruntime_s": ort_s,
                "speedup": torch_s / ort_s,
                "max_rel_error": error,
            }
        )
        print(
            f"frames {frames:5d}: torch {torch_s:7.3f} s  onnxruntime {ort_s:7.3f} s  ×{torch_s / ort_s:.2f}"
        )
    report = {
        **header(torch.device("cpu")),
        "onnxruntime": ort.__version__,
        "batch_rows": CFG_ROWS,
        "precision": "fp32",
        "weights": "random (real geometry)",
        "steps": rows,
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
