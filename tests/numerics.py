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
