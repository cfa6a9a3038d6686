"""sa-bench: how fast, how close to the machine's limit, and how close to the reference.

For each backend × precision × workload (frames × steps × batch) it runs one cold request and
warm repeats, and reports per-stage latency (p50/p90/min/max), the real-time factor both ways,
peak memory, the FLOPs of each stage and their fraction of the GEMM floor measured on the DiT's
own product shapes in the row's precision, and quality against the fp32 torch run of the same
seed (latent cosine distance, waveform SNR). With --diffusers, diffusers' StableAudioPipeline runs
the same work on the same weights in the same precision as each of our rows, interleaved with
it, and the ratio is reported per pair. With --precision-report, each non-fp32 torch row's
stages (T5, one DiT call per noise level, the decode) are compared one call each with fp32 on
the same inputs.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import torch
from tqdm.auto import tqdm

from stable_audio_rt import __version__
from stable_audio_rt.atomic import check_writable, write_atomically, write_target
from stable_audio_rt.bench import flops as flop_counts
from stable_audio_rt.bench.gemm import onnxruntime_gemm_rate, torch_gemm_rate
from stable_audio_rt.bench.precision_report import StageError, StageOutput, compare, stage_outputs
from stable_audio_rt.bench.quality import cosine_distance, snr_db
from stable_audio_rt.bench.report import markdown, plot, write_json
from stable_audio_rt.bench.runner import PROMPT, Workload, interleave_with_peer, run_workload
from stable_audio_rt.cli_exit import run_without_teardown
from stable_audio_rt.cli_types import folder_path
from stable_audio_rt.errors import ConfigError, reported_errors
from stable_audio_rt.manifest import Manifest
from stable_audio_rt.models.source import MODEL_HELP, read_config
from stable_audio_rt.precision import (
    DTYPE_CHOICES,
    DTYPES,
    NAMES,
    choose_dtype,
    cpu_capabilities,
    dtype_request,
)
from stable_audio_rt.runtime.backends.choice import onnxruntime_unusable, tensorrt_unusable
from stable_audio_rt.runtime.backends.engine_backend import (
    check_request_shapes,
    profile_checks,
    require_components,
)
from stable_audio_rt.runtime.cli import add_reuse_memory_argument
from stable_audio_rt.runtime.cpu_memory import use_memory_policy
from stable_audio_rt.runtime.estimate import announce_benchmark
from stable_audio_rt.runtime.load import WeightOptions, plan_load, resolve_device
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import (
    MAX_CFG_SCALE,
    GenerationRequest,
    resolve_request_as,
    with_model_defaults,
)
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import DEFAULT_CFG_SCALE
from stable_audio_rt.runtime.sampling.pingpong import RF_DEFAULT_CFG_SCALE, RF_DEFAULT_STEPS
from stable_audio_rt.stderr_reader import stdout_reader_may_leave
from stable_audio_rt.trt_import import import_tensorrt

if TYPE_CHECKING:
    from stable_audio_rt.bench.peer import PeerPipelines

BACKENDS = ("torch", "onnxruntime", "tensorrt", "all")
DEFAULT_MODEL = "random-stable-audio-open-1.0"
SMALL_MODEL = "random-stable-audio-open-small"
SEED = 1234
DEFAULT_BATCH = 1
# The request fields sa-bench sets from its options, for refusals in its terms.
SA_BENCH_NAMES = {
    "steps": "--steps",
    "num_outputs": "--batch",
    "frames": "--frames",
    "cfg_scale": "--cfg-scale",
}
# The SAO 1.0 comparison of the benchmark issue: 64 latent frames (2.97 s), 10 steps.
SAO_PRESET_FRAMES, SAO_PRESET_STEPS = 64, 10


@dataclass(frozen=True)
class Preset:
    """A named workload; every flag given explicitly overrides its field."""

    model: str
    frames: int | None  # None: the model's whole window
    steps: int
    cfg_scale: float
    batch: int

    def describe(self, name: str) -> str:
        frames = self.frames or read_config(self.model).latent_frames
        window = f"{frames} frames" + ("" if self.frames else " (the whole window)")
        cfg = f"CFG {self.cfg_scale:g} with a negative prompt" if self.cfg_scale != 1.0 else "no CFG"
        return f"{name}: --model {self.model}, {window}, {self.steps} steps, {cfg}, batch {self.batch}"


PRESETS: dict[str, Preset] = {
    "sao": Preset(DEFAULT_MODEL, SAO_PRESET_FRAMES, SAO_PRESET_STEPS, DEFAULT_CFG_SCALE, DEFAULT_BATCH),
    # Small's own defaults (its model card): the whole window, 8 pingpong steps, no CFG.
    "small": Preset(SMALL_MODEL, None, RF_DEFAULT_STEPS, RF_DEFAULT_CFG_SCALE, DEFAULT_BATCH),
}

EPILOG = """presets (explicit flags override each field):
  {presets}

examples:
  sa-bench --preset sao --precision bf16 fp32 --diffusers --precision-report --json sao.json
  sa-bench --preset small --precision auto --precision-report --markdown small.md
  sa-bench --frames 64 --steps 10 --repeats 3 --json bench.json --markdown bench.md --plot bench.png
  sa-bench --backend all --engines engines/sao-fp32 --frames 32 64 128 --steps 10
  sa-bench --model stabilityai/stable-audio-open-small --device cuda --precision fp16 bf16
""".format(presets="\n  ".join(p.describe(name) for name, p in PRESETS.items()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sa-bench",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="a named workload, listed below; flags given explicitly override its fields",
    )
    p.add_argument(
        "--model",
        help=f"{MODEL_HELP}; timings do not depend on the weights (default: with --engines, the model "
        f"they were exported from; else the preset's, else {DEFAULT_MODEL}, no download)",
    )
    p.add_argument(
        "--engines",
        type=folder_path,
        help="engine folder from sa-export, for --backend onnxruntime, tensorrt, all",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="default: torch, or with --engines all; all = every backend that can run here",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        choices=DTYPE_CHOICES,
        default=["fp32"],
        help="torch precisions (default fp32; with --backend torch or all); auto = what StableAudio.load "
        "picks on this device (bf16 on a CPU with bf16 matrix units, else fp32), labelled auto→its "
        "choice. An fp32 row always runs first: it is every quality column's reference",
    )
    p.add_argument(
        "--precision-report",
        action="store_true",
        help="for each non-fp32 torch row, one call of each stage (T5, the DiT at σ = 500, 100, 10, "
        "0.3 or, for rectified flow, t = 0.9, 0.5, 0.1, the VAE decode) against the fp32 row on "
        "the same inputs: SNR (dB) and max relative error per stage",
    )
    p.add_argument(
        "--frames",
        type=int,
        nargs="+",
        help="latent frames per request (default: the preset's, else the model's window)",
    )
    p.add_argument(
        "--steps", type=int, nargs="+", help="sampler steps (default: the preset's, else the model's)"
    )
    p.add_argument("--batch", type=int, nargs="+", help="clips per request (default: the preset's, else 1)")
    p.add_argument(
        "--cfg-scale",
        type=float,
        help="default: the preset's, else the model's (CFG doubles the DiT rows and adds a negative prompt)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed requests after the cold one (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed warm requests (default 3)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    add_reuse_memory_argument(p)
    p.add_argument(
        "--diffusers",
        action="store_true",
        help="also run diffusers' pipeline on the same work and weights, in each of our rows' precision "
        "(every diffusers module in it, T5 included): the --model folder when it is in the diffusers "
        "layout, else random weights of its geometry that ours then loads",
    )
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--markdown", type=Path, help="write the summary table here")
    p.add_argument("--plot", type=Path, help="write latency vs frames here (.png)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def read_engines(args: argparse.Namespace) -> Manifest | None:
    """The engine folder's manifest, read once for the whole run (None without --engines),
    after what the backend needs is known to be here."""
    if args.backend in ("onnxruntime", "tensorrt") and args.engines is None:
        raise ConfigError(f"--backend {args.backend} needs --engines DIR (an engine folder from sa-export)")
    if args.backend == "tensorrt":
        import_tensorrt()  # its absence is one line, before anything loads
    if args.engines is None:
        return None
    if not (args.engines / "manifest.json").is_file():
        raise ConfigError(
            f"{args.engines} is not an engine folder (no manifest.json); export one with sa-export"
        )
    return Manifest.read(args.engines)


def _check(args: argparse.Namespace, window: int, manifest: Manifest | None) -> None:
    """Every other argument, before any model loads or any time is spent."""
    if manifest is not None:
        # Every file against its record now, as sa-run does at load: not after the torch rows.
        require_components(args.engines, manifest)
        for name in manifest.components:
            manifest.check_files(args.engines, name)
    if args.backend == "onnxruntime":
        why_not = onnxruntime_unusable(manifest)
        if why_not is not None:
            raise ConfigError(f"--backend onnxruntime cannot run {args.engines}: {why_not}")
    if args.backend in ("onnxruntime", "tensorrt") and args.precision != ["fp32"]:
        # Torch rows other than the fp32 reference run with --backend torch or all only.
        raise ConfigError(
            f"--precision {' '.join(args.precision)} sets the torch rows' precisions, and --backend "
            f"{args.backend} runs no torch row but the fp32 reference (the engines run in their folder's "
            "own precision): give --backend all to run both, or leave --precision out"
        )
    if args.diffusers and manifest is not None and not _is_diffusers_folder(args.model):
        # The peer would run random weights that ours loads too, which no engine folder holds.
        raise ConfigError(
            f"--diffusers with --engines runs diffusers on the weights the engines were exported from, "
            f"so they must be a local folder in the diffusers layout (model_index.json), and {args.model} "
            "is not: export the engines from such a folder, or leave --diffusers out"
        )
    if args.cfg_scale is not None and not 0 <= args.cfg_scale <= MAX_CFG_SCALE:
        raise ConfigError(f"--cfg-scale must be in [0, {MAX_CFG_SCALE:g}], got {args.cfg_scale:g}")
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be ≥ 1 and --warmup ≥ 0")
    for name, values in (
        ("--frames", args.frames or []),
        ("--steps", args.steps or []),
        ("--batch", args.batch),
    ):
        if any(v < 1 for v in values):
            raise ConfigError(f"{name} values must be ≥ 1, got {values}")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:  # each value is a row (or a row's point); a repeat would run it twice
            raise ConfigError(
                f"{name} gives {', '.join(map(str, repeated))} more than once: give each value once "
                "(--repeats sets how often each row is timed)"
            )
    if args.frames and max(args.frames) > window:
        raise ConfigError(f"--frames {max(args.frames)} exceeds the model's window of {window} frames")
    for flag, path, suffix in (("--json", args.json, ".json"), ("--markdown", args.markdown, ".md"),
                               ("--plot", args.plot, ".png")):  # fmt: skip
        if path is not None and path.suffix != suffix:
            raise ConfigError(f"{flag} must name a {suffix} file, got {path}")
        if path is not None and path.is_dir():
            raise ConfigError(
                f"{flag}: {path} is a folder; name a file in it, such as {path / ('report' + suffix)}"
            )
        folder = None if path is None else write_target(path).parent  # through a link: its target's
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"{flag}: folder {folder} does not exist (create it first)")
        if folder is not None:
            check_writable(folder)


def _faster(workloads: list[Workload], runs: int) -> tuple[str, ...]:
    """The options that would shorten these workloads: the sao preset's window and steps, and
    one timed run."""
    faster = []
    if any(w.frames > SAO_PRESET_FRAMES for w in workloads):
        faster.append(f"--frames {SAO_PRESET_FRAMES}")
    if any(w.steps > SAO_PRESET_STEPS for w in workloads):
        faster.append(f"--steps {SAO_PRESET_STEPS}")
    if runs > 2:
        faster.append("--warmup 0 --repeats 1")
    return tuple(faster)


def _t5_dims(pipe: StableAudio) -> tuple[int, int, int]:
    """(d_model, d_ff, layers) of a torch pipeline's T5, for the FLOP counts of every row (an
    exported T5 does not state its dims; the engines are expected to come from --model)."""
    c = pipe.components.conditioner.text_encoder.t5.config
    return (c.d_model, c.d_ff, c.num_layers)


def apply_preset(args: argparse.Namespace, manifest: Manifest | None) -> argparse.Namespace:
    """`args` with the preset's fields where no flag was given (without a preset: the default
    model and batch 1); frames, steps and CFG left unset fall to the model's own. With an
    engine folder the model defaults to the one it was exported from (its manifest's source):
    the rows' weights must be the same."""
    preset = PRESETS.get(args.preset)
    exported_from = manifest.source if manifest is not None else None
    filled = {
        "model": exported_from or (preset.model if preset else DEFAULT_MODEL),
        "frames": [preset.frames] if preset and preset.frames else None,
        "steps": [preset.steps] if preset else None,
        "cfg_scale": preset.cfg_scale if preset else None,
        "batch": [preset.batch if preset else DEFAULT_BATCH],
        "backend": "all" if args.engines is not None else "torch",
    }
    given = vars(args)
    return argparse.Namespace(**{**given, **{k: v for k, v in filled.items() if given[k] is None}})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(["sa-bench", *(sys.argv[1:] if argv is None else argv)])
    with reported_errors("sa-bench", "nothing written") as failed:
        manifest = read_engines(args)
        args = apply_preset(args, manifest)
        config = read_config(args.model)
        _check(args, config.latent_frames, manifest)
        device = resolve_device(args.device)
        _check_precision_report(args, device)
        # Before any load, as sa-run; diffusers runs in this process under the same policy.
        memory = use_memory_policy(args.reuse_memory, device)
        defaults = with_model_defaults(GenerationRequest(prompts=("x",), cfg_scale=args.cfg_scale), config)
        ratio = config.vae.downsampling_ratio
        frames = args.frames or [config.latent_frames]
        if args.diffusers and len(frames) > 1:
            raise ConfigError("--diffusers compares one window: give one --frames value")
        workloads = [
            Workload(f, s, b, SEED, defaults.cfg_scale)
            for f, s, b in itertools.product(frames, args.steps or [defaults.steps], args.batch)
        ]
        for w in workloads:  # each request's own limits (--steps past 10,000, ...), before any load
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # what a request warns of, its runs say
                resolve_request_as(
                    GenerationRequest(prompts=(PROMPT,), **w.options(config.sample_rate, ratio)),
                    config,
                    SA_BENCH_NAMES,
                )
        if manifest is not None:  # every row's shape in the folder's profiles, before any run
            graphs = profile_checks(args.engines, manifest)
            for w in workloads:
                check_request_shapes(
                    args.engines, manifest, graphs, w.batch, w.uses_cfg, w.frames, w.frames, False
                )
        runs = 1 + args.warmup + args.repeats
        found = announce_benchmark(config, workloads, runs, device, _faster(workloads, runs))
        if found is not None:
            print(f"sa-bench: {found.line()}", file=sys.stderr)
        import onnxruntime  # its version in the report (loaded for the onnxruntime rows anyway)

        report = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": _device_name(device),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,  # onnxruntime-gpu's too, as imported
            "python": platform.python_version(),
            "malloc": memory,
            "command": command,
            "model": args.model,
            "preset": args.preset,
            **_run(args, config, device, workloads, manifest),
        }
    if failed.exit_status is not None:
        return failed.exit_status
    with stdout_reader_may_leave():  # `sa-bench --json r.json | head`: the files below are written
        print(markdown(report))
    with reported_errors("sa-bench", "the report above was not written") as failed:
        if args.json:
            write_json(report, args.json)
        if args.markdown:
            write_atomically(args.markdown, markdown(report))
        if args.plot:
            plot(report, args.plot)
    return failed.exit_status or 0


def _check_precision_report(args: argparse.Namespace, device: torch.device) -> None:
    """--precision-report needs a torch row whose precision resolves to other than fp32 here."""
    if not args.precision_report:
        return
    if args.backend not in ("torch", "all"):  # --precision is refused with it (_check): not that advice
        raise ConfigError(
            f"--precision-report compares non-fp32 torch rows with fp32, and --backend {args.backend} "
            "runs no torch row but the fp32 reference: give --backend all with --precision bf16 or fp16"
        )
    resolved = {p: choose_dtype(dtype_request(p), device).dtype for p in args.precision}
    if all(dtype == torch.float32 for dtype in resolved.values()):
        asked = ", ".join(f"{p} = {NAMES[d]}" for p, d in resolved.items())
        raise ConfigError(
            f"--precision-report compares non-fp32 torch rows with fp32, and this run has none "
            f"(--backend {args.backend}; --precision {asked} on {device.type}): add --precision bf16 or fp16"
        )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = cpu_capabilities().get("cpu_name") or "CPU"  # what cpuinfo reads: "AMD EPYC"
    return f"{name} ({platform.machine()}), {torch.get_num_threads()} threads"


@dataclass(frozen=True)
class Row:
    """One of our configurations: how it loads, and what its precision and kernels resolved to."""

    backend: str
    label: str  # the tables' name: "bf16", "auto→bf16", an engine folder's precision
    precision: str  # resolved
    dtype: torch.dtype  # of its GEMM floor and its diffusers peer
    kernels: str | None  # torch: the resolved kernels; engine folders carry their own
    dtype_reason: str | None  # torch: why this dtype (precision.choose_dtype)
    load: Callable[[], StableAudio]

    @property
    def name(self) -> str:
        return f"{self.backend} {self.label}"

    @property
    def compared_with_fp32(self) -> bool:
        """Whether --precision-report compares this row's stages with the fp32 row's."""
        return self.backend == "torch" and self.dtype != torch.float32


def _torch_row(source: str, device: torch.device, requested: str) -> Row:
    """A torch row planned as `StableAudio.load` plans it ("auto" dtype and kernels resolved for
    the device), run eagerly (no CUDA graph): the stage columns need the stages' own timings."""
    options = WeightOptions(dtype=dtype_request(requested))
    plan = plan_load(source, backend="torch", device=device, options=options)
    choice = plan.dtype_choice
    name = NAMES[choice.dtype]
    label = f"auto→{name}" if requested == "auto" else name
    return Row("torch", label, name, choice.dtype, plan.options.kernels, choice.reason,
               lambda: StableAudio.from_plan(plan, cuda_graph=False))  # fmt: skip


def _rows(
    args: argparse.Namespace, device: torch.device, source: str, manifest: Manifest | None
) -> list[Row]:
    """Our rows in run order. The fp32 torch row comes first whatever is asked: it is the
    reference of every quality column and of the precision report."""
    rows = [_torch_row(source, device, "fp32")]
    if args.backend in ("torch", "all"):
        rows += [_torch_row(source, device, p) for p in args.precision if p != "fp32"]
    if manifest is None:
        return rows
    precision = manifest.components["dit"].precision
    engine_backends = [b for b in ("onnxruntime", "tensorrt") if args.backend in (b, "all")]
    if args.backend == "all":  # every backend that can run here
        trt_why_not = tensorrt_unusable(args.engines, manifest, device)
        if trt_why_not is not None:
            engine_backends.remove("tensorrt")
            print(f"sa-bench: no tensorrt row: {trt_why_not}", file=sys.stderr)
        why_not = onnxruntime_unusable(manifest)
        if why_not is not None:
            engine_backends.remove("onnxruntime")
            print(f"sa-bench: no onnxruntime row: {why_not}", file=sys.stderr)
    dtype = DTYPES.get(precision, torch.float32)
    for backend in engine_backends:
        rows.append(Row(backend, precision, precision, dtype, None, None, lambda b=backend: (
            StableAudio.from_engines(args.engines, b, device, cuda_graph=False))))  # fmt: skip
    return rows


def _is_diffusers_folder(model: str) -> bool:
    """Whether diffusers' pipeline can load `model` as it is (else the peer gets random weights)."""
    return (Path(model) / "model_index.json").is_file()


def _peer_pipelines(
    args: argparse.Namespace, config, frames: int, device: torch.device, scratch: Path
) -> PeerPipelines:
    """diffusers' pipeline on our weights: the --model folder when it is a diffusers checkpoint,
    else random weights of its geometry written once to `scratch`, which our rows then load."""
    from stable_audio_rt.bench.peer import PeerPipelines, build_peer, load_peer

    if _is_diffusers_folder(args.model):
        first = load_peer(Path(args.model), frames)
    else:
        first = build_peer(config, frames, scratch)
    return PeerPipelines(first, frames, device)


def _run(
    args: argparse.Namespace,
    config,
    device: torch.device,
    workloads: list[Workload],
    manifest: Manifest | None,
) -> dict:
    if not args.diffusers:
        return _measure(args, config, device, workloads, manifest, None)
    # The peer's random weights (4.9 GB at Stable Audio Open 1.0's size) last as long as the run.
    with tempfile.TemporaryDirectory(prefix="sa-bench-peer-") as scratch:
        peers = _peer_pipelines(args, config, workloads[0].frames, device, Path(scratch))
        return _measure(args, config, device, workloads, manifest, peers)


def _measure(
    args: argparse.Namespace,
    config,
    device: torch.device,
    workloads: list[Workload],
    manifest: Manifest | None,
    peers: PeerPipelines | None,
) -> dict:
    source = str(peers.folder) if peers is not None else args.model
    if manifest is not None:
        # Before any run: the quality columns compare the engines with `source`'s weights.
        from stable_audio_rt.runtime.backends.onnxruntime_backend import require_same_weights

        require_same_weights(args.engines, manifest, source)
    rows = _rows(args, device, source, manifest)
    # One call per stage depends on the frames and clips, not on the steps.
    report_shapes = {(w.frames, w.batch): w for w in workloads}
    gemm_rates: dict[str, dict] = {}
    reference_stages: dict[tuple[int, int], dict[str, StageOutput]] = {}
    runs, references, peer_reports, precision_reports, t5_dims = [], {}, [], [], None
    bar = tqdm(total=len(rows) * len(workloads), desc="sa-bench", unit="run")
    for index, row in enumerate(rows):
        began = time.perf_counter()
        pipe = row.load()
        load_s = time.perf_counter() - began
        t5_dims = t5_dims or _t5_dims(pipe)  # the first row is the torch reference
        for workload in workloads:
            bar.set_description(f"{row.name} {workload.frames} frames × {workload.steps} steps")
            measured = run_workload(pipe, workload, args.warmup, args.repeats)
            result = measured.pop("result")
            key = (workload.frames, workload.steps, workload.batch)
            references.setdefault(key, result)  # the first row is the fp32 torch reference
            library = "onnxruntime" if row.backend == "onnxruntime" else "torch"  # cuBLAS for tensorrt
            floor = _gemm_rate(gemm_rates, library, config, workload, device, row.dtype)
            runs.append(_run_row(row, workload, load_s, measured, result, references[key], config, t5_dims,
                                 floor, gemm_rates[floor]["gflops_per_s"], library))  # fmt: skip
            bar.update()
        if args.precision_report and index == 0:
            reference_stages = {key: stage_outputs(pipe, w) for key, w in report_shapes.items()}
        elif args.precision_report and row.compared_with_fp32:
            for key, workload in report_shapes.items():
                errors = compare(stage_outputs(pipe, workload), reference_stages[key])
                precision_reports.append(_precision_entry(row, rows[0], workload, errors))
        if peers is not None:
            peer = peers.peer(row.dtype)
            pairs = interleave_with_peer(peer, pipe, workloads[0], args.repeats)
            peer_reports.append({
                "ours": row.name,
                "ours_precision": row.precision,
                "diffusers_precision": NAMES[peer.dtype],
                "diffusers_dtypes": peer.module_dtypes(),  # T5 included; our torch rows keep it fp32
                **pairs,
            })  # fmt: skip
        del pipe
    bar.close()
    return {
        "gemm_floor": gemm_rates,
        "runs": runs,
        "peer": peer_reports,
        "precision_report": precision_reports,
    }


def _precision_entry(row: Row, reference: Row, workload: Workload, errors: list[StageError]) -> dict:
    return {
        "ours": row.name,
        "precision": row.precision,
        "kernels": row.kernels,
        "reference": f"{reference.name} (kernels {reference.kernels}): same weights, same inputs",
        "frames": workload.frames,
        "batch": workload.batch,
        "cfg_scale": workload.cfg_scale,
        "stages": [asdict(e) for e in errors],
    }


def _run_row(
    row: Row, workload, load_s, measured, result, reference, config, t5_dims, floor_key, rate, library
) -> dict:
    counted = flop_counts.request_flops(
        config, workload.batch, workload.frames, workload.steps, workload.uses_cfg, t5_dims
    )
    audio_s = result.audio.shape[-1] / result.sample_rate
    warm_total = measured["warm_s"]["total"]["p50"]
    dit_floor = counted.dit_step / (rate * 1e9)
    return {
        "backend": row.backend,
        "precision": row.precision,
        "label": row.label,
        "kernels": row.kernels,
        "dtype_reason": row.dtype_reason,
        "frames": workload.frames,
        "steps": workload.steps,
        "batch": workload.batch,
        "cfg_scale": workload.cfg_scale,
        "audio_seconds": audio_s,
        "load_s": load_s,
        **measured,
        "rtf": warm_total / audio_s,
        "x_real_time": audio_s / warm_total,
        "flops": {**asdict(counted), "sampling": counted.sampling, "total": counted.total},
        "floor": {
            "library": library,
            "gemm": floor_key,
            "gflops_per_s": rate,
            "dit_step_s": dit_floor,
            "dit_step_fraction": dit_floor / measured["per_step_s"],
            "request_s": counted.total / (rate * 1e9),
        },
        "quality": _quality(result, reference),
    }


def _quality(result, reference) -> dict:
    if result is reference:
        return {"reference": "this run", "latent_cosine_distance": None, "waveform_snr_db": None}
    return {
        "reference": "torch fp32, same seed",
        "latent_cosine_distance": cosine_distance(result.latents, reference.latents),
        "waveform_snr_db": snr_db(result.audio, reference.audio),
    }


def _gemm_rate(cache: dict, library: str, config, workload: Workload, device, dtype) -> str:
    """The key in `cache` of `library`'s GFLOP/s on this workload's DiT step shapes in `dtype`
    (GEMM efficiency depends on the rows, so it is measured once per library, dtype and
    rows × frames)."""
    rows, dtype_name = workload.rows, str(dtype).removeprefix("torch.")
    key = f"{library}-{dtype_name} {rows}x{workload.frames}"
    if key not in cache:
        gemms = flop_counts.dit_step_gemms(config.dit, rows, workload.frames)
        rate = (
            onnxruntime_gemm_rate(gemms, dtype, device)
            if library == "onnxruntime"
            else torch_gemm_rate(gemms, device, dtype)
        )
        cache[key] = {
            "gflops_per_s": rate.gflops_per_s,
            "shapes": f"DiT step, {rows} row{'s' if rows > 1 else ''} × {workload.frames} frames",
            "library": library,
            "dtype": dtype_name,
        }
    return key


def command() -> NoReturn:
    """The `sa-bench` command (pyproject's [project.scripts]): `main`, without the interpreter's teardown."""
    run_without_teardown(main)


if __name__ == "__main__":
    command()
