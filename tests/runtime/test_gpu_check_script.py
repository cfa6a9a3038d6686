"""benchmarks/gpu_check.py on a machine without a GPU: it says so and writes nothing; its target
check and its table read the rows it records (the GPU runs themselves need a GPU)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-install", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""},
    )
    assert done.returncode == 2 and "no CUDA GPU visible" in done.stderr
    assert not list(tmp_path.iterdir())


def test_targets_and_table_follow_the_rows():
    gpu_check = _module()
    row = dict(window="full", audio_seconds=47.0, cold_s=9.0, frames=1024, rtf=0.04, x_real_time=25.0)
    rows = [
        {**row, "backend": "torch", "dtype": "fp16", "cuda_graph": True, "warm_p50_s": 1.9},
        {**row, "backend": "torch", "dtype": "fp16", "cuda_graph": False, "warm_p50_s": 3.1},
        {**row, "backend": "tensorrt", "dtype": "fp16", "cuda_graph": True, "warm_p50_s": 0.9},
        {"backend": "torch", "dtype": "bf16", "window": "trim", "cuda_graph": True, "error": "OOM"},
    ]
    targets = gpu_check.targets(rows)
    assert targets == {
        "torch fp16 full cuda_graph": {"target_s": 2.0, "measured_s": 1.9, "met": True},
        "tensorrt fp16 full cuda_graph": {"target_s": 0.8, "measured_s": 0.9, "met": False},
    }
    report = {"gpu": "G", "date": "D", "gpu_tests": {"summary": "3 passed"}, "rows": rows, "targets": targets}
    table = gpu_check.markdown(report)
    assert table.count("\n| torch") == 3 and "| tensorrt | fp16 | full | True | 47.0 | 9.0 | 0.9 |" in table
    assert "OOM" in table
