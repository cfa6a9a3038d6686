"""Linear layers with their weights packed once into oneDNN's blocked layout, for the CPU.

bf16: `F.linear` hands the weight to oneDNN in its plain layout, which oneDNN reorders on every
call. Packing it once at load gives the same numbers, bit for bit, and runs a DiT step
1.06-1.31x faster on an AVX512-BF16 AMD EPYC. fp32: `F.linear` runs MKL, which on that EPYC ran
the DiT's products at 60-75 % of oneDNN's rate (a step 1.21-1.53x faster packed; the sums in
another order, ~1.5e-6 relative); where MKL is as fast (Intel), packing would not pay, so fp32
is packed only where a probe at load measures it faster (`packs`). Measured by
`benchmarks/bench_packed_linear.py` (`benchmarks/results/packed_linear_cpu.json`).

The ops are the ones Inductor's freezing pass emits for linears (torch.ops.mkldnn); where this
torch lacks them or oneDNN cannot multiply bf16, the layers stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial

import torch
from torch import nn

from stable_audio_rt.runtime.timing import best_seconds

# fp32 is packed when its product is at least this much faster packed than plain: a margin over
# timing noise, so that a CPU where both run alike (MKL at its best) keeps one answer.
FP32_PACK_MIN_SPEEDUP = 1.2
# The probe: one 64-frame CFG step's token rows (2 × (64 frames + the global token)), best of a few.
PROBE_ROWS = 130
PROBE_REPEATS = 3


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


@cache  # a property of this CPU and torch: measured once per process, one answer after
def packs(dtype: torch.dtype, in_features: int, out_features: int) -> bool:
    """Whether CPU linears of this dtype and shape are packed: bf16 always (oneDNN runs it either
    way; packing only saves the reorder), fp32 where the packed product measures
    FP32_PACK_MIN_SPEEDUP faster than the plain one, other dtypes never."""
    if not packing_available(dtype):
        return False
    if dtype == torch.bfloat16:
        return True
    with torch.inference_mode():
        plain = nn.Linear(in_features, out_features, bias=False)
        x = torch.randn(PROBE_ROWS, in_features)
        packed = PackedLinear(plain)
        plain_s = best_seconds(partial(plain, x), PROBE_REPEATS)
        return plain_s >= FP32_PACK_MIN_SPEEDUP * best_seconds(partial(packed, x), PROBE_REPEATS)


def pack_linears_(module: nn.Module, decide: Callable[[torch.dtype, int, int], bool] = packs) -> int:
    """Replace the CPU `nn.Linear`s inside `module` whose dtype `decide` packs (default: `packs`)
    with `PackedLinear`s, in place; one decision per dtype, on its largest layer's shape. Returns
    how many were packed."""
    linears = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.device.type == "cpu"
    ]
    by_dtype: dict[torch.dtype, list[tuple[nn.Module, str, nn.Linear]]] = {}
    for found in linears:
        by_dtype.setdefault(found[2].weight.dtype, []).append(found)
    packed = 0
    for dtype, group in by_dtype.items():
        largest = max((child for _, _, child in group), key=lambda child: child.weight.numel())
        if decide(dtype, largest.in_features, largest.out_features):
            for parent, name, child in group:
                setattr(parent, name, PackedLinear(child))
            packed += len(group)
    return packed


def linear_as_run(in_features: int, out_features: int, dtype: torch.dtype) -> nn.Module:
    """A random bias-free CPU linear of this shape as a loaded model runs it (packed where `packs`
    says so): what the CPU's rate probes time."""
    linear = nn.Linear(in_features, out_features, bias=False, dtype=dtype)
    return PackedLinear(linear) if packs(dtype, in_features, out_features) else linear
