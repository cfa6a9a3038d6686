"""The Triton kernels compiled for this GPU against the models/ maths on the same device, in
fp32, fp16 and bf16 (the CPU tests run them interpreted, and bf16 attention not at all)."""

import pytest
import torch
from numerics import rel_error, snake_bf16_misses

from stable_audio_rt.kernels import ops
from stable_audio_rt.models.attention import rope_tables, sdpa_cross_attention, sdpa_self_attention
from stable_audio_rt.models.config import STABLE_AUDIO_OPEN_1_0
from stable_audio_rt.models.vae import SNAKE_EPS, snake_eager

DEVICE = torch.device("cuda")
DIT = STABLE_AUDIO_OPEN_1_0.dit
# As in tests/kernels: fp32 differs by summation order only, fp16 by the kernel's roundings of
# q, k and the softmax weights; bf16 keeps 3 fewer mantissa bits than fp16, so 8× its bound.
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_self_attention_at_the_dits_shape(dtype, generator):
    tokens = 257
    qkv = torch.randn(2, tokens, 3, DIT.num_heads, DIT.head_dim, generator=generator).to(DEVICE, dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    cos, sin = rope_tables(tokens, DIT.rotary_dim, DIT.rope_base, DEVICE)
    out = ops.rope_self_attention(q, k, v, cos, sin)
    reference = sdpa_self_attention(q.float(), k.float(), v.float(), cos, sin)
    assert out.dtype == dtype and rel_error(out.float(), reference) <= TOLERANCES[dtype]


@pytest.mark.parametrize("dtype", list(TOLERANCES))
def test_cross_attention_at_the_dits_shape(dtype, generator):
    context = STABLE_AUDIO_OPEN_1_0.conditioning.context_tokens
    q = torch.randn(2, 257, DIT.num_heads, DIT.head_dim, generator=generator).to(DEVICE, dtype)
    q = q.transpose(1, 2)
    kv = torch.randn(2, 2, DIT.num_kv_heads, context, DIT.head_dim, generator=generator).to(DEVICE, dtype)
    k, v = kv.unbind(0)
    out = ops.gqa_cross_attention(q, k, v)
    reference = sdpa_cross_attention(q.float(), k.float(), v.float())
    assert rel_error(out.float(), reference) <= TOLERANCES[dtype]


def _snake_case(dtype, generator):
    x = (3 * torch.randn(2, 8, 40_000, generator=generator)).to(DEVICE, dtype)
    alpha = (0.5 * torch.randn(8, generator=generator)).exp().to(DEVICE)
    inv_beta = 1.0 / ((0.5 * torch.randn(8, generator=generator)).exp() + SNAKE_EPS).to(DEVICE)
    return x, alpha, inv_beta


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_snake(dtype, generator):
    x, alpha, inv_beta = _snake_case(dtype, generator)
    y = ops.snake(x, alpha, inv_beta)
    assert y.dtype == dtype
    assert rel_error(y.float(), snake_eager(x.float(), alpha, inv_beta)) <= TOLERANCES[dtype]


def test_snake_bf16_is_the_gpus_rounding_of_the_fp32_maths(generator):
    x, alpha, inv_beta = _snake_case(torch.bfloat16, generator)
    misses = snake_bf16_misses(ops.snake(x, alpha, inv_beta), x, alpha, inv_beta)
    assert not misses.any(), f"{int(misses.sum())} elements"
