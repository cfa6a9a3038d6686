"""benchmarks/serve_load.py at a small size: its report holds the memory and latency figures and
every concurrent client is answered. The figures themselves are benchmarks, not asserted."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "serve_load.py"


def test_the_report_has_every_figure(tmp_path):
    out = tmp_path / "serve_load.json"
    command = [sys.executable, str(SCRIPT), "--sequential", "5", "--clients", "4", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    sequential, crowd = report["sequential"], report["concurrent"]
    assert sequential["requests"] == 5 and 0 < sequential["p50_s"] <= sequential["p99_s"]
    assert sequential["rss_at_end_mb"] > 0 and "rss_growth_mb" in sequential
    assert crowd["statuses"] == {"200": 4} and crowd["all_answered_200"]
    assert report["cpu"] and report["command"].endswith(str(out))


def test_bad_sizes_are_refused():
    done = subprocess.run([sys.executable, str(SCRIPT), "--clients", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "must be at least 1" in done.stderr
