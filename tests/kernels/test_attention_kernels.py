"""The Triton attention kernels against the models/ maths (SDPA with RoPE applied separately),
run by Triton's interpreter on the CPU, on fresh random inputs."""

import pytest
import torch
from numerics import rel_error

from stable_audio_rt.kernels import ops
from stable_audio_rt.kernels.specs import ROPE_SELF_ATTENTION
from stable_audio_rt.models.attention import rope_tables, sdpa_cross_attention, sdpa_self_attention

# Same inputs, fp32 maths in both: only summation order differs (~1e-7 measured).
FP32_TOL = 1e-5
# fp16 inputs: the kernel rounds RoPE'd q, k and the softmax weights to fp16 before its dot
# products, as flash attention does; the reference keeps them in fp32. ~5e-4 measured.
FP16_TOL = 2e-3
DTYPES = [(torch.float32, FP32_TOL), (torch.float16, FP16_TOL)]
ROPE_BASE = 10000.0
# The interpreter runs tl.dot on bf16's raw bits (error ~1e10) and truncates fp32→bf16 casts,
# so bf16 attention is compiled and checked for PTX only (tests/kernels/test_ptx.py).


def _qkv(batch, heads, seq, head_dim, dtype, generator):
    # The DiT's layout: one projection viewed as (3, B, H, T, Dh), so q, k, v are strided views.
    qkv = torch.randn(batch, seq, 3, heads, head_dim, generator=generator).to(dtype)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize(
    "batch,heads,seq,head_dim,rotary_dim",
    [(1, 1, 1, 64, 32), (2, 3, 7, 64, 32), (1, 2, 65, 64, 32), (2, 2, 130, 64, 32), (1, 2, 33, 32, 16),
     (1, 1, 17, 128, 64), (1, 2, 20, 64, 64)],
)  # fmt: skip
def test_rope_self_attention_matches_sdpa(batch, heads, seq, head_dim, rotary_dim, dtype, tol, generator):
    q, k, v = _qkv(batch, heads, seq, head_dim, dtype, generator)
    cos, sin = rope_tables(seq, rotary_dim, ROPE_BASE)
    out = ops.rope_self_attention(q, k, v, cos, sin)
    reference = sdpa_self_attention(q.float(), k.float(), v.float(), cos, sin)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_error(out.float(), reference) <= tol


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize(
    "batch,heads,kv_heads,q_len,kv_len,head_dim",
    [(1, 24, 12, 5, 130, 64), (2, 4, 2, 65, 130, 64), (2, 4, 4, 33, 1, 64), (1, 4, 1, 1, 64, 64),
     (1, 2, 1, 16, 65, 32)],
)  # fmt: skip
def test_gqa_cross_attention_matches_sdpa(
    batch, heads, kv_heads, q_len, kv_len, head_dim, dtype, tol, generator
):
    q = torch.randn(batch, q_len, heads, head_dim, generator=generator).to(dtype).transpose(1, 2)
    k, v = torch.randn(2, batch, kv_heads, kv_len, head_dim, generator=generator).to(dtype).unbind(0)
    out = ops.gqa_cross_attention(q, k, v)
    reference = sdpa_cross_attention(q.float(), k.float(), v.float())
    assert rel_error(out.float(), reference) <= tol


def test_gqa_head_mapping_is_h_over_group(generator):
    # Only KV head 1 carries signal: query heads 2 and 3 (h // 2 == 1) must see it, 0 and 1 not.
    q = torch.randn(1, 4, 8, 64, generator=generator)
    k = torch.randn(1, 2, 9, 64, generator=generator)
    v = torch.zeros(1, 2, 9, 64)
    v[:, 1] = torch.randn(9, 64, generator=generator)
    out = ops.gqa_cross_attention(q, k, v)
    assert out[:, :2].abs().max() == 0 and out[:, 2:].abs().min(dim=-1).values.gt(0).any()


@pytest.mark.parametrize("tactic", [t.id for t in ROPE_SELF_ATTENTION.tactics])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_overwrites_a_poisoned_output(dtype, tactic, generator):
    q, k, v = _qkv(2, 3, 131, 64, dtype, generator)
    cos, sin = rope_tables(131, 32, ROPE_BASE)
    out = torch.full((2, 131, 3, 64), float("nan"), dtype=dtype).transpose(1, 2)
    ops.launch_rope_self_attention(q, k, v, cos, sin, out, tactic)
    assert torch.isfinite(out).all()
    assert rel_error(out.float(), sdpa_self_attention(q.float(), k.float(), v.float(), cos, sin)) <= FP16_TOL

    kv = torch.randn(2, 2, 3, 131, 64, generator=generator).to(dtype).unbind(0)
    out = torch.full_like(q, float("nan"))
    ops.launch_gqa_cross_attention(q, *kv, out, tactic)
    assert torch.isfinite(out).all()
    assert rel_error(out.float(), sdpa_cross_attention(q.float(), kv[0].float(), kv[1].float())) <= FP16_TOL
