"""Error measures shared by the tests."""

import torch

# fp32 ports of the same maths differ only by summation order (fused vs split projections,
# SDPA vs eager): ~1e-6 relative here. 1e-4 of the output's scale leaves room for deeper
# stacks while still failing on any real difference (a wrong RoPE layout is ~1 of scale).
FP32_REL_TOL = 1e-4


def rel_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours − reference| / max |reference|."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = reference.abs().max().clamp_min(1e-12)
    return ((ours.double() - reference.double()).abs().max() / scale).item()


def bf16_round_to_nearest_even(values: torch.Tensor) -> torch.Tensor:
    """fp32 → bf16 as CUDA's cvt.rn.bf16.f32 (and torch's .bfloat16()) does it, back in fp32."""
    return values.bfloat16().float()


def bf16_truncate(values: torch.Tensor) -> torch.Tensor:
    """fp32 → bf16 as Triton's interpreter does it in a kernel's .to(tl.bfloat16): the low 16
    bits dropped, i.e. rounding toward zero (triton/runtime/interpreter.py, cast_impl calls
    _convert_float with no rounding mode). Back in fp32."""
    return (values.float().view(torch.int32) & ~0xFFFF).view(torch.float32)


def kernel_bf16_rounding(device: torch.device):
    """How a Triton kernel's fp32 → bf16 store rounds on this device: to nearest even on a GPU,
    toward zero under the CPU interpreter."""
    return bf16_round_to_nearest_even if device.type == "cuda" else bf16_truncate


def bf16_rounding_misses(ours: torch.Tensor, low: torch.Tensor, high: torch.Tensor, rounding) -> torch.Tensor:
    """Mask of the elements of `ours` (bf16 values) that are not `rounding` of any value in
    [low, high]. Both roundings are monotone, so the allowed values are exactly the bf16 values
    in [rounding(low), rounding(high)]: nothing wider than the interval's own rounding."""
    ours = ours.float()
    return (ours < rounding(low)) | (ours > rounding(high))
