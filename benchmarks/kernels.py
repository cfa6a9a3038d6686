"""The Triton kernels against the torch maths they replace, at Stable Audio Open 1.0's shapes,
on a CUDA GPU: time per call (CUDA events, median of repeats), achieved TFLOP/s or GB/s, the
speed-up, and each kernel's error against the torch result.

    python benchmarks/kernels.py --json benchmarks/results/kernels_h100.json

Self-attention: B=2 (CFG), 1025 tokens (1024 latent frames + the global token), 24 heads of 64,
RoPE on 32 dims; torch = RoPE applied separately, then SDPA. Cross-attention: 24 query heads over
12 KV heads and 130 context tokens; torch = KV heads repeated, then SDPA. Snake: 128 channels x
2,097,152 samples (the decoder's widest activation is at full rate); torch = the eager Snake.
Goals (issue 5): self-attention+RoPE >= 1.0x SDPA+separate RoPE; Snake >= 3x eager.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from report import emit, header
from timing import repeat

from stable_audio_rt.kernels import ops
from stable_audio_rt.kernels.specs import GQA_CROSS_ATTENTION, ROPE_SELF_ATTENTION, SNAKE, KernelSpec
from stable_audio_rt.models.attention import rope_tables, sdpa_cross_attention, sdpa_self_attention
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0
from stable_audio_rt.models.vae import snake_eager
from stable_audio_rt.precision import DTYPES

BATCH = 2  # the CFG pair of one clip
SNAKE_CHANNELS = 128


@dataclass(frozen=True)
class Shapes:
    tokens: int = STABLE_AUDIO_OPEN_1_0.latent_frames + 1
    context_tokens: int = STABLE_AUDIO_OPEN_1_0.conditioning.context_tokens
    samples: int = STABLE_AUDIO_OPEN_1_0.sample_size


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds per call."""
    return 1e3 * statistics.median(repeat(fn, device, warmup, repeats))


def rel_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


def bench_self_attention(dtype: torch.dtype, device: torch.device, shapes: Shapes, warmup: int, repeats: int):
    dit, tokens = STABLE_AUDIO_OPEN_1_0.dit, shapes.tokens
    heads, head_dim = dit.num_heads, dit.head_dim
    qkv = torch.randn(BATCH, tokens, 3, heads, head_dim, device=device, dtype=dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    cos, sin = rope_tables(tokens, dit.rotary_dim, dit.rope_base, device)
    flops = 4 * BATCH * heads * tokens * tokens * head_dim
    reference = sdpa_self_attention(q, k, v, cos, sin)
    torch_ms = time_ms(lambda: sdpa_self_attention(q, k, v, cos, sin), device, warmup, repeats)
    return _tactic_rows(
        "self_attention+rope",
        ROPE_SELF_ATTENTION,
        lambda out, tactic: ops.launch_rope_self_attention(q, k, v, cos, sin, out, tactic),
        lambda: torch.empty(BATCH, tokens, heads, head_dim, device=device, dtype=dtype).transpose(1, 2),
        reference,
        torch_ms,
        (flops / 1e9, "TFLOP/s"),
        device,
        warmup,
        repeats,
    )


def bench_cross_attention(
    dtype: torch.dtype, device: torch.device, shapes: Shapes, warmup: int, repeats: int
):
    dit, tokens, context = STABLE_AUDIO_OPEN_1_0.dit, shapes.tokens, shapes.context_tokens
    heads, kv_heads, head_dim = dit.num_heads, dit.num_kv_heads, dit.head_dim
    q = torch.randn(BATCH, tokens, heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
    k, v = torch.randn(2, BATCH, kv_heads, context, head_dim, device=device, dtype=dtype).unbind(0)
    flops = 4 * BATCH * heads * tokens * context * head_dim
    reference = sdpa_cross_attention(q, k, v)
    torch_ms = time_ms(lambda: sdpa_cross_attention(q, k, v), device, warmup, repeats)
    return _tactic_rows(
        "cross_attention_gqa",
        GQA_CROSS_ATTENTION,
        lambda out, tactic: ops.launch_gqa_cross_attention(q, k, v, out, tactic),
        lambda: torch.empty_like(q),
        reference,
        torch_ms,
        (flops / 1e9, "TFLOP/s"),
        device,
        warmup,
        repeats,
    )


def bench_snake(dtype: torch.dtype, device: torch.device, shapes: Shapes, warmup: int, repeats: int):
    x = torch.randn(1, SNAKE_CHANNELS, shapes.samples, device=device, dtype=dtype)
    alpha = torch.rand(SNAKE_CHANNELS, device=device) + 0.5
    inv_beta = 1.0 / (torch.rand(SNAKE_CHANNELS, device=device) + 0.5)
    moved = 2 * x.numel() * x.element_size()  # read x, write y
    reference = snake_eager(x, alpha, inv_beta)
    torch_ms = time_ms(lambda: snake_eager(x, alpha, inv_beta), device, warmup, repeats)
    return _tactic_rows(
        "snake",
        SNAKE,
        lambda y, tactic: ops.launch_snake(x, alpha, inv_beta, y, tactic),
        lambda: torch.empty_like(x),
        reference,
        torch_ms,
        (moved / 1e6, "GB/s"),
        device,
        warmup,
        repeats,
    )


def _tactic_rows(
    kernel: str,
    spec: KernelSpec,
    launch: Callable[[torch.Tensor, int], None],
    new_output: Callable[[], torch.Tensor],
    reference: torch.Tensor,
    torch_ms: float,
    work: tuple[float, str],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> list[dict]:
    """One row per tactic: its time, its rate (work per ms in `work`'s unit), its error."""
    per_ms, unit = work
    rows = []
    for tactic in spec.tactics:
        out = new_output()
        ms = time_ms(lambda out=out, tactic=tactic: launch(out, tactic.id), device, warmup, repeats)
        rows.append(
            {
                "kernel": kernel,
                "dtype": str(out.dtype).removeprefix("torch."),
                "tactic": tactic.id,
                "ms": round(ms, 4),
                "torch_ms": round(torch_ms, 4),
                # Significant digits: the interpreter's ×0.0004 must not print as 0.
                "speedup_vs_torch": float(f"{torch_ms / ms:.3g}"),
                "rate": round(per_ms / ms, 2),
                "rate_unit": unit,
                "rel_error_vs_torch": rel_error(out, reference),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["fp16", "bf16"])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--device",
        default="cuda",
        help="cuda (default); cpu only under TRITON_INTERPRET=1, to check the script",
    )
    parser.add_argument(
        "--tokens", type=int, default=Shapes.tokens, help="self-attention tokens (default: SAO's)"
    )
    parser.add_argument("--context-tokens", type=int, default=Shapes.context_tokens)
    parser.add_argument("--samples", type=int, default=Shapes.samples, help="Snake samples per channel")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        message = "needs a CUDA GPU (on the CPU only with --device cpu under TRITON_INTERPRET=1)"
        print(f"benchmarks/kernels.py: {message}", file=sys.stderr)
        return 2
    shapes = Shapes(args.tokens, args.context_tokens, args.samples)
    rows = []
    for name in args.dtypes:
        for bench in (bench_self_attention, bench_cross_attention, bench_snake):
            rows += bench(DTYPES[name], device, shapes, args.warmup, args.repeats)
    best = {}
    for row in rows:
        key = (row["kernel"], row["dtype"])
        best[key] = max(best.get(key, 0.0), row["speedup_vs_torch"])
    goals = {"self_attention+rope": 1.0, "snake": 3.0}
    report = {
        **header(device),
        "command": " ".join(["python", "benchmarks/kernels.py", *(sys.argv[1:] if argv is None else argv)]),
        "shapes": {"batch": BATCH, "snake_channels": SNAKE_CHANNELS, **asdict(shapes)},
        "results": rows,
        "goals": [
            {"kernel": k, "dtype": d, "best_speedup": s, "goal": goals[k], "met": s >= goals[k]}
            for (k, d), s in best.items() if k in goals
        ],
    }  # fmt: skip
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
