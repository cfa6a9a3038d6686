"""The VAE decode on the CPU: today's path against the fast one, in fp32 and bf16, with the
machine's matrix rate measured in the same run as the floor.

    python benchmarks/bench_vae_layout.py --frames 1024 --json benchmarks/results/vae_layout_cpu.json

Random weights of SAO 1.0's decoder (Small's is the same), one decode of unit-RMS latents (the
scale of a trained VAE's latents) per variant:

- "eager (B, C, T)": what `kernels="torch"` runs: nn.Conv1d / ConvTranspose1d, eager Snake with its
  fp32 island (five passes over each activation);
- "compiled channels-last, apart" (before 2026-11-29): every convolution as its 2-D twin over
  (B, C, 1, T) in channels-last order (oneDNN's fastest layout for these shapes) and Snake
  fused by torch.compile, its maths in fp32 inside the fused loop, each op writing fresh memory;
- "compiled channels-last": what `kernels="auto"` runs on the CPU: the same, with each residual
  unit's add fused into its last convolution (`use_onednn_vae_`) and every Snake whose input
  is not read after writing into it (`CompiledSnake.in_place`);
- "compiled channels-last, bf16 Snake": that without the fp32 island (Snake's maths in the
  activation dtype), to show what the island costs and buys.

Each variant reports seconds, its FLOP rate, the fraction of the matrix rate of its dtype (one
DiT-sized product, `runtime.estimate.matrix_rate`, best of a few: the floor), and its one-call
SNR against the fp32 eager decode of the same latents.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from report import emit, header

from stable_audio_rt.bench.flops import vae_decode_flops
from stable_audio_rt.bench.quality import snr_db
from stable_audio_rt.kernels.switch import CompiledSnake, use_onednn_vae_
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0
from stable_audio_rt.models.random_init import randomize_
from stable_audio_rt.models.vae import OobleckVAE, cast_keeping_fp32_, snake_eager
from stable_audio_rt.precision import DTYPES, NAMES
from stable_audio_rt.runtime.estimate import matrix_rate

CPU = torch.device("cpu")


def snake_in_activation_dtype(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
    """Snake without the fp32 island: its maths in x's dtype."""
    per_channel = (-1,) + (1,) * (x.dim() - 2)
    alpha, inv_beta = alpha.to(x.dtype).view(per_channel), inv_beta.to(x.dtype).view(per_channel)
    return x + inv_beta * torch.sin(alpha * x).pow(2)


def channels_last_only(vae: OobleckVAE, dtype: torch.dtype) -> None:
    vae.use_channels_last_()


VARIANTS = {  # name: (layout, Snake, whether Snakes write into their input)
    "eager (B, C, T)": (None, snake_eager, False),
    "compiled channels-last, apart": (channels_last_only, CompiledSnake(), False),
    "compiled channels-last": (use_onednn_vae_, CompiledSnake(), True),
    "compiled channels-last, bf16 Snake": (use_onednn_vae_, CompiledSnake(snake_in_activation_dtype), True),
}


def decoder(base: OobleckVAE, dtype: torch.dtype, layout, snake, in_place: bool) -> OobleckVAE:
    vae = cast_keeping_fp32_(copy.deepcopy(base), dtype)
    if layout is not None:
        layout(vae, dtype)
    vae.set_snake(snake, snake.in_place if in_place else None)
    return vae


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=STABLE_AUDIO_OPEN_1_0.latent_frames)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["fp32", "bf16"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = STABLE_AUDIO_OPEN_1_0.vae
    base = randomize_(OobleckVAE(config), torch.Generator().manual_seed(0))
    latents = torch.randn(1, config.latent_dim, args.frames, generator=torch.Generator().manual_seed(1))
    flops = vae_decode_flops(config, 1, args.frames)
    rates = {name: matrix_rate(STABLE_AUDIO_OPEN_1_0.dit.embed_dim, DTYPES[name]) for name in args.dtypes}
    rows, reference = [], None
    for name in args.dtypes:
        dtype = DTYPES[name]
        for variant, (layout, snake, in_place) in VARIANTS.items():
            if variant.endswith("bf16 Snake") and dtype == torch.float32:
                continue  # no island to drop in fp32
            vae = decoder(base, dtype, layout, snake, in_place)
            with torch.inference_mode():
                vae.decode(latents[..., : min(args.frames, 16)].to(dtype))  # compile, warm the allocator
                began = time.perf_counter()
                audio = vae.decode(latents.to(dtype)).float()
                seconds = time.perf_counter() - began
            reference = audio if reference is None else reference  # the first: fp32 eager
            rows.append(
                {
                    "dtype": name,
                    "variant": variant,
                    "seconds": seconds,
                    "gflops_per_s": flops / seconds / 1e9,
                    "fraction_of_matrix_rate": flops / seconds / 1e9 / rates[name],
                    "snr_db_vs_fp32_eager": snr_db(audio, reference),
                }
            )
            print(rows[-1], flush=True)
            del vae, audio
    emit(
        {
            **header(CPU),
            "frames": args.frames,
            "audio_seconds": args.frames * config.downsampling_ratio / STABLE_AUDIO_OPEN_1_0.sample_rate,
            "decode_tflop": flops / 1e12,
            "matrix_rate_gflops": {NAMES[DTYPES[n]]: r for n, r in rates.items()},
            "rows": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
