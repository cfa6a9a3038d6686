"""The CPU's fp32 attention pair (models.attention.FP32_SDPA) against the SDPA pair it replaces on
the CPU: the same maths in fp32, and for bf16 inputs the exact result rounded once."""

import math

import pytest
import torch
from numerics import rel_error

from stable_audio_rt.models.attention import FP32_SDPA, SDPA, merge_zero_tokens, rope_tables

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


@pytest.mark.parametrize("multiple", [1, 8, 16])
def test_merge_zero_tokens_keeps_the_rest_and_weighs_the_zero_tokens_as_all(multiple, generator):
    """Positions zero in every row go (in any order: cross-attention has no position term); the
    fewest zero tokens that make the length a multiple of `multiple` take their place, their
    weights e^bias summing to the count; a position zero in one row only stays."""
    rows, length, width = 2, int(torch.randint(40, 140, (), generator=generator)), 8
    context = torch.randn(rows, length, width, generator=generator)
    shared = torch.rand(length, generator=generator) < 0.7
    shared[: multiple + 1] = True  # enough to merge
    context[:, shared] = 0
    context[0, ~shared & (torch.rand(length, generator=generator) < 0.5)] = 0  # one row's only
    merged, key_bias = merge_zero_tokens(context, multiple)
    kept = int((~shared).sum())
    pads = merged.shape[1] - kept
    assert merged.shape[1] % multiple == 0 and 1 <= pads <= multiple
    assert torch.equal(merged, torch.cat((context[:, ~shared], torch.zeros(rows, pads, width)), dim=1))
    assert key_bias.dtype == torch.float32 and key_bias.shape == (1, 1, 1, merged.shape[1])
    assert torch.equal(key_bias[..., :kept], torch.zeros(1, 1, 1, kept))
    weights = key_bias[0, 0, 0, kept:].double().exp()
    assert torch.allclose(weights, weights[0].expand(pads)) and math.isclose(
        weights.sum().item(), int(shared.sum()), rel_tol=1e-6
    )


def test_merge_zero_tokens_leaves_a_context_it_would_not_shorten(generator):
    context = torch.randn(2, 9, 4, generator=generator)
    context[:, 3] = 0
    merged, key_bias = merge_zero_tokens(context)  # one zero position: nothing to merge
    assert merged is context and key_bias is None
    context[:, 4:8] = 0
    merged, key_bias = merge_zero_tokens(context, 16)  # 4 of 9 merged would pad to 16
    assert merged is context and key_bias is None


@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (6, 2)])
def test_one_key_with_the_bias_attends_as_its_copies(heads, kv_heads, generator):
    """m equal keys and values (what m zero context tokens project to) against one of them with
    logit bias log m: the same output from both pairs in fp32, and the fp32 pair's bf16 output the
    exact result rounded once."""
    q, _, _, _, _, context_k, context_v = _attention_inputs(heads, kv_heads, torch.float32, generator)
    copies = int(torch.randint(2, 120, (), generator=generator))
    pad_k, pad_v = torch.randn(2, 2, kv_heads, 1, HEAD_DIM, generator=generator)
    full_k = torch.cat((context_k, pad_k.expand(-1, -1, copies, -1)), dim=2)
    full_v = torch.cat((context_v, pad_v.expand(-1, -1, copies, -1)), dim=2)
    one_k, one_v = torch.cat((context_k, pad_k), dim=2), torch.cat((context_v, pad_v), dim=2)
    key_bias = torch.zeros(1, 1, 1, one_k.shape[2])
    key_bias[..., -1] = math.log(copies)
    for pair in (SDPA, FP32_SDPA):
        expected = SDPA.cross_attention(q, full_k, full_v)
        assert rel_error(pair.cross_attention(q, one_k, one_v, key_bias=key_bias), expected) <= FP32_TOL
    exact = SDPA.cross_attention(
        q.bfloat16().double(), full_k.bfloat16().double(), full_v.bfloat16().double()
    )
    ours = FP32_SDPA.cross_attention(q.bfloat16(), one_k.bfloat16(), one_v.bfloat16(), key_bias=key_bias)
    assert ours.dtype == torch.bfloat16
    assert rel_error(ours, exact) <= _one_bf16_rounding(exact) + FP32_TOL
