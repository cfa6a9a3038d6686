"""benchmarks/serve_ray.py at a small size: one and two replicas of the tiny model on a local
Ray, every client answered, both replicas seen. The figures themselves are benchmarks, not
asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray Serve is the [ray] extra (pip install -e '.[ray]')")

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "serve_ray.py"


def test_the_report_has_a_row_per_layout(tmp_path):
    out = tmp_path / "serve_ray.json"
    command = [sys.executable, str(SCRIPT), "--clients", "4", "--layouts", "1x1", "2x1", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["replicas"], row["cpus_per_replica"]) for row in report["rows"]] == [(1, 1.0), (2, 1.0)]
    assert all(row["statuses"] == {"200": 4} for row in report["rows"])
    assert report["rows"][1]["warmup_replicas_seen"] == 2 and report["rows"][0]["throughput_vs_first"] == 1.0
    assert report["cpu"] and report["ray"] and report["command"].endswith(str(out))


@pytest.mark.parametrize(
    "arguments,message",
    [(["--clients", "0"], "must be at least 1"), (["--layouts", "2"], "want REPLICASxCPUS")],
)
def test_bad_sizes_are_refused(arguments, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr
