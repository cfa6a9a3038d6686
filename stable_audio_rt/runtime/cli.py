"""sa-run: generate audio from a text prompt with Stable Audio Open.

Every argument is checked (and reference audio read) before the model is loaded, and nothing is
written unless generation succeeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np

from stable_audio_rt import __version__
from stable_audio_rt.cli_exit import run_without_teardown
from stable_audio_rt.cli_types import folder_path
from stable_audio_rt.errors import reported_errors
from stable_audio_rt.kernels.switch import KERNEL_CHOICES
from stable_audio_rt.models.checkpoint import DEFAULT_REPO
from stable_audio_rt.models.config import StableAudioConfig
from stable_audio_rt.models.source import MODEL_HELP, is_random
from stable_audio_rt.precision import DTYPE_CHOICES, DTYPES, dtype_request
from stable_audio_rt.runtime.audio_io import audio_length, check_output_paths, clip_paths
from stable_audio_rt.runtime.cpu_memory import use_memory_policy
from stable_audio_rt.runtime.estimate import announce
from stable_audio_rt.runtime.inpaint_ranges import RangeNames, inpaint_mask
from stable_audio_rt.runtime.load import BACKENDS, LoadPlan, WeightOptions, plan_load
from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio
from stable_audio_rt.runtime.requests import WINDOWS, GenerationRequest, resolve_request_as, worded_as
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import (
    DEFAULT_CFG_SCALE,
    DEFAULT_INIT_NOISE_LEVEL,
    DEFAULT_SIGMA_MAX,
    DEFAULT_SIGMA_MIN,
    DEFAULT_STEPS,
)
from stable_audio_rt.runtime.sampling.guidance import (
    DEFAULT_APG_SCALE,
    DEFAULT_CFG_NORM_THRESHOLD,
    GUIDANCE_KINDS,
)
from stable_audio_rt.runtime.sampling.noise import NOISE_KINDS
from stable_audio_rt.runtime.sampling.pingpong import (
    RF_DEFAULT_CFG_SCALE,
    RF_DEFAULT_INIT_NOISE_LEVEL,
    RF_DEFAULT_STEPS,
)
from stable_audio_rt.stderr_reader import stdout_reader_may_leave

EXAMPLES = """examples:
  sa-run "warm analog synth pad, slow attack" --seconds 10 -o pad.wav
  sa-run "rain on a tin roof" --negative-prompt "music" --seed 42 --num-outputs 2 -o rain.flac
  sa-run "jazz drums" --init-audio loop.wav --init-noise-level 3 -o variation.wav
  sa-run "guitar solo" --inpaint-audio song.wav --inpaint-range 4,8 -o fixed.wav
  sa-run "128 bpm techno loop" --model stabilityai/stable-audio-open-small -o loop.wav  # 8 steps
  sa-run "smoke test" --model tiny-random -o noise.wav      # no download; makes noise
  sa-run "ambient drone" --engines engines/ -o drone.wav     # TensorRT plans from sa-export --fp16
"""
SA_RUN_RANGES = RangeNames("--inpaint-audio", "--keep-range", "--inpaint-range")
# The request fields whose options are named otherwise, for refusals in sa-run's terms.
SA_RUN_NAMES = {
    "steps": "--steps",
    "seed": "--seed",
    "seconds_total": "--seconds",
    "seconds_start": "--start",
    "cfg_scale": "--cfg-scale",
    "num_outputs": "--num-outputs",
    "init_audio": "--init-audio",
    "init_noise_level": "--init-noise-level",
    "inpaint_audio": "--inpaint-audio",
    "apg_scale": "--apg-scale",
    "cfg_norm_threshold": "--cfg-norm-threshold",
    "vae_chunk": "--vae-chunk",
    "noise": "--noise",
    "guidance": "--guidance",
    "sigma_min": "--sigma-min",
    "sigma_max": "--sigma-max",
    "inpaint_mask": "--keep-range/--inpaint-range",
    "frames": "--frames",
    "window": "--window",
}


def _range(text: str) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected START,END in seconds, got {text!r}") from e
    return start, end


def _vae_chunk(text: str) -> int | str | None:
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected a number of latent frames, 'auto' or 'none', got {text!r}"
        ) from e


def add_reuse_memory_argument(p: argparse.ArgumentParser) -> None:
    """--reuse-memory / --no-reuse-memory (`cpu_memory.use_memory_policy`): sa-run's, sa-serve's
    and sa-bench's."""
    p.add_argument(
        "--reuse-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on the CPU, have glibc's malloc keep freed memory for the next allocation instead of "
        "handing it back to the system (default: on; Small's decode ~15%% faster on a 2-core EPYC, at a "
        "peak memory ~15%% higher that the process then keeps); --no-reuse-memory: malloc's defaults",
    )


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """The options that say what to load and where: sa-run's, and sa-serve's the same."""
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default): with --engines, tensorrt when the folder has plans for this GPU, else "
        "onnxruntime-gpu, else torch (onnxruntime on the CPU); without, torch. torch: the PyTorch "
        "models; onnxruntime, tensorrt: an engine folder from sa-export (--engines). The choice is printed",
    )
    p.add_argument(
        "--engines",
        type=folder_path,
        help="engine folder written by sa-export (for onnxruntime, tensorrt, auto)",
    )
    p.add_argument(
        "--no-cuda-graph",
        action="store_true",
        help="on a GPU, run the request eagerly instead of capturing it once as a CUDA graph and "
        "replaying it (to debug or profile; slower)",
    )
    p.add_argument("--model", default=None, help=f"{MODEL_HELP} (default: {DEFAULT_REPO})")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model precision of the torch backend (default: auto, bf16 on a CPU with bf16 matrix "
        "units such as AMX or AVX512-BF16, fp32 elsewhere; printed with its reason)",
    )
    p.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        default="auto",
        help="attention and Snake maths of the torch backend: triton (fused kernels, CUDA), compiled "
        "(Snake fused by torch.compile and, on the CPU, channels-last VAE convolutions writing in place: "
        "a decode 2.4x (fp32) to 4.3x (bf16) faster there, a few seconds to compile once; the DiT's and "
        "T5's weights packed for oneDNN where faster; T5 over the prompts' tokens only, not their padding), "
        "torch (SDPA and eager), or auto (default: triton on CUDA, compiled on the CPU)",
    )
    p.add_argument(
        "--t5-dtype",
        choices=DTYPES,
        help="T5 precision (default: fp32, the most accurate, or an engine folder's own; fp16 casts T5 "
        "as stable-audio-tools does, for reference-exact runs)",
    )
    add_reuse_memory_argument(p)


def plan_from_arguments(args: argparse.Namespace, program: str) -> LoadPlan:
    """The backend, device, kernels and config, checked before anything loads; on the CPU, the
    process's malloc set to reuse freed memory unless --no-reuse-memory."""
    t5_dtype = None if args.t5_dtype is None else DTYPES[args.t5_dtype]
    options = WeightOptions(dtype_request(args.dtype), t5_dtype, args.kernels)
    plan = plan_load(args.model, args.engines, args.backend, args.device, options)
    use_memory_policy(args.reuse_memory, plan.device)
    if args.backend == "auto":
        print(f"{program}: {plan.choice.line()}", file=sys.stderr)
    if args.dtype == "auto" and plan.choice.backend == "torch":
        print(f"{program}: {plan.dtype_choice.line()}", file=sys.stderr)
    if plan.choice.backend == "torch" and is_random(plan.model):
        print(f"{plan.model}: random weights, so the output is noise (a smoke test)", file=sys.stderr)
    return plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sa-run",
        # Written out: argparse would show the prompt as optional ("*", for `parse_arguments`).
        usage="%(prog)s [options] prompt [prompt ...]",
        description="Generate audio with Stable Audio Open (text-to-audio, audio-to-audio, inpainting).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # nargs "*": `parse_arguments` requires one, counting those after `--` too.
    p.add_argument(
        "prompt",
        nargs="*",
        help="text prompt(s), before or after the options; several make a batch (after --, a "
        "prompt may start with -)",
    )
    p.add_argument(
        "-o",
        "--output",
        default="output.wav",
        help="WAV or FLAC path (default: output.wav); with several clips, name_0.wav, name_1.wav, ...",
    )
    add_load_arguments(p)
    p.add_argument(
        "--negative-prompt", help="what to steer away from (replaces the empty unconditional input)"
    )
    p.add_argument(
        "--seconds",
        type=float,
        help="where the clip ends, in seconds (its length with --start 0; conditions the model as "
        "seconds_total; default: the model's maximum, or the reference audio's length)",
    )
    p.add_argument(
        "--start",
        type=float,
        default=0.0,
        help="where the clip starts, in seconds: conditions the model as seconds_start and cuts the "
        "output's beginning, so the clip is --seconds minus --start long (default: 0)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help=f"sampler steps (default: the model's: {DEFAULT_STEPS} for SAO 1.0, "
        f"{RF_DEFAULT_STEPS} for Small)",
    )
    p.add_argument(
        "--cfg-scale",
        type=float,
        help="classifier-free guidance scale; 1 disables it (default: the model's: "
        f"{DEFAULT_CFG_SCALE:g} for SAO 1.0, {RF_DEFAULT_CFG_SCALE:g} for Small)",
    )
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--num-outputs", "--batch", type=int, default=1, help="clips per prompt (default: 1)")
    p.add_argument("--init-audio", type=Path, help="audio-to-audio: the audio to vary")
    p.add_argument(
        "--init-noise-level",
        type=float,
        help="audio-to-audio starting noise: σmax for SAO 1.0, the time t in (0, 1] for Small; higher "
        f"departs further (default: {DEFAULT_INIT_NOISE_LEVEL:g} for SAO 1.0, "
        f"{RF_DEFAULT_INIT_NOISE_LEVEL:g} for Small, where 1 is pure noise)",
    )
    p.add_argument("--inpaint-audio", type=Path, help="inpainting: the audio to repair or extend")
    p.add_argument(
        "--keep-range",
        type=_range,
        action="append",
        metavar="S,E",
        help="inpainting: keep these seconds of --inpaint-audio, regenerate the rest (repeatable)",
    )
    p.add_argument(
        "--inpaint-range",
        type=_range,
        action="append",
        metavar="S,E",
        help="inpainting: regenerate these seconds, keep the rest (repeatable)",
    )
    p.add_argument(
        "--window",
        choices=WINDOWS,
        default="full",
        help="full: denoise the model's whole window and crop (reference behaviour); "
        "trim: only the frames the clip needs (faster, but changes the output)",
    )
    p.add_argument(
        "--frames", type=int, help="explicit window in latent frames (2048 samples each), instead of --window"
    )
    p.add_argument(
        "--noise",
        choices=NOISE_KINDS,
        default="gaussian",
        help="gaussian: fast seeded i.i.d. noise (default); brownian: reference-exact, the same draws "
        "as stable-audio-tools for the same seed (slower to prepare)",
    )
    p.add_argument(
        "--guidance",
        choices=GUIDANCE_KINDS,
        default="cfg",
        help="cfg: classifier-free guidance (default, as the SAO 1.0 release and diffusers); "
        "apg: adaptive projected guidance, stable-audio-tools 0.0.20's default",
    )
    p.add_argument(
        "--apg-scale",
        type=float,
        help=f"with --guidance apg: 0 = plain CFG … 1 = full APG (default: {DEFAULT_APG_SCALE})",
    )
    p.add_argument(
        "--cfg-norm-threshold",
        type=float,
        default=DEFAULT_CFG_NORM_THRESHOLD,
        help="clip the guidance difference to this per-clip L2 norm (default: 0 = off)",
    )
    p.add_argument(
        "--sigma-min",
        type=float,
        default=DEFAULT_SIGMA_MIN,
        help=f"SAO 1.0's noise schedule: its last σ (default: {DEFAULT_SIGMA_MIN:g}, stable-audio-tools')",
    )
    p.add_argument(
        "--sigma-max",
        type=float,
        default=DEFAULT_SIGMA_MAX,
        help=f"SAO 1.0's noise schedule: its first σ, text-to-audio's (default: {DEFAULT_SIGMA_MAX:g})",
    )
    p.add_argument(
        "--vae-chunk",
        type=_vae_chunk,
        default="auto",
        metavar="N|auto|none",
        help="decode the VAE in chunks of N latent frames: same audio, bounded memory (default: auto, "
        "sized from free GPU memory; one call on the CPU)",
    )
    p.add_argument(
        "--format",
        choices=("pcm16", "float"),
        default="pcm16",
        help="sample format: 16-bit PCM (default) or float (24-bit for FLAC)",
    )
    p.add_argument("--normalize", action="store_true", help="scale each clip's peak to full scale")
    p.add_argument("--no-clip", action="store_true", help="do not clip samples to [-1, 1] (float WAV only)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _inpaint_mask(args: argparse.Namespace, config: StableAudioConfig) -> np.ndarray | None:
    """--keep-range / --inpaint-range → a keep mask at the model rate over the inpaint audio."""
    reference = None if args.inpaint_audio is None else audio_length(args.inpaint_audio)
    return inpaint_mask(
        reference, args.keep_range, args.inpaint_range, config, SA_RUN_RANGES, str(args.inpaint_audio)
    )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """sa-run's arguments, prompts among the options (`sa-run "rain" -o a.wav "thunder"`) and
    after `--` (argparse's intermixed parsing refuses `-- -prompt` with no prompt before it)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    after = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_intermixed_args(argv[:after])
    args.prompt += argv[after + 1 :]
    if not args.prompt:
        parser.error("the following arguments are required: prompt")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    with reported_errors(
        "sa-run", "nothing written", worded=lambda text: worded_as(text, SA_RUN_NAMES)
    ) as failed:
        plan = plan_from_arguments(args, "sa-run")
        config = plan.config
        request = GenerationRequest(
            prompts=tuple(args.prompt),
            negative_prompt=args.negative_prompt,
            seconds_total=args.seconds,
            seconds_start=args.start,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            seed=args.seed,
            num_outputs=args.num_outputs,
            init_audio=args.init_audio,
            init_noise_level=args.init_noise_level,
            inpaint_audio=args.inpaint_audio,
            inpaint_mask=_inpaint_mask(args, config),
            window=args.window,
            frames=args.frames,
            noise=args.noise,
            guidance=args.guidance,
            apg_scale=args.apg_scale,
            cfg_norm_threshold=args.cfg_norm_threshold,
            vae_chunk=args.vae_chunk,
            sigma_min=args.sigma_min,
            sigma_max=args.sigma_max,
        )
        resolved = resolve_request_as(request, config, SA_RUN_NAMES)
        outputs = clip_paths(args.output, resolved.batch)  # name_k for each clip of a batch
        check_output_paths(outputs, args.format, clip=not args.no_clip, normalize=args.normalize)
        found = announce(config, resolved, plan.device, plan.dtype_choice.dtype)
        if found is not None:
            print(f"sa-run: {found.line()}", file=sys.stderr)
        pipe = StableAudio.from_plan(plan, cuda_graph=not args.no_cuda_graph)
        result: GenerationResult = pipe.run_resolved(resolved, progress=True)
        paths = result.save(args.output, args.format, clip=not args.no_clip, normalize=args.normalize)
    if failed.exit_status is not None:
        return failed.exit_status
    seconds = result.audio.shape[-1] / result.sample_rate
    total = sum(result.timings.values())
    with stdout_reader_may_leave():
        print(f"seed {result.seed}: {len(paths)} clip(s) of {seconds:.2f} s in {total:.2f} s")
        for path in paths:
            print(path)
    return 0


def command() -> NoReturn:
    """The `sa-run` command (pyproject's [project.scripts]): `main`, without the interpreter's teardown."""
    run_without_teardown(main)


if __name__ == "__main__":
    command()
