"""Attention maths of the DiT: partial half-split RoPE and the swappable attention functions.

Layouts: q is (B, H, T, Dh); self-attention k, v are (B, H, T, Dh); cross-attention
k, v are (B, Hkv, S, Dh) with query head h reading KV head h // (H / Hkv).
The Triton kernels replace these functions with fused ones (`AttentionFunctions`); a pair that
takes no key bias says so (`takes_key_bias`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def rope_tables(
    num_positions: int, rotary_dim: int, base: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (T, rotary_dim // 2), in fp32 (reference-spec §2.6).

    inv_freq_j = base^(-2j / rotary_dim); position 0 is the prepended global token.
    """
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim)
    positions = torch.arange(num_positions, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)
    return angles.cos(), angles.sin()


def partial_rope_fp32(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2·cos.shape[-1] dims of x (..., T, Dh) half-split; the rest pass through.

    Half-split: dim j pairs with dim j + half (not interleaved pairs). Computed and returned in fp32.
    """
    half = cos.shape[-1]
    out = x.to(torch.float32, copy=True)  # the rest passes through; the rotated dims are rewritten
    x1, x2 = out[..., :half], out[..., half : 2 * half]
    # In place on the copy, not a concatenation of new pieces: half the time at the DiT's sizes.
    x2_sin = x2 * sin
    x2.mul_(cos).addcmul_(x1, sin)  # x2 cos + x1 sin
    x1.mul_(cos).sub_(x2_sin)  # x1 cos - x2 sin
    return out


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`partial_rope_fp32`, back in x's dtype."""
    return partial_rope_fp32(x, cos, sin).to(x.dtype)


SelfAttentionFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


# (q, k, v) → out; those that take it also `key_bias=` (`AttentionFunctions.takes_key_bias`).
CrossAttentionFn = Callable[..., torch.Tensor]


def merge_zero_tokens(context: torch.Tensor, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The context (B, S, D) with its positions that are zero in every row (T5's pads, and the
    unconditional half's whole prompt) merged into zero tokens at the end, as few as make the
    length S' a multiple of `multiple` (one at least), and the logit bias (1, 1, 1, S') that weighs
    them as all of them: log(count / their number) on each, 0 elsewhere. None: nothing merged.

    Exact: cross-attention has no position term, so equal context tokens give every query equal
    keys and values (whatever the projections), and n equal keys take n times one key's softmax
    weight. It shortens each step's cross-attention from S to S' keys (reference-spec §2.7).
    """
    zero = (context == 0).all(dim=-1).all(dim=0)
    count = int(zero.sum())
    kept = context.shape[1] - count
    length = math.ceil((kept + 1) / multiple) * multiple
    if count < 2 or length >= context.shape[1]:
        return context, None
    pads = length - kept
    merged = torch.cat(
        (context[:, ~zero], context.new_zeros(context.shape[0], pads, context.shape[2])), dim=1
    )
    key_bias = torch.zeros(1, 1, 1, length, device=context.device, dtype=torch.float32)
    key_bias[..., kept:] = math.log(count / pads)
    return merged, key_bias


def sdpa_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Self-attention with partial RoPE on q and k, no mask, scale 1/sqrt(Dh)."""
    return F.scaled_dot_product_attention(apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin), v)


def sdpa_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """GQA cross-attention, no mask (padded context tokens take part with logit 0, §2.7; or
    merged into a few zero tokens weighed by `key_bias`, `merge_zero_tokens`)."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)


def fp32_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """`sdpa_self_attention` with its products and softmax in fp32, q and k used as RoPE leaves
    them (fp32, not rounded back first); the output in q's dtype."""
    out = F.scaled_dot_product_attention(
        partial_rope_fp32(q, cos, sin), partial_rope_fp32(k, cos, sin), v.float()
    )
    return out.to(q.dtype)


def fp32_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`sdpa_cross_attention` in fp32, each KV head's query heads folded into its query rows
    (B, Hkv, H/Hkv · T, Dh): each row's maths as there, without repeating K and V; the output in
    q's dtype."""
    batch, heads, length, head_dim = q.shape
    folded = q.float().reshape(batch, k.shape[1], -1, head_dim)
    out = F.scaled_dot_product_attention(folded, k.float(), v.float(), attn_mask=key_bias)
    return out.view(batch, heads, length, head_dim).to(q.dtype)


@dataclass(frozen=True)
class AttentionFunctions:
    """The pair of attention functions a DiT calls; swap both to change the implementation."""

    self_attention: SelfAttentionFn = sdpa_self_attention
    cross_attention: CrossAttentionFn = sdpa_cross_attention
    # Whether cross_attention takes `key_bias`, a float32 (1, 1, 1, S) added to every query's
    # logits: the weight of merged context pads (`merge_zero_tokens`).
    takes_key_bias: bool = True


SDPA = AttentionFunctions()
# The CPU's pair where it runs faster (kernels/cpu_attention.py chooses; a bf16 DiT step 2-3 %
# faster on a 2-core AVX512-BF16 EPYC), the rotated q and k not rounded to bf16 on the way.
# precision.FP32_ISLANDS names it.
FP32_SDPA = AttentionFunctions(fp32_self_attention, fp32_cross_attention)
