"""sa-export: turn a Stable Audio checkpoint into an engine folder (ONNX graphs + manifest).

Every argument is checked before the model loads; the folder is written atomically, and
components whose inputs did not change are reused from an existing folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from tqdm.auto import tqdm

from stable_audio_rt import __version__
from stable_audio_rt.atomic import bytes_in, left_beside
from stable_audio_rt.cli_exit import run_without_teardown
from stable_audio_rt.cli_types import folder_path
from stable_audio_rt.errors import reported_errors
from stable_audio_rt.export.engine_folder import ExportSettings, export_engines
from stable_audio_rt.export.onnx_export import BF16_MIN_OPSET, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from stable_audio_rt.manifest import Manifest, Verification
from stable_audio_rt.models.checkpoint import DEFAULT_REPO
from stable_audio_rt.models.io_spec import COMPONENTS
from stable_audio_rt.models.source import MODEL_HELP
from stable_audio_rt.stderr_reader import stdout_reader_may_leave

EXAMPLES = """examples:
  sa-export --out engines/sao-fp16 --fp16
  sa-export --model ./stable-audio-open-1.0 --out engines/sao-fp32 --components t5,dit,vae_decoder
  sa-export --out engines/short --fp16 --frames 1:256:512 --max-batch 2
  sa-export --model tiny-random --out engines/tiny     # seconds, no download: a smoke test
"""


def _frames(text: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(v) for v in text.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected MIN:OPT:MAX latent frames, got {text!r}") from e
    return low, opt, high


def _components(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sa-export",
        description="Export Stable Audio Open to an engine folder: one ONNX graph per component, each "
        "verified against PyTorch with onnxruntime, and a manifest.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_REPO, help=f"{MODEL_HELP} (default: {DEFAULT_REPO})")
    p.add_argument("--out", type=folder_path, required=True, help="the engine folder to write")
    precision = p.add_mutually_exclusive_group()
    for name in ("fp32", "fp16", "bf16"):
        p_help = f"graphs in {name}" + (" (default)" if name == "fp32" else "") + "; fp32 islands are kept"
        precision.add_argument(f"--{name}", dest="precision", action="store_const", const=name, help=p_help)
    p.add_argument(
        "--components",
        type=_components,
        default=COMPONENTS,
        help=f"comma-separated subset of {','.join(COMPONENTS)} (default: all)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=1,
        help="clips per request T5 and the DiT accept with CFG, twice as many without (CFG runs two "
        "rows a clip; default: 1; the VAE takes one: batches decode clip by clip)",
    )
    p.add_argument("--frames", type=_frames, help="latent frame range MIN:OPT:MAX (default: 1:window:window)")
    p.add_argument(
        "--opset",
        type=int,
        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default: {DEFAULT_OPSET}; {BF16_MIN_OPSET} for "
        "--bf16, the first whose Conv takes bfloat16)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="re-export components even when they could be reused, and replace the folder even where "
        "that drops components it has",
    )
    p.add_argument(
        "--trt-plugins",
        action="store_true",
        help="emit attention and Snake as stable_audio_rt TensorRT plugin nodes (the fused Triton kernels) "
        "instead of standard ONNX ops; such graphs run in TensorRT only, not onnxruntime",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ExportSettings(
        precision=args.precision or "fp32",
        components=args.components,
        max_batch=args.max_batch,
        frames=args.frames,
        opset=args.opset,
        force=args.force,
        trt_plugins=args.trt_plugins,
    )
    bars: list[tqdm] = []  # made at the first component: a refusal before it shows no bar
    reused: list[str] = []  # components taken unchanged from the folder, not exported again

    def on_component(name: str) -> None:
        if bars:
            bars[0].update(1)
        else:
            bars.append(tqdm(total=len(settings.components), desc="export", unit="component"))
        bars[0].set_description(f"export {name}")

    def close_bar() -> None:
        for bar in bars:
            bar.close()

    stage = _Stage()
    written = f"{args.out} holds the new export"
    plans = (
        f"{args.out} holds the new export's ONNX graphs, but not all its TensorRT plans: the same "
        "command builds them, reusing the graphs"
    )

    with reported_errors("sa-export", lambda: stage.left, close_bar) as failed:
        for left in left_beside(args.out):
            print(
                f"sa-export: note: {left} ({bytes_in(left) / 2**20:.0f} MiB) is what an export that was "
                f"killed left; remove it unless another export into {args.out} is running now",
                file=sys.stderr,
            )
        manifest = export_engines(
            args.model,
            args.out,
            settings,
            on_component=on_component,
            on_reused=reused.append,
            on_loading=lambda: print(f"sa-export: loading {args.model}", file=sys.stderr),
            on_written=lambda: setattr(stage, "left", written),
        )
        bars[0].update(1)
        close_bar()
        with stdout_reader_may_leave():  # `sa-export ... | head`: the folder is written
            for line in _summary(manifest, reused):
                print(line)
            # The plans' build (minutes on a GPU) is under the same policy: an error is one line.
            print(_engines_line(args.out, manifest, on_building=lambda: setattr(stage, "left", plans)))
    if failed.exit_status is not None:
        return failed.exit_status
    return 0


@dataclass
class _Stage:
    """What a stop signal leaves, by how far the export got."""

    left: str = "the engine folder was left as it was"


def _summary(manifest: Manifest, reused: list[str]) -> list[str]:
    """A line per component: its precision and how its verification went."""
    lines = []
    for name, entry in manifest.components.items():
        check = entry.verification
        detail = (
            f"max rel {check.max_rel:.2e} ≤ {check.tolerance:.0e}"
            if isinstance(check, Verification)
            else check.reason
        )
        how = "reused, as verified when exported: " if name in reused else ""
        lines.append(f"{name:12s} {entry.precision:5s} {check.status:8s} {how}{detail} {entry.note}".rstrip())
    return lines


def _engines_line(folder: Path, manifest: Manifest, on_building: Callable[[], None]) -> str:
    """Build TensorRT plans beside the graphs when TensorRT and a GPU are here; one line either way."""
    from stable_audio_rt.export.trt_build import build_folder_engines, build_gpu
    from stable_audio_rt.trt_import import TensorRTUnavailable, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTUnavailable:
        hint = "pip install 'stable-audio-rt[trt]' on a GPU machine"
        return f"wrote {folder}: ONNX only (TensorRT is not installed; {hint})"
    gpu = build_gpu()
    if gpu is None:
        return f"wrote {folder}: ONNX only (no CUDA GPU to build TensorRT engines on)"
    on_building()
    build_folder_engines(folder, manifest)
    return f"wrote {folder}: ONNX and TensorRT engines for {gpu[0]}"


def command() -> NoReturn:
    """The `sa-export` command (pyproject's [project.scripts]): `main`, without the interpreter's teardown."""
    run_without_teardown(main)


if __name__ == "__main__":
    command()
