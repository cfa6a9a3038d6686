"""bf16 linear layers with their weights packed once into oneDNN's blocked layout, for the CPU.

`F.linear` on bf16 CPU tensors hands the weight to oneDNN in its plain layout, which oneDNN
reorders on every call. Packing it once at load gives the same numbers, bit for bit, and runs
the DiT's products 1.07-1.14x faster on an AVX512-BF16 CPU (`benchmarks/bench_packed_linear.py`).
The ops are the ones Inductor's freezing pass emits for bf16 linears (torch.ops.mkldnn); where
this torch lacks them or oneDNN cannot multiply bf16, the layers stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn


def packing_available() -> bool:
    """Whether this torch and CPU run oneDNN's packed bf16 linear."""
    mkldnn = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
        and hasattr(mkldnn, "_is_mkldnn_bf16_supported")
        and bool(mkldnn._is_mkldnn_bf16_supported())
    )


class PackedLinear(nn.Module):
    """`linear`'s maths, its weight held packed (an opaque oneDNN tensor: inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # No batch-size hint: requests vary the rows, and the hint measured no faster.
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def _packable(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.bfloat16 and weight.device.type == "cpu"


def pack_linears_(module: nn.Module) -> int:
    """Replace every bf16 CPU `nn.Linear` inside `module` with a `PackedLinear`, in place.

    Returns how many were packed: 0 where `packing_available()` is false. Other dtypes are left
    alone (fp32 through MKL's packed path measured no faster)."""
    if not packing_available():
        return 0
    swaps = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
        and child.weight.dtype == torch.bfloat16
        and child.weight.device.type == "cpu"
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    return len(swaps)
