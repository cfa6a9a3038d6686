"""Triton attention kernels: self-attention with the partial half-split RoPE fused in, and
GQA cross-attention (reference-spec §2.6, §2.7).

One program computes BLOCK_M query rows of one (batch, head) with a flash-style online softmax
in fp32. Parameters come in TensorRT's AOT plugin order: input pointers, integer extras,
output pointer, then constexprs. Float constants (the softmax scale) are constexprs so that
the extras stay integers. Element strides along the head dim must be 1.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b):
    # fp32 inputs: IEEE products, not TF32, so fp32 matches the fp32 reference.
    if a.dtype == tl.float32:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _rope(x, base, rows, row_ok, stride_t, cos_ptr, sin_ptr, dims, ROPE_HALF: tl.constexpr):
    """Half-split RoPE on the first 2·ROPE_HALF dims of a (rows, HEAD_DIM) tile, in fp32.

    Dim j < ROPE_HALF pairs with j + ROPE_HALF: (x_j cos − x_{j+h} sin, x_{j+h} cos + x_j sin).
    The partner tile is a second load of the same rows with the two halves swapped.
    """
    rotary = dims < 2 * ROPE_HALF
    partner = tl.where(dims < ROPE_HALF, dims + ROPE_HALF, dims - ROPE_HALF)
    mask = row_ok[:, None] & rotary[None, :]
    x_partner = tl.load(base + rows[:, None] * stride_t + partner[None, :], mask=mask, other=0.0)
    table = rows[:, None] * ROPE_HALF + (dims % ROPE_HALF)[None, :]
    cos = tl.load(cos_ptr + table, mask=mask, other=1.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    sign = tl.where(dims < ROPE_HALF, -1.0, 1.0)
    rotated = x.to(tl.float32) * cos + sign[None, :] * x_partner.to(tl.float32) * sin
    return rotated.to(x.dtype)


@triton.jit
def _attention_tile(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    num_heads,
    num_kv_heads,
    q_len,
    kv_len,
    q_stride_b,
    q_stride_h,
    q_stride_t,
    k_stride_b,
    k_stride_h,
    k_stride_t,
    v_stride_b,
    v_stride_h,
    v_stride_t,
    o_stride_b,
    o_stride_h,
    o_stride_t,
    HEAD_DIM: tl.constexpr,
    ROPE_HALF: tl.constexpr,
    QK_SCALE_LOG2: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    batch = (tl.program_id(1) // num_heads).to(tl.int64)
    head = tl.program_id(1) % num_heads
    kv_head = head // (num_heads // num_kv_heads)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len
    dims = tl.arange(0, HEAD_DIM)

    q_base = q_ptr + batch * q_stride_b + head * q_stride_h
    k_base = k_ptr + batch * k_stride_b + kv_head * k_stride_h
    v_base = v_ptr + batch * v_stride_b + kv_head * v_stride_h
    q = tl.load(q_base + rows[:, None] * q_stride_t + dims[None, :], mask=row_ok[:, None], other=0.0)
    if ROPE_HALF > 0:
        q = _rope(q, q_base, rows, row_ok, q_stride_t, cos_ptr, sin_ptr, dims, ROPE_HALF)

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(0, kv_len, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < kv_len
        k = tl.load(k_base + cols[:, None] * k_stride_t + dims[None, :], mask=col_ok[:, None], other=0.0)
        if ROPE_HALF > 0:
            k = _rope(k, k_base, cols, col_ok, k_stride_t, cos_ptr, sin_ptr, dims, ROPE_HALF)
        v = tl.load(v_base + cols[:, None] * v_stride_t + dims[None, :], mask=col_ok[:, None], other=0.0)
        scores = _dot(q, tl.trans(k)) * QK_SCALE_LOG2
        scores = tl.where(col_ok[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + _dot(probs.to(v.dtype), v)
        row_max = new_max

    out = acc / row_sum[:, None]
    o_base = out_ptr + batch * o_stride_b + head * o_stride_h
    tl.store(
        o_base + rows[:, None] * o_stride_t + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None],
    )


@triton.jit
def rope_self_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    num_heads,
    seq_len,
    q_stride_b,
    q_stride_h,
    q_stride_t,
    k_stride_b,
    k_stride_h,
    k_stride_t,
    v_stride_b,
    v_stride_h,
    v_stride_t,
    o_stride_b,
    o_stride_h,
    o_stride_t,
    out_ptr,
    HEAD_DIM: tl.constexpr,
    ROPE_HALF: tl.constexpr,
    QK_SCALE_LOG2: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """softmax(rope(q) rope(k)ᵀ / √Dh) v; grid (cdiv(seq_len, BLOCK_M), B·H)."""
    _attention_tile(
        q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, out_ptr,
        num_heads, num_heads, seq_len, seq_len,
        q_stride_b, q_stride_h, q_stride_t,
        k_stride_b, k_stride_h, k_stride_t,
        v_stride_b, v_stride_h, v_stride_t,
        o_stride_b, o_stride_h, o_stride_t,
        HEAD_DIM, ROPE_HALF, QK_SCALE_LOG2, BLOCK_M, BLOCK_N,
    )  # fmt: skip


@triton.jit
def gqa_cross_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    num_heads,
    num_kv_heads,
    q_len,
    kv_len,
    q_stride_b,
    q_stride_h,
    q_stride_t,
    k_stride_b,
    k_stride_h,
    k_stride_t,
    v_stride_b,
    v_stride_h,
    v_stride_t,
    o_stride_b,
    o_stride_h,
    o_stride_t,
    out_ptr,
    HEAD_DIM: tl.constexpr,
    QK_SCALE_LOG2: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """softmax(q kᵀ / √Dh) v, query head h reading KV head h // (H / Hkv); no mask (§2.7)."""
    _attention_tile(
        q_ptr, k_ptr, v_ptr, q_ptr, q_ptr, out_ptr,
        num_heads, num_kv_heads, q_len, kv_len,
        q_stride_b, q_stride_h, q_stride_t,
        k_stride_b, k_stride_h, k_stride_t,
        v_stride_b, v_stride_h, v_stride_t,
        o_stride_b, o_stride_h, o_stride_t,
        HEAD_DIM, 0, QK_SCALE_LOG2, BLOCK_M, BLOCK_N,
    )  # fmt: skip
