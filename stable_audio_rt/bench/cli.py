"""sa-bench: how fast, how close to the machine's limit, and how close to the reference.

For each backend × precision × workload (frames × steps × batch) it runs one cold request and
warm repeats, and reports per-stage latency (p50/p90/min/max), the real-time factor both ways,
peak memory, the FLOPs of each stage and their fraction of the GEMM floor measured on the DiT's
own product shapes, and quality against the fp32 torch run of the same seed (latent cosine
distance, waveform SNR). With --diffusers, diffusers' StableAudioPipeline runs the same work on
the same weights, interleaved with ours, and the ratio is reported per pair.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from stable_audio_rt.atomic import write_atomically
from stable_audio_rt.bench import flops as flop_counts
from stable_audio_rt.bench.gemm import onnxruntime_gemm_rate, torch_gemm_rate
from stable_audio_rt.bench.quality import cosine_distance, snr_db
from stable_audio_rt.bench.report import markdown, plot, write_json
from stable_audio_rt.bench.runner import Workload, interleave_with_peer, run_workload
from stable_audio_rt.errors import ConfigError, reported_errors
from stable_audio_rt.manifest import Manifest
from stable_audio_rt.models.source import MODEL_HELP, read_config
from stable_audio_rt.precision import DTYPES
from stable_audio_rt.runtime.backends.choice import tensorrt_unusable
from stable_audio_rt.runtime.load import resolve_device
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, with_model_defaults
from stable_audio_rt.trt_import import import_tensorrt

BACKENDS = ("torch", "onnxruntime", "tensorrt", "all")
DEFAULT_MODEL = "random-stable-audio-open-1.0"
SEED = 1234

EPILOG = """examples:
  sa-bench --frames 64 --steps 10 --repeats 3 --json bench.json --markdown bench.md --plot bench.png
  sa-bench --backend all --engines engines/sao-fp32 --frames 32 64 128 --steps 10 --diffusers
  sa-bench --model stabilityai/stable-audio-open-small --device cuda --precision fp16 bf16
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sa-bench",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"{MODEL_HELP}; timings do not depend on the weights (default: {DEFAULT_MODEL}, no "
        "download). With --engines, the weights they were exported from",
    )
    p.add_argument(
        "--engines", type=Path, help="engine folder from sa-export, for --backend onnxruntime, tensorrt, all"
    )
    p.add_argument(
        "--backend", choices=BACKENDS, default="torch", help="default: torch; all = every available"
    )
    p.add_argument(
        "--precision", nargs="+", choices=DTYPES, default=["fp32"], help="torch precisions (default fp32)"
    )
    p.add_argument(
        "--frames", type=int, nargs="+", help="latent frames per request (default: the model's window)"
    )
    p.add_argument("--steps", type=int, nargs="+", help="sampler steps (default: the model's)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="clips per request (default: 1)")
    p.add_argument("--cfg-scale", type=float, help="default: the model's (CFG doubles the DiT rows)")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests after the cold one (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed warm requests (default 3)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--diffusers",
        action="store_true",
        help="also run diffusers' pipeline on the same work and weights: the --model folder when it is "
        "in the diffusers layout, else random weights of its geometry that ours then loads",
    )
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--markdown", type=Path, help="write the summary table here")
    p.add_argument("--plot", type=Path, help="write latency vs frames here (.png)")
    return p


def _check(args: argparse.Namespace, window: int) -> None:
    """Every argument, before any model loads or any time is spent."""
    if args.backend in ("onnxruntime", "tensorrt") and args.engines is None:
        raise ConfigError(f"--backend {args.backend} needs --engines DIR (an engine folder from sa-export)")
    if args.backend == "tensorrt":
        import_tensorrt()  # its absence is one line, before anything loads
    if args.engines is not None and not (args.engines / "manifest.json").is_file():
        raise ConfigError(
            f"{args.engines} is not an engine folder (no manifest.json); export one with sa-export"
        )
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be ≥ 1 and --warmup ≥ 0")
    for name, values in (
        ("--frames", args.frames or []),
        ("--steps", args.steps or []),
        ("--batch", args.batch),
    ):
        if any(v < 1 for v in values):
            raise ConfigError(f"{name} values must be ≥ 1, got {values}")
    if args.frames and max(args.frames) > window:
        raise ConfigError(f"--frames {max(args.frames)} exceeds the model's window of {window} frames")
    for flag, path, suffix in (("--json", args.json, ".json"), ("--markdown", args.markdown, ".md"),
                               ("--plot", args.plot, ".png")):  # fmt: skip
        if path is not None and path.suffix != suffix:
            raise ConfigError(f"{flag} must name a {suffix} file, got {path}")
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"{flag}: folder {path.parent} does not exist (create it first)")


def _t5_dims(pipe: StableAudio) -> tuple[int, int, int]:
    """(d_model, d_ff, layers) of a torch pipeline's T5, for the FLOP counts of every row (an
    exported T5 does not state its dims; the engines are expected to come from --model)."""
    c = pipe.components.conditioner.text_encoder.t5.config
    return (c.d_model, c.d_ff, c.num_layers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(["sa-bench", *(sys.argv[1:] if argv is None else argv)])
    with reported_errors("sa-bench", "nothing written") as failed:
        config = read_config(args.model)
        _check(args, config.latent_frames)
        device = resolve_device(args.device)
        defaults = with_model_defaults(GenerationRequest(prompts=("x",), cfg_scale=args.cfg_scale), config)
        frames = args.frames or [config.latent_frames]
        if args.diffusers and len(frames) > 1:
            raise ConfigError("--diffusers compares one window: give one --frames value")
        workloads = [
            Workload(f, s, b, SEED, defaults.cfg_scale)
            for f, s, b in itertools.product(frames, args.steps or [defaults.steps], args.batch)
        ]
        report = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": _device_name(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "command": command,
            "model": args.model,
            **_run(args, config, device, workloads),
        }
    if failed.exit_status is not None:
        return failed.exit_status
    if args.json:
        write_json(report, args.json)
    if args.markdown:
        write_atomically(args.markdown, markdown(report))
    if args.plot:
        plot(report, args.plot)
    print(markdown(report))
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


def _pipelines(
    args: argparse.Namespace, device: torch.device, source: str
) -> list[tuple[str, str, Callable]]:
    """(backend, precision, loader) in run order. The fp32 torch run comes first whatever is
    asked: it is the reference of every quality column."""
    # Eager runs (no CUDA graph): the stage columns need the stages' own timings.
    entries: list[tuple[str, str, Callable]] = [
        ("torch", "fp32", lambda: StableAudio.from_pretrained(
            source, device=device, dtype=torch.float32, cuda_graph=False))
    ]  # fmt: skip
    if args.backend in ("torch", "all"):
        for precision in (p for p in args.precision if p != "fp32"):
            entries.append(("torch", precision, lambda p=precision: StableAudio.from_pretrained(
                source, device=device, dtype=DTYPES[p], cuda_graph=False)))  # fmt: skip
    if args.engines is None:
        return entries
    manifest = Manifest.read(args.engines)
    precision = manifest.components["dit"].precision
    engine_backends = [b for b in ("onnxruntime", "tensorrt") if args.backend in (b, "all")]
    if args.backend == "all" and tensorrt_unusable(args.engines, manifest, device) is not None:
        engine_backends.remove("tensorrt")  # "all" means every backend that can run here
    for backend in engine_backends:
        entries.append((backend, precision, lambda b=backend: StableAudio.from_engines(
            args.engines, b, device, cuda_graph=False)))  # fmt: skip
    return entries


def _run(args: argparse.Namespace, config, device: torch.device, workloads: list[Workload]) -> dict:
    peer = None
    if args.diffusers:
        from stable_audio_rt.bench.peer import build_peer, load_peer

        if (Path(args.model) / "model_index.json").is_file():  # a diffusers checkpoint: share it
            peer = load_peer(Path(args.model), workloads[0].frames)
        else:
            peer = build_peer(config, workloads[0].frames)
    source = str(peer.folder) if peer is not None else args.model
    if args.engines is not None:
        # Before any run: the quality columns compare the engines with `source`'s weights.
        from stable_audio_rt.runtime.backends.onnxruntime_backend import require_same_weights

        require_same_weights(args.engines, Manifest.read(args.engines), source)
    entries = _pipelines(args, device, source)
    gemm_rates: dict[str, dict] = {}
    runs, references, peer_reports, t5_dims = [], {}, [], None
    bar = tqdm(total=len(entries) * len(workloads), desc="sa-bench", unit="run")
    for backend, precision, load in entries:
        began = time.perf_counter()
        pipe = load()
        load_s = time.perf_counter() - began
        t5_dims = t5_dims or _t5_dims(pipe)  # the first entry is the torch reference
        for workload in workloads:
            bar.set_description(f"{backend} {precision} {workload.frames} frames × {workload.steps} steps")
            measured = run_workload(pipe, workload, args.warmup, args.repeats)
            result = measured.pop("result")
            key = (workload.frames, workload.steps, workload.batch)
            references.setdefault(key, result)  # the first entry is the fp32 torch reference
            library = "onnxruntime" if backend == "onnxruntime" else "torch"  # cuBLAS for tensorrt
            dtype = DTYPES.get(precision, torch.float32)
            rate = _gemm_rate(gemm_rates, library, config, workload, device, dtype)
            runs.append(_run_row(backend, precision, workload, load_s, measured, result, references[key],
                                 config, t5_dims, rate, library))  # fmt: skip
            bar.update()
        if peer is not None:
            pairs = interleave_with_peer(peer, pipe, workloads[0], args.repeats)
            peer_reports.append({"ours": f"{backend} {precision}", **pairs})
        del pipe
    bar.close()
    return {"gemm_floor": gemm_rates, "runs": runs, "peer": peer_reports}


def _run_row(
    backend, precision, workload, load_s, measured, result, reference, config, t5_dims, rate, library
):
    counted = flop_counts.request_flops(
        config, workload.batch, workload.frames, workload.steps, workload.uses_cfg, t5_dims
    )
    audio_s = result.audio.shape[-1] / result.sample_rate
    warm_total = measured["warm_s"]["total"]["p50"]
    dit_floor = counted.dit_step / (rate * 1e9)
    return {
        "backend": backend,
        "precision": precision,
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


def _gemm_rate(cache: dict, library: str, config, workload: Workload, device, dtype) -> float:
    """GFLOP/s of `library` on this workload's DiT step shapes (GEMM efficiency depends on the
    rows, so it is measured once per library, dtype and rows × frames)."""
    rows = workload.rows
    name = library if library == "onnxruntime" else f"torch-{str(dtype).removeprefix('torch.')}"
    key = f"{name} {rows}x{workload.frames}"
    if key not in cache:
        gemms = flop_counts.dit_step_gemms(
            config.dit, rows, workload.frames, config.conditioning.context_tokens
        )
        rate = (
            onnxruntime_gemm_rate(gemms)
            if library == "onnxruntime"
            else torch_gemm_rate(gemms, device, dtype)
        )
        cache[key] = {
            "gflops_per_s": rate.gflops_per_s,
            "shapes": f"DiT step, {rows} rows × {workload.frames} frames",
        }
    return cache[key]["gflops_per_s"]


if __name__ == "__main__":
    sys.exit(main())
