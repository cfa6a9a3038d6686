"""The planned linear-form sampler against the k-diffusion equations run as a loop (written out
here independently), with both noise kinds; and the precomputed Brownian increments against
torchsde queried step by step."""

import math

import pytest
import torch
import torchsde
from numerics import rel_error
from sampler_runs import build_state, run_state

from stable_audio_rt.models.random_init import random_model
from stable_audio_rt.runtime.backends.torch_backend import TorchDiTStep
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import (
    brownian_step_noise,
    polyexponential_sigmas,
    sigma_to_t,
    step_table,
)

# The loop and the linear form are the same maths in a different summation order; in fp32
# over a chaotic random DiT that differs by ~1e-6 relative, up to 1.3e-5 on some seeds (seen
# with SA_TEST_SEED=12 at 9 steps). A wrong coefficient or history slot is ~1e-2 or more.
SAMPLER_REL_TOL = 1e-4


def reference_dpmpp_3m_sde(denoise, x, sigmas, noise_at, eta=1.0, s_noise=1.0):
    """k-diffusion's sample_dpmpp_3m_sde, step by step, on float32 tensors as it runs."""
    # h starts defined so that a single-step schedule works (k-diffusion itself raises there).
    denoised_1 = denoised_2 = h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + noise_at(i) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def cfg_v_denoiser(dit, context, global_cond, cfg_scale):
    """k-diffusion's VDenoiser around a batch-CFG model, as stable-audio-tools wraps the DiT."""

    def denoise(x, sigma):
        c_skip, c_out, c_in = 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5, 1 / (sigma**2 + 1) ** 0.5
        t = (sigma.atan() * 2 / math.pi).expand(2 * x.shape[0])
        v = dit(torch.cat([x * c_in] * 2), t, context, global_cond)
        v_cond, v_uncond = v.chunk(2)
        return (v_uncond + (v_cond - v_uncond) * cfg_scale) * c_out + x * c_skip

    return denoise


@pytest.fixture(scope="module")
def tiny_dit():
    return random_model(seed=1).dit


@pytest.mark.parametrize("noise_kind", ["gaussian", "brownian"])
@pytest.mark.parametrize("steps", [1, 2, 3, 9])
def test_linear_form_equals_k_diffusion_loop(tiny_dit, generator, noise_kind, steps):
    cfg = tiny_dit.config
    batch, frames, cfg_scale = 2, 11, 4.5
    sigmas = polyexponential_sigmas(steps, 0.3, 500.0)
    shape = (batch, cfg.io_channels, frames)
    context = torch.randn(2 * batch, 6, cfg.cond_token_dim, generator=generator)
    context[batch:] = 0
    global_cond = torch.randn(batch, cfg.global_cond_dim, generator=generator).repeat(2, 1)
    x0 = torch.randn(shape, generator=generator) * sigmas[0]

    if noise_kind == "gaussian":
        step_noise = torch.randn((steps, *shape), generator=generator)
        noise_at = step_noise.__getitem__
    else:
        seed = int(torch.randint(0, 2**31, (), generator=generator))
        step_noise = brownian_step_noise(sigmas, shape, seed, torch.device("cpu"))
        tree = torchsde.BrownianTree(sigmas[sigmas > 0].min(), torch.zeros(shape), sigmas.max(), entropy=seed)

        def noise_at(i):  # k-diffusion's BrownianTreeNoiseSampler, queried as the loop goes
            low, high = sorted((sigmas[i], sigmas[i + 1]))
            sign = -1 if sigmas[i] > sigmas[i + 1] else 1
            return tree(low, high) * sign / (sigmas[i + 1] - sigmas[i]).abs().sqrt()

    with torch.no_grad():
        expected = reference_dpmpp_3m_sde(
            cfg_v_denoiser(tiny_dit, context, global_cond, cfg_scale), x0, sigmas, noise_at
        )
        denoiser = TorchDiTStep(tiny_dit, steps, context.shape[0], context.shape[1])
        denoiser.bind(sigma_to_t(sigmas[:-1]), context, global_cond)
        state = build_state(denoiser, x0, step_table(sigmas), step_noise, cfg_scale, True, torch.float32)
        ours = run_state(state)
    assert rel_error(ours, expected) <= SAMPLER_REL_TOL


def test_brownian_increments_equal_torchsde_step_by_step(generator):
    sigmas = polyexponential_sigmas(12, 0.3, 500.0)
    shape = (2, 3, 5)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    ours = brownian_step_noise(sigmas, shape, seed, torch.device("cpu"))
    tree = torchsde.BrownianTree(sigmas[sigmas > 0].min(), torch.zeros(shape), sigmas.max(), entropy=seed)
    for i in range(len(sigmas) - 2):
        increment = tree(sigmas[i + 1], sigmas[i])  # W(σ_i) − W(σ_{i+1})
        expected = -increment / (sigmas[i] - sigmas[i + 1]).sqrt()
        assert torch.equal(ours[i], expected), i
    assert torch.equal(ours[-1], torch.zeros(shape))
    # Increments of a Brownian motion, normalised: roughly unit variance.
    assert 0.5 < ours[:-1].std().item() < 1.5
