"""The CPU's fp32 attention pair (models.attention.FP32_SDPA) against the SDPA pair it replaces on
the CPU: the same maths in fp32, and for bf16 inputs the exact result rounded once."""

import math

import pytest
import torch
from numerics import rel_error

from stable_audio_rt.models.attention import FP32_SDPA, SDPA, rope_tables

# Stable Audio Open's head geometry: 64-dim heads, RoPE on the first 32 (reference-spec §2.6).
HEAD_DIM, ROTARY_DIM, ROPE_BASE = 64, 32, 10000.0
# fp32 against fp32: the two pairs differ in summation order only (~1e-7 here).
FP32_TOL = 1e-5
# bf16 has 8 significant bits: a correctly rounded value is within 2^-9 of its binade's top.
BF16_HALF_ULP_EXPONENT = -8


def _attention_inputs(heads, kv_heads, dtype, generator):
    """Self-attention q, k, v (2, H, T, Dh) with RoPE tables for T, and cross-attention k, v
    (2, Hkv, S, Dh), of random lengths T and S."""
    length = int(torch.randint(1, 80, (), generator=generator))
    context = int(torch.randint(1, 140, (), generator=generator))

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    q, k, v = (randn(2, heads, length, HEAD_DIM) for _ in range(3))
    context_k, context_v = (randn(2, kv_heads, context, HEAD_DIM) for _ in range(2))
    cos, sin = rope_tables(length, ROTARY_DIM, ROPE_BASE)
    return q, k, v, cos, sin, context_k, context_v


def _one_bf16_rounding(reference: torch.Tensor) -> float:
    """rel_error's bound for `reference` rounded once to bf16: half an ulp of its largest binade."""
    largest = reference.abs().max().item()
    return 2.0 ** (math.floor(math.log2(largest)) + BF16_HALF_ULP_EXPONENT) / largest


@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (6, 3), (6, 2)])
def test_fp32_pair_equals_the_sdpa_pair_in_fp32(heads, kv_heads, generator):
    q, k, v, cos, sin, context_k, context_v = _attention_inputs(heads, kv_heads, torch.float32, generator)
    ours = FP32_SDPA.self_attention(q, k, v, cos, sin)
    assert rel_error(ours, SDPA.self_attention(q, k, v, cos, sin)) <= FP32_TOL
    # Query heads folded onto their KV head: each query row still reads its own head's K and V.
    ours = FP32_SDPA.cross_attention(q, context_k, context_v)
    assert rel_error(ours, SDPA.cross_attention(q, context_k, context_v)) <= FP32_TOL


@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (6, 2)])
def test_fp32_pair_rounds_the_exact_result_once_in_bf16(heads, kv_heads, generator):
    """bf16 in, bf16 out, nothing rounded in between: the rotated q and k stay fp32."""
    q, k, v, cos, sin, context_k, context_v = _attention_inputs(heads, kv_heads, torch.bfloat16, generator)
    exact = SDPA.self_attention(q.double(), k.double(), v.double(), cos, sin)
    ours = FP32_SDPA.self_attention(q, k, v, cos, sin)
    assert ours.dtype == torch.bfloat16
    assert rel_error(ours, exact) <= _one_bf16_rounding(exact) + FP32_TOL
    exact = SDPA.cross_attention(q.double(), context_k.double(), context_v.double())
    ours = FP32_SDPA.cross_attention(q, context_k, context_v)
    assert ours.dtype == torch.bfloat16
    assert rel_error(ours, exact) <= _one_bf16_rounding(exact) + FP32_TOL
