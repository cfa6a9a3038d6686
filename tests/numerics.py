"""Error measures shared by the tests."""

import torch

from stable_audio_rt.models.vae import snake_eager

# fp32 ports of the same maths differ only by summation order (fused vs split projections,
# SDPA vs eager): ~1e-6 relative here. 1e-4 of the output's scale leaves room for deeper
# stacks while still failing on any real difference (a wrong RoPE layout is ~1 of scale).
FP32_REL_TOL = 1e-4
# The Snake kernel's bf16 bound (snake_bf16_misses) in eps of the terms |x| + inv_beta: measured
# up to 2.0 over 40 seeds (issue 23); sin ≤ 1 ulp in each implementation, squared and scaled: 4.
SNAKE_FP32_TERM_ULPS = 4


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


def snake_bf16_misses(
    y: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor
) -> torch.Tensor:
    """Elements of the kernel's bf16 `y` that are no bf16 rounding (the kernel's, on its device)
    of any value within the fp32 maths' error of the eager fp32 reference.

    Kernel and eager differ in fp32 only by sin's implementation (numpy's under the interpreter,
    libdevice on a GPU, SLEEF in torch) and the roundings after it, an error on the order of the
    terms x and inv_beta·sin² ≤ inv_beta, not of the result: where they nearly cancel the result's
    own ulps are far smaller (issue 23: SA_TEST_SEED=160243248 of tests/kernels/test_snake_kernel.py
    has x = −0.285 giving −0.0116).
    """
    xf = x.float()
    reference = snake_eager(xf, alpha, inv_beta)
    tol = SNAKE_FP32_TERM_ULPS * torch.finfo(torch.float32).eps * (xf.abs() + inv_beta[:, None])
    return bf16_rounding_misses(y, reference - tol, reference + tol, kernel_bf16_rounding(y.device))
