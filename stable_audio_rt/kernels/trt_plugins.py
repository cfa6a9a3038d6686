"""TensorRT quickly deployable plugins (QDP, `tensorrt.plugin`) for the Triton kernels.

Each plugin has a shape/type description, an autotune set (dtypes and our tactics) and an
ahead-of-time implementation: at engine-build time `aot_impl` compiles the Triton kernel to PTX
for the build GPU and hands TensorRT the PTX, the launch grid and the kernel's integer extras
as symbolic expressions of the input shapes, so the engine runs with no Python. QDP rules the
kernels follow: parameters in the order inputs → integer extras → outputs, float constants baked
in as constexprs, and no Triton scratch buffers (checked by `ptx.compile_kernel`).

Plugin tensors are linear (contiguous), so the strides passed to the kernels follow from the
shapes. Names match the ONNX nodes of `onnx_plugins`: "stable_audio_rt::<kernel>".

Docs followed (TensorRT 10.x/11.x Python API, tensorrt.plugin): `register` (type hints on every
input and the return are required), `autotune` (hints optional) and `aot_impl` (its return hint
is required by TensorRT's own validation, plugin/_validate.py, though the docs say optional), TensorDesc,
ShapeExpr (`is_constant`, `constant_value()`), `cdiv`, KernelLaunchParams, SymInt32, SymIntExprs.
No `impl` (Python run-time) is defined: only the AOT path, so engines never call back into Python.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the register() hints as objects.
import functools
from types import ModuleType

import torch

from stable_audio_rt.errors import StableAudioError
from stable_audio_rt.kernels.ptx import compile_kernel
from stable_audio_rt.kernels.specs import (
    GQA_CROSS_ATTENTION,
    NAMESPACE,
    ROPE_SELF_ATTENTION,
    SNAKE,
    KernelSpec,
    attention_constexprs,
    snake_constexprs,
)
from stable_audio_rt.trt_import import import_tensorrt_plugin

TYPE_COMBINATION = "FP32|FP16|BF16"


def _dtype(trt: ModuleType, trt_dtype) -> torch.dtype:
    mapping = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    if trt_dtype not in mapping:
        raise StableAudioError(f"the kernel plugins take fp32, fp16 or bf16 tensors, not {trt_dtype}")
    return mapping[trt_dtype]


def _constant(expr, what: str) -> int:
    if not expr.is_constant:
        raise StableAudioError(
            f"{what} must be fixed when the engine is built (it sets the kernel's constexprs)"
        )
    return int(expr.constant_value())


def _contiguous_strides(shape) -> list:
    """(batch, head, token) element strides of a linear (B, H, T, Dh) tensor, as expressions."""
    _, heads, tokens, dims = shape
    return [heads * tokens * dims, tokens * dims, dims]


def _aot_result(trtp: ModuleType, spec: KernelSpec, dtype, constexprs, tactic_id: int, grid, extras):
    tactic = spec.tactic(tactic_id)
    kernel = compile_kernel(spec, dtype, constexprs, tactic)  # for the build machine's GPU
    launch = trtp.KernelLaunchParams()
    launch.grid_x, launch.grid_y = grid
    launch.block_x = kernel.num_warps * 32
    launch.shared_mem = kernel.shared_bytes
    symbolic = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in extras])
    return kernel.name.encode(), kernel.ptx.encode(), launch, symbolic


def _autotune(trtp: ModuleType, spec: KernelSpec, activations: list[int], tables: list[int]):
    combination = trtp.AutoTuneCombination()
    combination.pos(activations, TYPE_COMBINATION)
    if tables:
        combination.pos(tables, "FP32")
    combination.tactics([t.id for t in spec.tactics])
    return [combination]


@functools.cache
def register_plugins() -> tuple[str, ...]:
    """Register the plugins with tensorrt.plugin once per process; returns their ids."""
    trt, trtp = import_tensorrt_plugin()
    # aot_impl's return hint, which TensorRT checks when the decorator runs.
    aot_result = tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]
    rope_id = f"{NAMESPACE}::{ROPE_SELF_ATTENTION.name}"
    cross_id = f"{NAMESPACE}::{GQA_CROSS_ATTENTION.name}"
    snake_id = f"{NAMESPACE}::{SNAKE.name}"

    @trtp.register(rope_id)
    def rope_desc(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, cos: trtp.TensorDesc, sin: trtp.TensorDesc
    ) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(rope_id)
    def rope_autotune(q, k, v, cos, sin, outputs):
        return _autotune(trtp, ROPE_SELF_ATTENTION, [0, 1, 2, 5], [3, 4])

    @trtp.aot_impl(rope_id)
    def rope_aot(q, k, v, cos, sin, outputs, tactic) -> aot_result:
        batch, heads, tokens, _ = q.shape_expr
        head_dim = _constant(q.shape_expr[3], "the head dim")
        half = _constant(cos.shape_expr[1], "the RoPE width")
        constexprs = attention_constexprs(head_dim, half, ROPE_SELF_ATTENTION.tactic(tactic))
        grid = (trtp.cdiv(tokens, constexprs["BLOCK_M"]), batch * heads)
        strides = _contiguous_strides(q.shape_expr) * 3 + _contiguous_strides(outputs[0].shape_expr)
        extras = [heads, tokens, *strides]
        return _aot_result(trtp, ROPE_SELF_ATTENTION, _dtype(trt, q.dtype), constexprs, tactic, grid, extras)

    @trtp.register(cross_id)
    def cross_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(cross_id)
    def cross_autotune(q, k, v, outputs):
        return _autotune(trtp, GQA_CROSS_ATTENTION, [0, 1, 2, 3], [])

    @trtp.aot_impl(cross_id)
    def cross_aot(q, k, v, outputs, tactic) -> aot_result:
        batch, heads, q_len, _ = q.shape_expr
        kv_heads, kv_len = k.shape_expr[1], k.shape_expr[2]
        head_dim = _constant(q.shape_expr[3], "the head dim")
        constexprs = attention_constexprs(head_dim, None, GQA_CROSS_ATTENTION.tactic(tactic))
        grid = (trtp.cdiv(q_len, constexprs["BLOCK_M"]), batch * heads)
        strides = (
            _contiguous_strides(q.shape_expr)
            + _contiguous_strides(k.shape_expr) * 2
            + _contiguous_strides(outputs[0].shape_expr)
        )
        extras = [heads, kv_heads, q_len, kv_len, *strides]
        return _aot_result(trtp, GQA_CROSS_ATTENTION, _dtype(trt, q.dtype), constexprs, tactic, grid, extras)

    @trtp.register(snake_id)
    def snake_desc(x: trtp.TensorDesc, alpha: trtp.TensorDesc, inv_beta: trtp.TensorDesc) -> trtp.TensorDesc:
        return x.like()

    @trtp.autotune(snake_id)
    def snake_autotune(x, alpha, inv_beta, outputs):
        return _autotune(trtp, SNAKE, [0, 3], [1, 2])

    @trtp.aot_impl(snake_id)
    def snake_aot(x, alpha, inv_beta, outputs, tactic) -> aot_result:
        batch, channels, length = x.shape_expr
        constexprs = snake_constexprs(SNAKE.tactic(tactic))
        rows = batch * channels
        grid = (rows, trtp.cdiv(length, constexprs["BLOCK"]))
        return _aot_result(
            trtp, SNAKE, _dtype(trt, x.dtype), constexprs, tactic, grid, [rows, channels, length]
        )

    return rope_id, cross_id, snake_id
