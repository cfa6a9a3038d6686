"""The sampler on data whose exact denoiser is known: Gaussian data x0 ~ N(μ, s²).

For such data D(x, σ) = (s²·x + σ²·μ) / (s² + σ²) and the probability-flow ODE has the closed
form x(σ) = μ + (x(σ_T) − μ)·√(s² + σ²)/√(s² + σ_T²), so the SDE sampler's statistics and the
ODE sampler's (η = 0) convergence order can be checked exactly.
"""

import math

import torch
from sampler_runs import build_state, run_state

from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import polyexponential_sigmas, step_table

MEAN, STD = 0.7, 0.4
SIGMA_MIN, SIGMA_MAX = 0.3, 500.0


class GaussianDataDenoiser:
    """Stands in for the DiT bound to a request: returns the v that makes the v-denoiser exact
    for Gaussian data at step i's σ."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.double()

    def __call__(self, model_input: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self.sigmas[i]
        c_in, c_skip, c_out = 1 / (sigma**2 + 1).sqrt(), 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1).sqrt()
        x = model_input.double() / c_in
        denoised = (STD**2 * x + sigma**2 * MEAN) / (STD**2 + sigma**2)
        return ((denoised - c_skip * x) / c_out).float()

    def buffers(self) -> list[torch.Tensor]:
        return []


def _sample(steps, x0_noise, step_noise, eta):
    sigmas = polyexponential_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    state = build_state(
        GaussianDataDenoiser(sigmas),
        x0_noise * sigmas[0],
        step_table(sigmas, eta=eta),
        step_noise,
        cfg_scale=1.0,
        uses_cfg=False,
        model_dtype=torch.float32,
    )
    with torch.no_grad():
        return run_state(state), sigmas


def test_sde_samples_have_the_data_statistics(generator):
    steps, shape = 30, (1, 8, 4096)
    out, _ = _sample(
        steps,
        torch.randn(shape, generator=generator),
        torch.randn((steps, *shape), generator=generator),
        eta=1.0,
    )
    # The last step returns D(x, σ_min) = E[x0 | x], whose spread is s²/√(s² + σ_min²), not s.
    expected_std = STD**2 / math.sqrt(STD**2 + SIGMA_MIN**2)
    n = out.numel()
    # 6 standard errors of the sample mean and of the sample std (n = 32768 independent values),
    # plus 1 % for the 30-step discretisation.
    assert abs(out.mean().item() - MEAN) <= 6 * expected_std / math.sqrt(n) + 0.01 * expected_std
    assert abs(out.std().item() / expected_std - 1) <= 6 / math.sqrt(2 * n) + 0.01


def test_ode_variant_converges_at_third_order(generator):
    noise = torch.randn(1, 4, 512, generator=generator)
    errors = {}
    for steps in (8, 16, 32, 64, 128):
        out, sigmas = _sample(steps, noise, torch.zeros((steps, 1, 4, 512)), eta=0.0)
        sigma_min, sigma_max = sigmas[-2].double(), sigmas[0].double()
        x = (
            MEAN
            + (noise.double() * sigma_max - MEAN)
            * (STD**2 + sigma_min**2).sqrt()
            / (STD**2 + sigma_max**2).sqrt()
        )
        exact = (STD**2 * x + sigma_min**2 * MEAN) / (STD**2 + sigma_min**2)
        errors[steps] = (out.double() - exact).abs().max().item()
    assert all(errors[n] > errors[2 * n] for n in (8, 16, 32, 64)), errors
    # DPM-Solver++(3M) is third order; its first two steps are lower order, so the rate shows
    # past 32 steps (measured ≈ 3.2 there).
    order = math.log2(errors[32] / errors[128]) / 2
    assert order >= 2.5, errors
