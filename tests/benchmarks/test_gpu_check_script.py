"""benchmarks/gpu_check.py: its whole flow as a dry run on the CPU (tiny models, the wheelhouse
install into a temporary target, every part written as it is measured), a run cut short keeping
what it measured, the budget skipping and recording, and its refusal without a GPU. The GPU run
itself needs a GPU."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from wheels import PROBE_MODULE, probe_wheel

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_check.py"
PARTS = ("install", "tests", "correctness", "speed", "peer", "small", "kernels", "skipped", "goals")
# The dry run's speed rows: bf16 full/trim × eager/graph and fp32 graph (fp16 is the GPU's).
DRY_SPEED_ROWS = 5


def _offline_env(**extra) -> dict:
    return {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", **extra}


def _report(out: Path) -> dict:
    (path,) = out.glob("gpu_check_*.json")
    return json.loads(path.read_text())


def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2 and "no CUDA GPU visible" in done.stderr and "--dry-run" in done.stderr
    assert not list(tmp_path.iterdir())


def test_dry_run_installs_from_the_wheelhouse_and_writes_every_part(tmp_path):
    probe_wheel(tmp_path / "whl")
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--dry-run", "--repeats", "1", "--out", str(out)]
    done = subprocess.run(
        [*command, "--wheelhouse", str(tmp_path / "whl")], capture_output=True, text=True, env=_offline_env()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = _report(out)
    assert set(PARTS) <= report.keys() and "errors" not in report, report.get("errors")
    install = report["install"]
    assert install["returncode"] == 0 and any(PROBE_MODULE in name for name in install["installed"])
    assert "returncode" in install["pip_check"], "what --no-deps cannot see is checked"
    assert report["tests"][0]["returncode"] == 0
    correctness = report["correctness"][0]
    assert correctness["passed"] and correctness["decode_rel_error"] <= correctness["decode_tolerance"]
    assert [p["window"] for p in report["profile"]] == ["full", "trim"]
    assert all(sum(t["share"] for t in p["top"]) <= 1 + 1e-6 and p["top"] for p in report["profile"])
    events = [t["event"] for t in report["timeline"]]
    assert events[0] == "tests" and "speed bf16 full graph" in events and events[-1] == "tensorrt"
    speed = report["speed"]
    assert len(speed) == DRY_SPEED_ROWS and all("warm_p50_s" in r and "floor" in r for r in speed)
    for row in speed + report["small"]:
        graph = row["cuda_graph"]
        assert (row["captures"], row["replays"]) == ((1, row["requests"] - 1) if graph else (0, 0))
    assert [r["batch"] for r in report["small"]] == [1, 2]
    assert report["peer"][0]["pairs"] and report["kernels"][0]["returncode"] == 0
    assert {s["part"] for s in report["skipped"]} == {"speed fp16", "tensorrt"}
    assert all(g["met"] is None for g in report["goals"]), "a dry run meets or misses no goal"
    table = (out / f"{Path(next(out.glob('*.json'))).stem}.md").read_text()
    assert (
        table.count("\n| speed |") == DRY_SPEED_ROWS
        and "Peer (fp32" in table
        and "Skipped: tensorrt" in table
    )


def test_a_run_cut_short_keeps_what_it_measured(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--dry-run", "--repeats", "1", "--out", str(out)]
    process = subprocess.Popen(
        command, env=_offline_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (list(out.glob("*.json")) and "tests" in _report(out)):
            time.sleep(0.5)
    finally:
        process.kill()
        process.wait()
    report = _report(out)
    assert report["tests"][0]["returncode"] == 0 and "seconds" not in report, "killed before its end"
    assert "| goal |" in next(out.glob("*.md")).read_text()


def test_a_budget_that_fits_nothing_skips_every_part_and_says_so(tmp_path):
    command = [sys.executable, str(SCRIPT), "--dry-run", "--budget-s", "0", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=_offline_env())
    assert done.returncode == 0, done.stderr[-3000:]
    report = _report(tmp_path)
    reasons = {s["part"]: s["reason"] for s in report["skipped"]}
    parts = {"tests", "correctness", "speed bf16", "small", "peer", "speed fp32", "kernels", "tensorrt"}
    assert reasons.keys() == parts | {"speed fp16"} and "timeline" not in report
    assert all("budget" in reasons[part] for part in parts), reasons
    assert "fp16 on the CPU" in reasons["speed fp16"]
    assert report["install"]["wheelhouse"] is None and "missing" in report["install"]


def test_a_part_running_when_the_budget_is_spent_is_cut_where_it_stands(monkeypatch, tmp_path):
    gpu_check = _gpu_check_module(monkeypatch)
    monkeypatch.setitem(gpu_check.ESTIMATES_S, "tests", 0)
    header = {"gpu": "test GPU", "date": "2026-11-28", "torch": "-", "triton": "-", "python": "-"}
    budget = gpu_check.Budget(0.5)
    results = gpu_check.Results(tmp_path, {**header, "budget_s": budget.seconds})
    check = gpu_check.Check(argparse.Namespace(dry_run=False, parts=None), budget, results, env={})
    ran_after = []

    def slow_part() -> None:
        check.mark("a slow row")
        try:
            time.sleep(30)
        except Exception:  # a part's own handler must not swallow the cut
            pass

    began = time.monotonic()
    budget.arm()
    try:
        check.attempt("tests", "tests", slow_part)
        check.attempt("correctness", "correctness", lambda: ran_after.append(True))
    finally:
        budget.disarm()
    assert time.monotonic() - began < 10 and not ran_after
    reasons = {s["part"]: s["reason"] for s in _report(tmp_path)["skipped"]}
    assert reasons["tests"].startswith("cut at") and "during a slow row" in reasons["tests"]
    assert "budget left" in reasons["correctness"]


def test_parts_runs_only_what_is_asked_for(tmp_path):
    command = [sys.executable, str(SCRIPT), "--dry-run", "--repeats", "1", "--parts", "correctness,small",
               "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=_offline_env())
    assert done.returncode == 0, done.stderr[-3000:]
    report = _report(tmp_path)
    assert report["correctness"][0]["passed"] and [r["batch"] for r in report["small"]] == [1, 2]
    assert "speed" not in report and "tests" not in report and "peer" not in report
    reasons = {s["part"]: s["reason"] for s in report["skipped"]}
    assert all(reasons[p] == "not asked for (--parts)" for p in ("tests", "speed bf16", "peer", "kernels"))
    refused = subprocess.run([*command[:-2], "--parts", "speed,bogus"], capture_output=True, text=True)
    assert refused.returncode == 2 and "unknown parts ['bogus', 'speed']" in refused.stderr


def _gpu_check_module(monkeypatch):
    """The script as a module; the path entries it adds and its module entry go with the test."""
    import importlib.util

    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_goals_read_the_best_matching_gpu_rows(monkeypatch):
    gpu_check = _gpu_check_module(monkeypatch)
    row = {"part": "speed", "batch": 1, "cuda_graph": True}
    report = {
        "speed": [
            {**row, "dtype": "bf16", "window": "full", "warm_p50_s": 1.2},
            {**row, "dtype": "fp16", "window": "full", "warm_p50_s": 0.9},
            {**row, "dtype": "fp32", "window": "full", "warm_p50_s": 0.5},  # fp32 is no goal's
            {**row, "dtype": "fp16", "window": "trim", "cuda_graph": False, "warm_p50_s": 0.1},
            {**row, "dtype": "fp16", "window": "trim", "warm_p50_s": 0.35},
            {**row, "dtype": "bf16", "window": "trim", "error": "OOM"},
        ],
        "small": [{**row, "part": "small", "dtype": "bf16", "window": "full", "warm_p50_s": 0.08}],
        "peer": [{"ratio_p50": 4.5}],
    }
    found = {
        g["goal"]: (g.get("measured_s", g.get("measured_ratio")), g["met"]) for g in gpu_check.goals(report)
    }
    assert list(found.values()) == [(0.9, True), (0.35, False), (0.08, True), (4.5, True)]
    assert all(g["met"] is None for g in gpu_check.goals({"dry_run": True, **report}))


def _parts_module(monkeypatch):
    """benchmarks/gpu_check_parts.py, imported as gpu_check imports it (nothing of it runs at
    import; run_all's stand-ins for CUDA graphs are not called here)."""
    _gpu_check_module(monkeypatch)  # benchmarks/ on the path, for the test's life
    import gpu_check_parts

    return gpu_check_parts


def test_correctness_compares_fp32_with_the_cpus_reference_maths_whatever_auto_picks(monkeypatch):
    """The GPU machines' CPUs multiply bf16 in hardware, where dtype "auto" is bf16: the check
    compared the GPU's fp32 with the CPU's bf16 (a FAIL of ~1e-2 from the precision alone)."""
    import torch

    from stable_audio_rt import precision
    from stable_audio_rt.models.attention import SDPA

    parts = _parts_module(monkeypatch)
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {"avx512_bf16": True})
    compared = []
    monkeypatch.setattr(
        parts, "gpu_vs_cpu", lambda gpu, cpu, frames, steps: compared.append((gpu, cpu)) or {}
    )
    check = argparse.Namespace(
        mark=lambda event: None, results=argparse.Namespace(add=lambda key, item: None)
    )
    parts.correctness(check, parts.DRY)
    ((on_device, on_cpu),) = compared
    assert (on_device.dtype, on_cpu.dtype) == (torch.float32, torch.float32)
    assert on_cpu.components.model.dit.attention is SDPA


def test_a_rows_warnings_are_in_the_row(monkeypatch):
    """A capture that fails runs the shape eagerly with one warning: the row records why (it
    said so only in the log, the row's counts reading 0/0 '(WRONG)')."""
    _gpu_check_module(monkeypatch)  # its folder on the path
    import gpu_check_measure
    from reference_path import REFERENCE_PATH

    from stable_audio_rt.runtime import pipeline as pipeline_module
    from stable_audio_rt.runtime.pipeline import StableAudio

    def failing_capture(request, run):
        raise RuntimeError("operation not permitted when stream is capturing")

    pipe = StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)
    monkeypatch.setattr(StableAudio, "uses_graphs", property(lambda self: self.cuda_graph))
    monkeypatch.setattr(pipeline_module, "capture_request", failing_capture)
    for seconds in (0.5, 0.25):  # two rows of one pipeline, as gpu_check's windows are
        window = gpu_check_measure.Window("trim", seconds, True)
        row = gpu_check_measure.timed_row(pipe, window, steps=1, repeats=1)
        why = "RuntimeError: operation not permitted when stream is capturing"
        assert row["captures"] == 0 and row["warnings"] == [f"CUDA graph capture failed ({why})"], seconds
