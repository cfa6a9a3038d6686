"""What each Triton kernel takes, in one place: parameter order, dtypes, tactics, launch grid.

The torch ops, the PTX compiler and the TensorRT plugins all read these specs, so the argument
order the kernel was written with (inputs → integer extras → outputs, as TensorRT's AOT plugins
require) is stated once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from stable_audio_rt.precision import NAMES

# The namespace of our torch ops, ONNX plugin domain and TensorRT plugins.
NAMESPACE = "stable_audio_rt"
# Head dims the attention kernels are built for: powers of two (tl.arange), 64 in SAO (§2).
HEAD_DIMS = (32, 64, 128)
# Triton's name for each activation dtype the kernels take: our precision names.
TRITON_DTYPES = NAMES
# Opt-in shared memory per block (bytes) of the architectures we compile the kernels for (CUDA C
# Programming Guide, "Compute Capabilities" table).
SHARED_MEMORY_LIMITS = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# CUDA grids allow at most this many programs along y (the attention's B·H, Snake's blocks).
MAX_GRID_Y = 65535


@dataclass(frozen=True)
class Tactic:
    """One compiled variant: block sizes (constexprs), warps and pipeline stages."""

    id: int
    blocks: dict[str, int]
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class KernelSpec:
    """A kernel's parameters in order, which inputs are always fp32, and its tactics."""

    name: str
    module: str
    function: str
    inputs: tuple[str, ...]
    extras: tuple[str, ...]
    outputs: tuple[str, ...]
    float32_inputs: tuple[str, ...] = ()
    tactics: tuple[Tactic, ...] = field(default_factory=tuple)

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.inputs + self.extras + self.outputs

    def tactic(self, tactic_id: int) -> Tactic:
        for tactic in self.tactics:
            if tactic.id == tactic_id:
                return tactic
        raise ValueError(f"{self.name} has no tactic {tactic_id}; it has {[t.id for t in self.tactics]}")

    def signature(self, dtype: torch.dtype, constexprs: dict[str, int | float]) -> dict[str, str]:
        """Triton signature for activations of `dtype`: pointer types, i32 extras, constexprs."""
        act = TRITON_DTYPES[dtype]
        sig = {name: "*fp32" if name in self.float32_inputs else f"*{act}" for name in self.inputs}
        sig |= {name: "i32" for name in self.extras}
        sig |= {name: f"*{act}" for name in self.outputs}
        sig |= {name: "constexpr" for name in constexprs}
        return sig


_ATTENTION_STRIDES = tuple(f"{t}_stride_{d}" for t in "qkvo" for d in "bht")
# One stage each: with two, fp32 tiles need 114-147 KB of shared memory, over sm_86/sm_89's 99 KB.
_ATTENTION_TACTICS = (
    Tactic(1, {"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1),
    Tactic(2, {"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=1),
)

ROPE_SELF_ATTENTION = KernelSpec(
    name="rope_self_attention",
    module="stable_audio_rt.kernels.attention_triton",
    function="rope_self_attention_kernel",
    inputs=("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr"),
    extras=("num_heads", "seq_len", *_ATTENTION_STRIDES),
    outputs=("out_ptr",),
    float32_inputs=("cos_ptr", "sin_ptr"),
    tactics=_ATTENTION_TACTICS,
)
GQA_CROSS_ATTENTION = KernelSpec(
    name="gqa_cross_attention",
    module="stable_audio_rt.kernels.attention_triton",
    function="gqa_cross_attention_kernel",
    inputs=("q_ptr", "k_ptr", "v_ptr"),
    extras=("num_heads", "num_kv_heads", "q_len", "kv_len", *_ATTENTION_STRIDES),
    outputs=("out_ptr",),
    tactics=_ATTENTION_TACTICS,
)
SNAKE = KernelSpec(
    name="snake",
    module="stable_audio_rt.kernels.snake_triton",
    function="snake_kernel",
    inputs=("x_ptr", "alpha_ptr", "inv_beta_ptr"),
    extras=("num_rows", "channels", "length"),
    outputs=("y_ptr",),
    float32_inputs=("alpha_ptr", "inv_beta_ptr"),
    tactics=(
        Tactic(1, {"BLOCK": 1024}, num_warps=4, num_stages=1),
        Tactic(2, {"BLOCK": 4096}, num_warps=8, num_stages=1),
    ),
)
KERNELS = (ROPE_SELF_ATTENTION, GQA_CROSS_ATTENTION, SNAKE)


def attention_constexprs(head_dim: int, rope_half: int | None, tactic: Tactic) -> dict[str, int | float]:
    """Compile-time constants of an attention kernel; the scale 1/√Dh is folded with log2(e)
    because the kernel's softmax uses exp2."""
    constexprs: dict[str, int | float] = {"HEAD_DIM": head_dim}
    if rope_half is not None:
        constexprs["ROPE_HALF"] = rope_half
    constexprs["QK_SCALE_LOG2"] = math.log2(math.e) / math.sqrt(head_dim)
    return constexprs | tactic.blocks


def snake_constexprs(tactic: Tactic) -> dict[str, int | float]:
    return dict(tactic.blocks)
