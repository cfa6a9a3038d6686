"""The Triton Snake kernel against the VAE's eager Snake, under Triton's interpreter."""

import pytest
import torch
from numerics import rel_error

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


def test_snake_bf16_within_one_ulp(generator):
    # The interpreter truncates fp32→bf16 where the GPU rounds, so allow one bf16 ulp.
    x = torch.randn(2, 4, 3000, generator=generator).bfloat16()
    alpha, inv_beta = _parameters(4, generator)
    y = ops.snake(x, alpha, inv_beta).float()
    reference = snake_eager(x.float(), alpha, inv_beta)
    ulp = 2.0 ** (torch.frexp(reference).exponent.float() - 8)
    assert ((y - reference).abs() <= ulp).all()


@pytest.mark.parametrize("tactic", [t.id for t in SNAKE.tactics])
def test_snake_overwrites_a_poisoned_output(tactic, generator):
    x = torch.randn(2, 3, 4100, generator=generator)
    alpha, inv_beta = _parameters(3, generator)
    y = torch.full_like(x, float("nan"))
    ops.launch_snake(x, alpha, inv_beta, y, tactic)
    assert rel_error(y, snake_eager(x, alpha, inv_beta)) <= FP32_TOL
