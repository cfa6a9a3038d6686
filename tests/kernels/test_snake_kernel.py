"""The Triton Snake kernel against the VAE's eager Snake, under Triton's interpreter."""

import pytest
import torch
from numerics import rel_error, snake_bf16_misses

from stable_audio_rt.kernels import ops
from stable_audio_rt.kernels.specs import SNAKE
from stable_audio_rt.models.vae import SNAKE_EPS, snake_eager

# fp32 in both; sin's last ulp may differ (~3e-8 measured).
FP32_TOL = 1e-5
# fp16 output rounding only: the maths is fp32 in both (~1e-4 of the output's scale).
FP16_TOL = 2e-3


def _parameters(channels, generator):
    # Log-scale α, β as the checkpoints store them, precomputed as the VAE's Snake does.
    log_alpha = 0.5 * torch.randn(channels, generator=generator)
    log_beta = 0.5 * torch.randn(channels, generator=generator)
    return log_alpha.exp(), 1.0 / (log_beta.exp() + SNAKE_EPS)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, FP32_TOL), (torch.float16, FP16_TOL)])
@pytest.mark.parametrize("batch,channels,length", [(1, 1, 1), (2, 3, 1023), (1, 16, 1025), (2, 5, 4099)])
def test_snake_matches_eager(batch, channels, length, dtype, tol, generator):
    x = (3 * torch.randn(batch, channels, length, generator=generator)).to(dtype)
    alpha, inv_beta = _parameters(channels, generator)
    y = ops.snake(x, alpha, inv_beta)
    assert y.dtype == dtype
    assert rel_error(y.float(), snake_eager(x.float(), alpha, inv_beta)) <= tol


def _bf16_case(generator):
    x = torch.randn(2, 4, 3000, generator=generator).bfloat16()
    return (x, *_parameters(4, generator))


def test_snake_bf16_is_a_rounding_of_the_fp32_maths(generator):
    x, alpha, inv_beta = _bf16_case(generator)
    y = ops.snake(x, alpha, inv_beta)
    assert y.dtype == torch.bfloat16
    misses = snake_bf16_misses(y, x, alpha, inv_beta)
    assert not misses.any(), f"{int(misses.sum())} elements, first at {misses.nonzero()[0].tolist()}"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda a, ib: (a * (1 + 2**-10), ib), id="alpha-off-by-2^-10"),
        pytest.param(lambda a, ib: (a, 1.0 / ib), id="beta-not-inverted"),
        pytest.param(lambda a, ib: (a.log(), ib), id="alpha-not-exponentiated"),
    ],
)
def test_snake_bf16_bound_rejects_wrong_maths(fault, generator):
    x, alpha, inv_beta = _bf16_case(generator)
    y = ops.snake(x, *fault(alpha, inv_beta))
    assert snake_bf16_misses(y, x, alpha, inv_beta).any()


@pytest.mark.parametrize("tactic", [t.id for t in SNAKE.tactics])
def test_snake_overwrites_a_poisoned_output(tactic, generator):
    x = torch.randn(2, 3, 4100, generator=generator)
    alpha, inv_beta = _parameters(3, generator)
    y = torch.full_like(x, float("nan"))
    ops.launch_snake(x, alpha, inv_beta, y, tactic)
    assert rel_error(y, snake_eager(x, alpha, inv_beta)) <= FP32_TOL
