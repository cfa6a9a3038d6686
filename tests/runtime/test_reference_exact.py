"""Reference-exact mode: the random draws in stable-audio-tools' order, APG guidance, and
explicit windows (CPU, tiny random model)."""

import numpy as np
import pytest
import torch
import torchsde
from reference_path import REFERENCE_PATH

from stable_audio_rt.runtime import region
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request
from stable_audio_rt.runtime.sampling.dpmpp_3m_sde import polyexponential_sigmas
from stable_audio_rt.runtime.sampling.guidance import CFG, Guidance, guide

RATE = 44100


@pytest.fixture(scope="module")
def pipe():
    return StableAudio.from_pretrained("tiny-random", device="cpu", **REFERENCE_PATH)


def _sampler_state(pipe, request):
    """The request's state after the region's start: the initial state and the step noise."""
    resolved = resolve_request(request, pipe.config)
    buffers = pipe.prepare(resolved)
    with torch.no_grad():
        region.start(buffers, pipe.components)
    return resolved, buffers.state


@pytest.mark.parametrize("audio_to_audio", [False, True])
def test_draws_follow_the_reference_order(pipe, generator, audio_to_audio):
    seed = int(torch.randint(0, 2**32 - 1, (), generator=generator))
    steps, batch = 6, 2
    audio = (0.2 * torch.randn(2, RATE, generator=generator)).numpy()
    request = GenerationRequest(
        ("a", "b"),
        seconds_total=1.0,
        steps=steps,
        seed=seed,
        noise="brownian",
        frames=24,
        init_audio=(audio, RATE) if audio_to_audio else None,
        init_noise_level=3.0 if audio_to_audio else None,
    )
    resolved, state = _sampler_state(pipe, request)

    # What stable-audio-tools 0.0.20 does, written out: generate_diffusion_cond seeds the global
    # RNG, draws the initial noise, encodes the init audio (VAEBottleneck: randn_like(mean)),
    # and k-diffusion's BatchedBrownianTree then draws its seed with torch.randint.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        noise = torch.randn([batch, pipe.config.dit.io_channels, 24])
        sigmas = polyexponential_sigmas(steps, 0.3, resolved.start_level)
        x = noise * sigmas[0]
        if audio_to_audio:
            with torch.no_grad():
                mean, std = pipe.components.model.vae.encode_moments(resolved.init_audio[None])
            init = (torch.randn_like(mean) * std + mean).repeat(batch, 1, 1)
            x = init + x
        tree_seed = torch.randint(0, 2**63 - 1, []).item()
    tree = torchsde.BrownianTree(
        sigmas[sigmas > 0].min(), torch.zeros_like(x), sigmas.max(), entropy=tree_seed
    )

    assert torch.equal(state.x, x)
    for i in range(steps - 1):
        low, high = sigmas[i + 1], sigmas[i]
        expected = -tree(low, high) / (high - low).abs().sqrt()
        assert torch.equal(state.step_noise[i], expected), i


def test_apg_scale_zero_is_plain_cfg_and_one_is_orthogonal(generator):
    shape = (3, 8, 50)
    d_cond = torch.randn(shape, generator=generator)
    d_uncond = d_cond + 0.3 * torch.randn(shape, generator=generator)
    scale = torch.tensor(6.5)
    cfg = guide(d_cond, d_uncond, scale, CFG)
    assert torch.equal(guide(d_cond, d_uncond, scale, Guidance("apg", apg_scale=0.0)), cfg)
    assert torch.equal(cfg, d_cond + (scale - 1) * (d_cond - d_uncond))

    full = guide(d_cond, d_uncond, scale, Guidance("apg", apg_scale=1.0))
    push = (full - d_cond).double()
    cosine = (push * d_cond).sum(dim=(1, 2)) / (push.norm(dim=(1, 2)) * d_cond.norm(dim=(1, 2)))
    # Orthogonal per sample to fp32 rounding (the projection itself is done in float64).
    assert cosine.abs().max() <= 1e-6
    # Random differences are nearly orthogonal to D_c already: the push keeps most of its size.
    assert push.norm() >= 0.9 * (scale - 1) * (d_cond - d_uncond).norm()

    half = guide(d_cond, d_uncond, scale, Guidance("apg", apg_scale=0.5))
    torch.testing.assert_close(half, (cfg + full) / 2, rtol=1e-6, atol=1e-6)


def test_norm_threshold_clips_the_guidance_difference(generator):
    d_cond = torch.randn(2, 4, 30, generator=generator)
    d_uncond = d_cond + torch.randn(2, 4, 30, generator=generator)
    threshold = 0.5 * (d_cond - d_uncond)[0].norm().item()
    guided = guide(d_cond, d_uncond, torch.tensor(3.0), Guidance("cfg", norm_threshold=threshold))
    diff_norms = ((guided - d_cond) / 2).flatten(1).norm(dim=1)
    assert diff_norms.max().item() == pytest.approx(threshold, rel=1e-5)


@pytest.mark.parametrize(
    "options,frames",
    [({"frames": 17}, 17), ({"sample_size": 40000}, 40000 // 2048), ({"window": "trim"}, 11), ({}, 64)],
)
def test_explicit_windows(pipe, options, frames):
    result = pipe.generate("x", seconds_total=0.5, steps=2, seed=1, **options)
    assert result.latents.shape[-1] == frames
    assert result.audio.shape[-1] == RATE // 2


def test_window_options_are_exclusive(pipe):
    from stable_audio_rt.errors import RequestError

    with pytest.raises(RequestError, match="give one window"):
        pipe.generate("x", frames=20, window="trim")
    with pytest.raises(RequestError, match="give one window"):
        pipe.generate("x", frames=20, sample_size=40960)
    with pytest.raises(RequestError, match=r"window of 5 latent frames \(0\.23 s\) is shorter than the clip"):
        pipe.generate("x", frames=5, seconds_total=1.0)


def test_apg_runs_inside_the_plan(pipe):
    a = pipe.generate("x", seconds_total=1.0, steps=4, seed=2, guidance="apg", apg_scale=1.0)
    b = pipe.generate("x", seconds_total=1.0, steps=4, seed=2)
    c = pipe.generate("x", seconds_total=1.0, steps=4, seed=2, guidance="apg", apg_scale=0.0)
    assert not torch.equal(a.latents, b.latents)
    assert torch.equal(b.latents, c.latents)
    assert np.isfinite(a.audio.numpy()).all()
