"""The Triton kernels as torch custom ops (torch.library): usable eagerly, under torch.compile
and inside CUDA graphs, and exported to ONNX as plugin nodes.

On CUDA tensors they launch the compiled kernels. On CPU tensors they run only when Triton's
interpreter was switched on (TRITON_INTERPRET=1 before this module is imported): that is how
the tests check them on a machine without a GPU. Inputs are checked before any launch.
"""

from __future__ import annotations

import importlib

import torch
from triton import cdiv

from stable_audio_rt.errors import StableAudioError
from stable_audio_rt.kernels.specs import (
    GQA_CROSS_ATTENTION,
    HEAD_DIMS,
    MAX_GRID_Y,
    NAMESPACE,
    ROPE_SELF_ATTENTION,
    SNAKE,
    TRITON_DTYPES,
    KernelSpec,
    attention_constexprs,
    snake_constexprs,
)

# The tactic the torch ops launch; the TensorRT plugins time every tactic instead.
DEFAULT_TACTIC = 1


class KernelInputError(StableAudioError, ValueError):
    """Tensors a kernel op cannot take; the message names the tensor and the fix."""


def _kernel(spec: KernelSpec):
    return getattr(importlib.import_module(spec.module), spec.function)


def kernels_runnable_on(device: torch.device) -> bool:
    """True on CUDA, and on CPU only when the kernels were imported under the interpreter."""
    if device.type == "cuda":
        return True
    from triton.runtime.interpreter import InterpretedFunction

    return device.type == "cpu" and isinstance(_kernel(SNAKE), InterpretedFunction)


def _check_device(op: str, tensors: dict[str, torch.Tensor]) -> None:
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        listing = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise KernelInputError(f"{op}: all tensors must be on one device, got {listing}")
    device = devices.pop()
    if not kernels_runnable_on(device):
        raise KernelInputError(
            f"{op}: tensors on {device} cannot run the Triton kernels. They run on CUDA GPUs; on the "
            "CPU only under Triton's interpreter (set TRITON_INTERPRET=1 before importing "
            "stable_audio_rt). On the CPU use the default torch attention and Snake (kernels='torch')."
        )


def _check_activation(op: str, name: str, t: torch.Tensor, ndim: int, dtype: torch.dtype | None) -> None:
    if t.dim() != ndim:
        raise KernelInputError(f"{op}: {name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.dtype not in TRITON_DTYPES:
        raise KernelInputError(
            f"{op}: {name} is {t.dtype}; the kernels take {', '.join(map(str, TRITON_DTYPES))}"
        )
    if dtype is not None and t.dtype != dtype:
        raise KernelInputError(f"{op}: {name} is {t.dtype} but q is {dtype}; cast them to one dtype")
    if t.stride(-1) != 1:
        raise KernelInputError(
            f"{op}: {name} is not contiguous along its last dim (strides {t.stride()}); call .contiguous()"
        )


def _check_fp32_table(op: str, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if t.dtype != torch.float32 or tuple(t.shape) != shape or not t.is_contiguous():
        raise KernelInputError(
            f"{op}: {name} must be a contiguous float32 tensor of shape {shape}, "
            f"got {t.dtype} {tuple(t.shape)} (contiguous={t.is_contiguous()})"
        )


def _check_attention(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_activation(op, name, t, 4, q.dtype)
    batch, heads, _, head_dim = q.shape
    if head_dim not in HEAD_DIMS:
        raise KernelInputError(f"{op}: head dim {head_dim} is not supported; the kernels take {HEAD_DIMS}")
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise KernelInputError(
            f"{op}: k {tuple(k.shape)} and v {tuple(v.shape)} must both be (B, Hkv, S, Dh) "
            f"with q's B={batch} and Dh={head_dim}"
        )
    if k.shape[1] == 0 or heads % k.shape[1] or k.shape[2] == 0:
        raise KernelInputError(
            f"{op}: {heads} query heads cannot share {k.shape[1]} KV heads over {k.shape[2]} keys; "
            "the KV head count must divide the query head count and there must be at least one key"
        )
    if batch * heads > MAX_GRID_Y:
        raise KernelInputError(f"{op}: B·H = {batch * heads} exceeds the grid limit {MAX_GRID_Y}")


def _empty_attention_out(q: torch.Tensor) -> torch.Tensor:
    # (B, T, H, Dh) memory seen as (B, H, T, Dh): the caller's merge of heads is then free.
    b, h, t, d = q.shape
    return q.new_empty((b, t, h, d)).transpose(1, 2)


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()[:3]]


@torch.library.custom_op(f"{NAMESPACE}::rope_self_attention", mutates_args=())
def rope_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """softmax(rope(q) rope(k)ᵀ/√Dh) v for q, k, v of shape (B, H, T, Dh); cos and sin are the
    fp32 (T, r/2) tables of `models.attention.rope_tables` (half-split RoPE on the first r dims)."""
    op = "rope_self_attention"
    _check_attention(op, q, k, v)
    if k.shape != q.shape:
        raise KernelInputError(f"{op}: q {tuple(q.shape)} and k, v {tuple(k.shape)} must have one shape")
    seq_len, head_dim = q.shape[2], q.shape[3]
    half = cos.shape[-1] if cos.dim() == 2 else 0
    if not 0 < 2 * half <= head_dim:
        raise KernelInputError(f"{op}: cos {tuple(cos.shape)} must be (T, r/2) with 0 < r <= Dh={head_dim}")
    _check_fp32_table(op, "cos", cos, (seq_len, half))
    _check_fp32_table(op, "sin", sin, (seq_len, half))
    _check_device(op, {"q": q, "k": k, "v": v, "cos": cos, "sin": sin})
    out = _empty_attention_out(q)
    launch_rope_self_attention(q, k, v, cos, sin, out)
    return out


def launch_rope_self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    tactic_id: int = DEFAULT_TACTIC,
) -> None:
    """Launch on checked inputs, writing every element of `out` (B, H, T, Dh)."""
    seq_len, head_dim, half = q.shape[2], q.shape[3], cos.shape[1]
    tactic = ROPE_SELF_ATTENTION.tactic(tactic_id)
    constexprs = attention_constexprs(head_dim, half, tactic)
    grid = (cdiv(seq_len, constexprs["BLOCK_M"]), q.shape[0] * q.shape[1])
    _kernel(ROPE_SELF_ATTENTION)[grid](
        q, k, v, cos, sin, q.shape[1], seq_len, *_strides(q, k, v, out), out,
        **constexprs, num_warps=tactic.num_warps, num_stages=tactic.num_stages,
    )  # fmt: skip


@rope_self_attention.register_fake
def _(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    return _empty_attention_out(q)


@torch.library.custom_op(f"{NAMESPACE}::gqa_cross_attention", mutates_args=())
def gqa_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√Dh) v, q (B, H, T, Dh), k and v (B, Hkv, S, Dh), head h → KV head h // (H/Hkv)."""
    op = "gqa_cross_attention"
    _check_attention(op, q, k, v)
    _check_device(op, {"q": q, "k": k, "v": v})
    out = _empty_attention_out(q)
    launch_gqa_cross_attention(q, k, v, out)
    return out


def launch_gqa_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, tactic_id: int = DEFAULT_TACTIC
) -> None:
    """Launch on checked inputs, writing every element of `out` (B, H, T, Dh)."""
    batch, heads, q_len, head_dim = q.shape
    tactic = GQA_CROSS_ATTENTION.tactic(tactic_id)
    constexprs = attention_constexprs(head_dim, None, tactic)
    grid = (cdiv(q_len, constexprs["BLOCK_M"]), batch * heads)
    _kernel(GQA_CROSS_ATTENTION)[grid](
        q, k, v, heads, k.shape[1], q_len, k.shape[2], *_strides(q, k, v, out), out,
        **constexprs, num_warps=tactic.num_warps, num_stages=tactic.num_stages,
    )  # fmt: skip


@gqa_cross_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _empty_attention_out(q)


@torch.library.custom_op(f"{NAMESPACE}::snake", mutates_args=())
def snake(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
    """x + inv_beta·sin²(alpha·x) per channel of a contiguous (B, C, T) x; alpha = e^α and
    inv_beta = 1/(e^β + 1e-9) as fp32 (C,) vectors; maths in fp32, output in x's dtype."""
    op = "snake"
    _check_activation(op, "x", x, 3, None)
    if not x.is_contiguous():
        raise KernelInputError(f"{op}: x (strides {x.stride()}) must be contiguous; call .contiguous()")
    channels, length = x.shape[1], x.shape[2]
    _check_fp32_table(op, "alpha", alpha, (channels,))
    _check_fp32_table(op, "inv_beta", inv_beta, (channels,))
    _check_device(op, {"x": x, "alpha": alpha, "inv_beta": inv_beta})
    if cdiv(length, snake_constexprs(SNAKE.tactic(DEFAULT_TACTIC))["BLOCK"]) > MAX_GRID_Y:
        raise KernelInputError(f"{op}: {length} samples per row exceed the grid limit; split the signal")
    y = torch.empty_like(x)
    launch_snake(x, alpha, inv_beta, y)
    return y


def launch_snake(
    x: torch.Tensor,
    alpha: torch.Tensor,
    inv_beta: torch.Tensor,
    y: torch.Tensor,
    tactic_id: int = DEFAULT_TACTIC,
) -> None:
    """Launch on checked inputs, writing every element of `y` (B, C, T)."""
    channels, length = x.shape[1], x.shape[2]
    tactic = SNAKE.tactic(tactic_id)
    constexprs = snake_constexprs(tactic)
    rows = x.shape[0] * channels
    if y.numel():
        _kernel(SNAKE)[(rows, cdiv(length, constexprs["BLOCK"]))](
            x, alpha, inv_beta, rows, channels, length, y,
            **constexprs, num_warps=tactic.num_warps, num_stages=tactic.num_stages,
        )  # fmt: skip


@snake.register_fake
def _(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


# Plain functions over the registered ops for the models to hold: a module holding the custom
# op objects themselves could not be deep-copied (as the ONNX export does).
def triton_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    return torch.ops.stable_audio_rt.rope_self_attention(q, k, v, cos, sin)


def triton_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.ops.stable_audio_rt.gqa_cross_attention(q, k, v)


def triton_snake(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
    return torch.ops.stable_audio_rt.snake(x, alpha, inv_beta)
