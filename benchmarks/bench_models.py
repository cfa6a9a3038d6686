"""Time the PyTorch models at full Stable Audio Open 1.0 size: one CFG DiT step and the VAE decode.

Run it on the machine you want to measure (a CUDA GPU if there is one):

    python benchmarks/bench_models.py --device cuda --dtype fp16 --json benchmarks/results/models.json

Without --model it uses random weights of the real geometry (timings do not depend on the
values), so it needs no download. The sampler-level benchmark (sa-bench) comes with the
pipeline; this script measures the building blocks that bound it.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Callable
from pathlib import Path

import torch
from report import emit, header
from timing import repeat, summary_ms

from stable_audio_rt.models import STABLE_AUDIO_OPEN_1_0, DiT, OobleckVAE, load_stable_audio
from stable_audio_rt.precision import DTYPES

# reference-spec §3: default number of sampler steps, each one CFG DiT call on 2·B rows.
DEFAULT_STEPS = 100


def _measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    return summary_ms(repeat(fn, device, warmup, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint folder or Hub repo id (default: random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--batch", type=int, default=1, help="clips per request (DiT runs 2× for CFG)")
    parser.add_argument("--frames", type=int, default=STABLE_AUDIO_OPEN_1_0.latent_frames)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.model:
        model = load_stable_audio(args.model, dtype=dtype, device=device)
        config, dit, vae = model.config, model.dit, model.vae
    else:
        config = STABLE_AUDIO_OPEN_1_0
        with device:
            dit = DiT(config.dit).to(dtype).eval()
            vae = OobleckVAE(config.vae).to(dtype).eval()

    rows = 2 * args.batch
    x = torch.randn(rows, config.dit.io_channels, args.frames, device=device, dtype=dtype)
    t = torch.rand(rows, device=device, dtype=dtype)
    context = torch.randn(
        rows, config.conditioning.context_tokens, config.conditioning.cond_dim, device=device
    )
    global_cond = torch.randn(rows, config.conditioning.global_dim, device=device, dtype=dtype)
    latents = torch.randn(args.batch, config.vae.latent_dim, args.frames, device=device, dtype=dtype)

    with torch.inference_mode():
        context_kv = dit.context_kv(context.to(dtype))
        token = dit.global_token(t, global_cond)
        results = {
            "dit_step_cfg": _measure(
                lambda: dit.forward_with_context_kv(x, token, context_kv), device, args.warmup, args.repeats
            ),
            "vae_decode": _measure(lambda: vae.decode(latents), device, args.warmup, args.repeats),
        }

    audio_seconds = args.frames * config.vae.downsampling_ratio / config.sample_rate
    request_ms = DEFAULT_STEPS * results["dit_step_cfg"]["p50_ms"] + results["vae_decode"]["p50_ms"]
    report = {
        **header(device),
        "dtype": args.dtype,
        "weights": args.model or "random (real geometry)",
        "batch": args.batch,
        "frames": args.frames,
        "audio_seconds": audio_seconds,
        "stages": results,
        f"estimated_request_ms_{DEFAULT_STEPS}_steps": request_ms,
        "estimated_rtf": request_ms / 1e3 / audio_seconds,
        "peak_memory_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ),
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
