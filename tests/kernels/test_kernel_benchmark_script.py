"""benchmarks/kernels.py runs end to end (tiny shapes, CPU, Triton's interpreter) and writes
a report with every kernel and tactic, its rate and its error against torch. Its timings here
mean nothing; on a GPU the same script measures the goals of issue 5."""

import json
import os
import subprocess
import sys
from pathlib import Path

from stable_audio_rt.kernels.specs import KERNELS

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "kernels.py"
FP32_TOL = 1e-5  # as in the kernel tests


def test_report_lists_every_kernel_and_tactic(tmp_path):
    out = tmp_path / "kernels.json"
    sizes = ["--tokens", "33", "--context-tokens", "9", "--samples", "3000"]
    args = [
        "--device",
        "cpu",
        "--dtypes",
        "fp32",
        *sizes,
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--json",
        str(out),
    ]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"date", "device", "torch", "command", "shapes", "results", "goals"} <= report.keys()
    assert report["shapes"]["tokens"] == 33
    assert len(report["results"]) == sum(len(spec.tactics) for spec in KERNELS)
    for row in report["results"]:
        assert row["rel_error_vs_torch"] <= FP32_TOL
        assert row["speedup_vs_torch"] > 0 and row["rate"] >= 0
    assert {g["kernel"] for g in report["goals"]} == {"self_attention+rope", "snake"}


def test_without_a_gpu_the_default_run_says_so():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
