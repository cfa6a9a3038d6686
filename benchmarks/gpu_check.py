"""The one command for whoever has an NVIDIA GPU, for minutes and offline: installs what the
machine lacks from a wheelhouse, checks correctness, then measures; every result is written the
moment it exists, so a run cut short keeps what it measured.

    python benchmarks/wheelhouse.py build                 # where an index is reachable (~10 MB)
    python benchmarks/gpu_check.py --wheelhouse .whl      # on the GPU machine, from a checkout
    python benchmarks/gpu_check.py --dry-run              # the same flow on the CPU, tiny models
    python benchmarks/gpu_check.py --wheelhouse .whl --parts "small,peer,speed fp32,kernels"
                                                          # a rerun of what a cut run missed

In order of what the GPU results must show first, each part skipped (and recorded) when its
estimate does not fit in what is left of --budget-s, cut where it stands when the budget runs
out (a timer: the run ends inside its budget), and a failure recorded without stopping the rest;
a timeline records when each part, model build and row began:
  install    --wheelhouse DIR: pip --no-index --no-deps into a target folder put first on the
             path (never replacing the machine's torch); without one, what is missing is recorded;
  tests      pytest -m gpu tests/gpu, Triton compiled: replay = eager, 3 requests of one shape =
             1 capture + 2 replays, two seeds differ under replay, no allocation in a replay, the
             kernels against the torch maths in fp32/fp16/bf16;
  correctness one short fp32 request on the GPU against the CPU, same weights and draws: the
             latents, and the VAE alone on the same latents;
  speed bf16 SAO 1.0 at real geometry (random weights), 100 steps, CFG 7 with a negative
             prompt, batch 1: CUDA graph then eager × full and 10 s trimmed window; cold, warm
             p50, RTF, captures and replays, peak memory, the DiT step's share of its GEMM floor;
             then one eager request per window under torch.profiler: time by kernel per step;
  small      SAO Small at real geometry, 8 steps, bf16, graph: batch 1 and batch 8;
  peer       diffusers' StableAudioPipeline on the same weights and work (full window, fp16),
             interleaved with ours, the ratio per pair (needs diffusers);
  speed fp16 the bf16 rows in fp16; speed fp32: the full window's graph row;
  kernels    benchmarks/kernels.py;
  tensorrt   with TensorRT: sa-export --fp16 and the same full-window request on its plans.
Results: <out>/gpu_check_<gpu>_<date>.json and .md (default benchmarks/results; a temporary
folder with --dry-run). Goals are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the checkout's package, then our siblings

import wheelhouse  # noqa: E402  (stdlib only: importable before anything is installed)

DEFAULT_BUDGET_S = 540
DEFAULT_SITE = ROOT / ".site"
# Seconds each part is expected to take on an H100/H200 (a model build, a row of 4 requests),
# to skip what would not fit; the dry run's on this project's 2-core CI machines.
ESTIMATES_S = {"tests": 90, "correctness": 60, "speed model": 40, "speed row": 25, "peer": 150,
               "small": 45, "kernels": 40, "tensorrt": 10}  # fmt: skip
DRY_ESTIMATES_S = {"tests": 20, "correctness": 5, "speed model": 2, "speed row": 3, "peer": 15,
                   "small": 5, "kernels": 15, "tensorrt": 1}  # fmt: skip
GOALS = (  # (name, the row it reads, the bound): issue 18's goals for an H100/H200
    ("SAO 1.0 full window, bf16 or fp16, CUDA graph ≤ 1.0 s", "speed full graph", 1.0),
    ("trimmed 10 s clip ≤ 0.3 s", "speed trim graph", 0.3),
    ("Small 11.9 s clip ≤ 0.1 s", "small batch 1", 0.1),
)
# The parts, in the order they run (gpu_check_parts.run_all), as --parts names them.
PARTS = (
    "tests",
    "correctness",
    "speed bf16",
    "small",
    "peer",
    "speed fp16",
    "kernels",
    "speed fp32",
    "tensorrt",
)
PEER_GOAL_RATIO = 4.0
PEER_GOAL = f"≥ {PEER_GOAL_RATIO:.0f}× diffusers on the same GPU and work"


class BudgetSpent(BaseException):
    """The budget's timer went off: a BaseException, so that it passes through the parts' own
    `except Exception` (a failed row is recorded and the next runs; a spent budget ends them)."""


@dataclass
class Budget:
    seconds: float
    began: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def arm(self) -> None:
        """From now on, whatever runs when the budget is spent is cut (the first H200 run, timed
        only by estimates, overran its budget by a minute and lost the rows after the cut)."""

        def spent(signum, frame) -> None:
            raise BudgetSpent

        signal.signal(signal.SIGALRM, spent)
        if self.left() > 0:
            signal.setitimer(signal.ITIMER_REAL, self.left())

    @staticmethod
    def disarm() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


@dataclass
class Results:
    """The report, rewritten (temp file + rename) after every addition."""

    folder: Path
    report: dict

    @property
    def stem(self) -> Path:
        gpu = self.report["gpu"].replace(" ", "_").replace("/", "_")
        return self.folder / f"gpu_check_{gpu}_{self.report['date'][:10]}"

    def put(self, key: str, value) -> None:
        self.report[key] = value
        self._write()

    def add(self, key: str, item: dict) -> None:
        self.report.setdefault(key, []).append(item)
        print(f"{key}: {json.dumps(item)}", flush=True)
        self._write()

    def skip(self, part: str, reason: str) -> None:
        self.add("skipped", {"part": part, "reason": reason})

    def _write(self) -> None:
        # Not stable_audio_rt.atomic: importing the package may fail (a missing module), and
        # that failure is itself a result this writer must record. The budget's timer waits
        # until the files are whole.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self._write_files()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})

    def _write_files(self) -> None:
        self.report["goals"] = goals(self.report)
        self.folder.mkdir(parents=True, exist_ok=True)
        for suffix, text in (
            (".json", json.dumps(self.report, indent=2) + "\n"),
            (".md", render(self.report)),
        ):
            with tempfile.NamedTemporaryFile("w", dir=self.folder, delete=False, suffix=".tmp") as tmp:
                tmp.write(text)
            os.replace(tmp.name, self.stem.with_suffix(suffix))


def goals(report: dict) -> list[dict]:
    """Each goal against its best matching measurement (none: not measured); a dry run's timings
    are the CPU's and tiny models', so there its goals are not applicable."""
    if report.get("dry_run"):
        names = [name for name, *_ in GOALS] + [PEER_GOAL]
        return [{"goal": name, "met": None, "note": "dry run: goals apply to a GPU"} for name in names]
    found = []
    for name, key, bound in GOALS:
        times = [r["warm_p50_s"] for r in report.get("speed", []) + report.get("small", []) if _key(r) == key]
        best = min(times, default=None)
        found.append({"goal": name, "bound_s": bound, "measured_s": best, "met": _met(best, bound)})
    ratios = [p["ratio_p50"] for p in report.get("peer", []) if "ratio_p50" in p]
    ratio = max(ratios, default=None)
    met = None if ratio is None else ratio >= PEER_GOAL_RATIO
    found.append({"goal": PEER_GOAL, "measured_ratio": ratio, "met": met})
    return found


def render(report: dict) -> str:
    """The report as markdown: what ran, each table, what was skipped and the goals."""
    install = report.get("install", {})
    lines = [
        f"# gpu_check: {report['gpu']}, {report['date']}",
        "",
        f"torch {report['torch']}, Triton {report['triton']}, Python {report['python']}; "
        f"budget {report['budget_s']:.0f} s"
        + (f", ran {report['seconds']} s" if "seconds" in report else ""),
        "",
        f"Install: {', '.join(install.get('installed', [])) or 'nothing'}; "
        f"missing: {', '.join(install.get('missing', [])) or 'nothing'}",
    ]
    if "pip_check" in install:
        lines += ["", f"pip check: {install['pip_check']['tail'].strip().splitlines()[-1:]}"]
    for t in report.get("tests", []):
        lines += ["", f"GPU tests: {t['summary']} (exit {t['returncode']}, {t['seconds']} s)"]
    for c in report.get("correctness", []):
        lines += [
            "",
            f"Correctness ({c['check']}): latents rel. error {c['latents_rel_error']:.2e} (bound "
            f"{c['tolerance']:.0e}), the VAE on the same latents {_decode(c)}, end-to-end audio "
            f"{c['audio_rel_error']:.2e}: {'pass' if c['passed'] else 'FAIL'}",
        ]
    rows = report.get("speed", []) + report.get("small", [])
    if rows:
        lines += [
            "",
            "| part | dtype | window | graph | batch | audio s | cold s | warm p50 s | RTF | "
            "captures/replays | peak MB | DiT step / GEMM floor |",
            "|" + "---|" * 12,
        ]
        lines += [_row_line(r) for r in rows]
    for p in report.get("profile", []):
        lines += ["", f"Profile, bf16 eager, {p['window']} window, {p['timed']}: {p['total_ms_per_step']} ms "
                      f"and {p['launches_per_step']} launches per step", "",
                  "| name | share | ms per step | calls per step |", "|---|---|---|---|"]  # fmt: skip
        for t in p["top"]:
            lines.append(f"| `{t['name']}` | {t['share']:.1%} | {t['ms_per_step']} | {t['calls_per_step']} |")
    for p in report.get("peer", []):
        ratios = ", ".join(f"{pair['ratio']:.2f}" for pair in p["pairs"])
        lines += [
            "",
            f"Peer ({p['dtype']}, {p['frames']} frames, {p['steps']} steps): ours "
            f"{p['ours_s_p50']:.3f} s, diffusers {p['diffusers_s_p50']:.3f} s, ×{p['ratio_p50']:.2f} "
            f"(pairs: {ratios})",
        ]
    for k in report.get("kernels", []):
        met = ", ".join(f"{g['kernel']} {g['dtype']} ×{g['best_speedup']:.2f}" for g in k.get("goals", []))
        lines += ["", f"Kernels: {met or 'exit ' + str(k['returncode'])}"]
    for name in ("skipped", "errors"):
        for item in report.get(name, []):
            lines += ["", f"{name.capitalize()}: {item['part']}: {item.get('reason') or item.get('error')}"]
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for g in report.get("goals", []):
        measured = g.get("measured_s", g.get("measured_ratio"))
        lines.append(f"| {g['goal']} | {'not measured' if measured is None else measured} | {g['met']} |")
    return "\n".join(lines) + "\n"


def _decode(correctness: dict) -> str:
    if "decode_rel_error" not in correctness:  # a report from before the VAE had its own check
        return "not compared"
    return f"{correctness['decode_rel_error']:.2e} (bound {correctness['decode_tolerance']:.0e})"


def _row_line(r: dict) -> str:
    head = f"| {r['part']} | {r['dtype']} | {r['window']} | {r['cuda_graph']} | {r.get('batch', 1)} |"
    if "error" in r:
        return f"{head} {r['error']} |" + " |" * 6
    floor = r.get("floor")
    share = f"{floor['floor_share']:.0%} ({floor['step_from']})" if floor else ""
    counts = f"{r['captures']}/{r['replays']}" + ("" if r.get("graph_counts_ok", True) else " (WRONG)")
    return (
        f"{head} {r['audio_seconds']} | {r['cold_s']} | {r['warm_p50_s']} | {r['rtf']} | {counts} | "
        f"{r['peak_memory_mb']} | {share} |"
    )


def _key(row: dict) -> str | None:
    if "warm_p50_s" not in row or row.get("dtype") == "fp32":
        return None
    if row.get("part") == "small":
        return f"small batch {row['batch']}"
    return f"speed {row['window']} {'graph' if row['cuda_graph'] else 'eager'}"


def _met(measured: float | None, bound: float) -> bool | None:
    return None if measured is None else measured <= bound


@dataclass
class Check:
    """One run's settings: the real GPU run or its CPU dry run."""

    args: argparse.Namespace
    budget: Budget
    results: Results
    env: dict  # for subprocesses: the installed target and the checkout first on PYTHONPATH
    running: str = ""  # the timeline's last event: what a spent budget cuts

    @property
    def dry(self) -> bool:
        return self.args.dry_run

    def mark(self, event: str) -> None:
        """A timeline entry: the seconds since the start at which `event` began."""
        self.running = event
        self.results.add("timeline", {"at_s": round(self.budget.elapsed(), 1), "event": event})

    def fits(self, estimate_key: str, part: str) -> bool:
        """Whether the part's estimate fits in what is left; if not, its skip is recorded."""
        estimate = (DRY_ESTIMATES_S if self.dry else ESTIMATES_S)[estimate_key]
        if self.budget.left() >= estimate:
            return True
        self.results.skip(
            part, f"estimated {estimate} s, {max(0, self.budget.left()):.0f} s of the budget left"
        )
        return False

    def attempt(self, part: str, estimate_key: str, run: Callable[[], None]) -> None:
        """Run a part if asked for and its estimate fits; a failure is recorded and the next part
        goes on."""
        if self.args.parts is not None and part not in self.args.parts:
            self.results.skip(part, "not asked for (--parts)")
            return
        if not self.fits(estimate_key, part):
            return
        self.mark(part)
        try:
            run()
        except BudgetSpent:
            self.results.skip(part, f"cut at {self.budget.elapsed():.0f} s during {self.running}: "
                                    f"the budget ({self.budget.seconds:.0f} s) was spent")  # fmt: skip
        except Exception as e:  # recorded with its trace: one failure must not hide the rest
            self.results.add("errors", {"part": part, "error": f"{type(e).__name__}: {e}",
                                        "trace": traceback.format_exc()[-3000:]})  # fmt: skip

    def subprocess(self, command: list[str], part: str) -> subprocess.CompletedProcess | None:
        timeout = max(1.0, self.budget.left())
        try:
            return subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired:
            self.results.skip(part, f"cut at {timeout:.0f} s: the budget ran out")
            return None


def header(dry: bool, date: dt.datetime, budget_s: float) -> dict:
    """When, on what, with which versions."""
    import torch
    import triton

    if dry:
        gpu, capability = f"dry-run CPU {platform.machine()} {os.cpu_count()} cores", None
    else:
        gpu = torch.cuda.get_device_name()
        capability = ".".join(map(str, torch.cuda.get_device_capability()))
    return {
        "date": date.isoformat(timespec="seconds"),
        "gpu": gpu,
        "compute_capability": capability,
        "dry_run": dry,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "budget_s": budget_s,
    }


def install(args: argparse.Namespace) -> tuple[dict, Path | None]:
    if args.wheelhouse is None:
        return {"wheelhouse": None, "missing": wheelhouse.missing_modules()}, None
    target = Path(tempfile.mkdtemp(prefix="gpu_check_site_")) if args.dry_run else args.site
    record = wheelhouse.install(args.wheelhouse, target)
    sys.path.insert(0, str(target))
    # What --no-deps cannot see: a wheel needing a newer version of something the image has.
    env = {**os.environ, "PYTHONPATH": str(target)}
    checked = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    tail = (checked.stdout + checked.stderr)[-2000:]
    record["pip_check"] = {"returncode": checked.returncode, "tail": tail}
    return record, target


def _parts(text: str) -> frozenset[str]:
    asked = {name.strip() for name in text.split(",") if name.strip()}
    unknown = asked - set(PARTS)
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"unknown parts {sorted(unknown)}: choose from {', '.join(PARTS)}")
    return frozenset(asked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--wheelhouse", type=Path, help="folder of wheels to install offline (wheelhouse.py build)"
    )
    parser.add_argument("--site", type=Path, default=DEFAULT_SITE, help="where the wheels go (default .site)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="skip what would not fit")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    parser.add_argument("--repeats", type=int, default=3, help="warm requests per row, after one cold")
    parser.add_argument(
        "--dry-run", action="store_true", help="the same flow on the CPU with the tiny models"
    )
    parser.add_argument(
        "--parts",
        type=_parts,
        help=f"only these parts, comma-separated (a rerun for what a cut run missed): {', '.join(PARTS)}",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    budget = Budget(args.budget_s)
    installed, target = install(args)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; --dry-run runs the flow on the CPU", file=sys.stderr)
        return 2
    date = dt.datetime.now(dt.timezone.utc)
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="gpu_check_dry_")) if args.dry_run else ROOT / "benchmarks" / "results"
    )
    paths = [str(p) for p in (target, ROOT, os.environ.get("PYTHONPATH")) if p]
    interpret = "1" if args.dry_run else "0"  # the dry run's kernels on the CPU; compiled on a GPU
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TRITON_INTERPRET": interpret}
    results = Results(out, header(args.dry_run, date, budget.seconds))
    results.put("install", installed)
    try:
        import gpu_check_parts as parts
    except ImportError as e:  # recorded with the install: it says what the wheelhouse must bring
        results.add("errors", {"part": "import", "error": f"{type(e).__name__}: {e}", "trace": ""})
        return 1
    check = Check(args, budget, results, env)
    budget.arm()
    try:
        parts.run_all(check)
    except BudgetSpent:  # between two parts: the next part's estimate fits no longer
        results.skip(check.running or "parts", "the budget was spent between parts")
    finally:
        budget.disarm()
    results.put("seconds", round(budget.elapsed(), 1))
    print(f"gpu_check: wrote {results.stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
