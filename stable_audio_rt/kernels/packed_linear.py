"""Linear layers with their weights packed once into oneDNN's blocked layout, for the CPU.

bf16: `F.linear` hands the weight to oneDNN in its plain layout, which oneDNN reorders on every
call. Packing it once at load gives the same numbers, bit for bit, and runs a DiT step
1.06-1.31x faster on an AVX512-BF16 AMD EPYC. fp32: `F.linear` runs MKL, which on that EPYC ran
the DiT's products at 60-75 % of oneDNN's rate (a step 1.21-1.53x faster packed; the sums in
another order, ~1.5e-6 relative). fp32 is packed wherever oneDNN runs it, with no probe: a
choice made by timing would give one seed different audio in two processes as the timings
moved, and where MKL is at its best (Intel, not measured here) oneDNN's own JIT products are
MKL-class, so packing costs nothing there. Measured by `benchmarks/bench_packed_linear.py`
(`benchmarks/results/packed_linear_cpu.json`).

The ops are the ones Inductor's freezing pass emits for linears (torch.ops.mkldnn); where this
torch lacks them or oneDNN cannot multiply bf16, the layers stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# The dtypes whose CPU linears are packed (fp16 stays as it is: oneDNN's fp16 needs AVX512-FP16).
PACKED_DTYPES = (torch.bfloat16, torch.float32)


def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether this torch has oneDNN and it multiplies `dtype` on this CPU (bf16 or fp32)."""
    mkldnn = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return hasattr(mkldnn, "_is_mkldnn_bf16_supported") and bool(mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def packing_available(dtype: torch.dtype) -> bool:
    """Whether this torch and CPU run oneDNN's packed linear in `dtype` (bf16 or fp32)."""
    ops = ("_reorder_linear_weight", "_linear_pointwise")
    return all(hasattr(torch.ops.mkldnn, op) for op in ops) and onednn_runs(dtype)


class PackedLinear(nn.Module):
    """`linear`'s maths, its weight held packed (an opaque oneDNN tensor: inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # No batch-size hint: requests vary the rows, and the hint measured no faster.
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        # Named `weight` as in nn.Linear: code that reads a linear's weight dtype (transformers'
        # T5 feed-forward does) still finds it; the tensor itself is opaque.
        self.register_buffer("weight", packed, persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def forward_plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + self(x) in one pass, oneDNN's binary post-op: the sum is made before the
        product is rounded to the dtype (once, not twice; the DiT's residual sums use it)."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def packs(dtype: torch.dtype) -> bool:
    """Whether CPU linears of `dtype` are packed: bf16 and fp32 wherever this torch and CPU run
    oneDNN's packed linear in it, other dtypes never."""
    return dtype in PACKED_DTYPES and packing_available(dtype)


def pack_linears_(module: nn.Module, decide: Callable[[torch.dtype], bool] = packs) -> int:
    """Replace the CPU `nn.Linear`s inside `module` whose dtype `decide` packs (default: `packs`)
    with `PackedLinear`s, in place. Returns how many were packed."""
    linears = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.device.type == "cpu" and decide(child.weight.dtype)
    ]
    for parent, name, child in linears:
        setattr(parent, name, PackedLinear(child))
    return len(linears)


def linear_as_run(in_features: int, out_features: int, dtype: torch.dtype) -> nn.Module:
    """A random bias-free CPU linear of this shape as a loaded model runs it (packed where `packs`
    says so): what the CPU's rate probes time."""
    linear = nn.Linear(in_features, out_features, bias=False, dtype=dtype)
    return PackedLinear(linear) if packs(dtype) else linear
