"""Stable Audio Open Small's sampling: the LogSNR-shifted time schedule against the reference's
formula, the planned pingpong loop against a plain loop written out here, and the requests
that this model refuses or defaults differently."""

import math

import numpy as np
import pytest
import torch
from numerics import rel_error
from reference_path import REFERENCE_PATH
from sampler_runs import build_state, run_state

from stable_audio_rt.errors import RequestError
from stable_audio_rt.models.config import TINY, TINY_SMALL
from stable_audio_rt.models.random_init import random_model
from stable_audio_rt.runtime.backends.torch_backend import TorchDiTStep
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request
from stable_audio_rt.runtime.sampling.guidance import CFG
from stable_audio_rt.runtime.sampling.pingpong import logsnr_shifted_times, pingpong_table

# The schedule is float32 arithmetic on both sides; the state's loop and the plain loop differ
# only in the DiT's path (precomputed context K/V vs a full forward): ~1e-7 measured.
SCHEDULE_TOL = 1e-6
LOOP_TOL = 1e-5


@pytest.mark.parametrize("steps", [1, 2, 8, 50])
@pytest.mark.parametrize("t_max", [1.0, 0.7])
def test_schedule_is_uniform_in_log_snr(steps, t_max):
    # stable-audio-tools 0.0.20: t = linspace(t_max, 0, N + 1); logsnr = 2 − t·(2 − (−6.2));
    # t' = sigmoid(−logsnr), with 0 ↦ 0, 1 ↦ 1 and the first time reset to t_max.
    expected = []
    for i in range(steps + 1):
        t = t_max * (1 - i / steps)
        shifted = 1 / (1 + math.exp(2.0 - t * 8.2))
        expected.append(0.0 if t <= 0 else 1.0 if t >= 1 else shifted)
    expected[0] = t_max
    times = logsnr_shifted_times(steps, t_max)
    assert times.shape == (steps + 1,)
    assert (times - torch.tensor(expected)).abs().max() <= SCHEDULE_TOL
    # Decreasing after the first time. For t_max < 1 the reference resets only the first time
    # to t_max, so the second is noisier than the first (0.7 → 0.954 for 8 steps); we keep that.
    assert torch.all(times[2:] < times[1:-1])


@pytest.fixture(scope="module")
def small():
    return random_model(TINY_SMALL, seed=4)


def _plain_pingpong(dit, x, times, noise, context, global_cond, cfg_scale):
    """The reference's loop: v from the full DiT (CFG on v), D = x − t·v, x = (1 − t')·D + t'·z."""
    for i in range(len(times) - 1):
        t = times[i].expand(x.shape[0])
        if cfg_scale == 1.0:
            v = dit(x, t, context, global_cond)
        else:
            rows = x.shape[0]
            both = dit(torch.cat((x, x)), torch.cat((t, t)), context, global_cond)
            v = both[rows:] + (both[:rows] - both[rows:]) * cfg_scale
        denoised = x - times[i] * v
        x = (1 - times[i + 1]) * denoised + times[i + 1] * noise[i]
    return x


@torch.no_grad()
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_planned_pingpong_equals_the_plain_loop(small, cfg_scale, generator):
    steps, batch, frames = 8, 2, 13
    shape = (batch, TINY_SMALL.dit.io_channels, frames)
    cond = TINY_SMALL.conditioning
    rows = batch * (2 if cfg_scale != 1.0 else 1)
    context = torch.randn(rows, cond.context_tokens, TINY_SMALL.dit.cond_token_dim, generator=generator)
    global_cond = torch.randn(rows, TINY_SMALL.dit.global_cond_dim, generator=generator)
    if cfg_scale != 1.0:
        global_cond[batch:] = global_cond[:batch]
    times = logsnr_shifted_times(steps)
    x0 = torch.randn(shape, generator=generator)
    noise = torch.randn((steps, *shape), generator=generator)
    denoiser = TorchDiTStep(small.dit, steps, rows, cond.context_tokens)
    denoiser.bind(times[:-1], context, global_cond)
    state = build_state(
        denoiser, x0, pingpong_table(times), noise, cfg_scale, cfg_scale != 1.0, torch.float32, CFG
    )
    ours = run_state(state)
    expected = _plain_pingpong(small.dit, x0, times, noise, context, global_cond, cfg_scale)
    assert rel_error(ours, expected) <= LOOP_TOL


def test_defaults_follow_the_model():
    small = resolve_request(GenerationRequest(prompts=("a",)), TINY_SMALL).request
    v = resolve_request(GenerationRequest(prompts=("a",)), TINY).request
    assert (small.steps, small.cfg_scale) == (8, 1.0)
    assert (v.steps, v.cfg_scale) == (100, 7.0)
    # Audio-to-audio's start: σmax 1 for 1.0 (generate_diffusion_cond's); t0 0.9 for Small (the
    # web UI's; at generate's 1 the reference would weigh nothing).
    reference = dict(init_audio=(torch.zeros(2, 4410), 44100))
    assert resolve_request(GenerationRequest(prompts=("a",), **reference), TINY).start_level == 1.0
    assert resolve_request(GenerationRequest(prompts=("a",), **reference), TINY_SMALL).start_level == 0.9


def test_small_audio_to_audio_varies_its_reference_by_default_and_warns_at_pure_noise():
    pipe = StableAudio.from_pretrained("tiny-random-small", device="cpu", **REFERENCE_PATH)
    rng = np.random.default_rng()
    first, second = (rng.uniform(-0.5, 0.5, (2, 44100)).astype(np.float32) for _ in range(2))
    options = dict(seconds_total=1.0, steps=2, seed=int(rng.integers(2**31)))
    by_reference = [pipe.generate("x", init_audio=(a, 44100), **options).latents for a in (first, second)]
    assert not torch.equal(*by_reference), "the default level must keep some of the reference"
    with pytest.warns(UserWarning, match=r"init_audio has no effect at init_noise_level 1 on this model"):
        at_one = [
            pipe.generate("x", init_audio=(a, 44100), init_noise_level=1.0, **options).latents
            for a in (first, second)
        ]
    assert torch.equal(*at_one)  # what the warning says: the reference weighs nothing


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(seconds_start=0.5), "not conditioned on a start time: leave seconds_start at 0"),
        (dict(noise="brownian"), "fresh Gaussian noise each step"),
        (
            dict(init_audio=(torch.zeros(2, 4410), 44100), init_noise_level=1.5),
            r"starting time t in \(0, 1\]",
        ),
        (
            dict(inpaint_audio=(torch.zeros(2, 4410), 44100), inpaint_mask=torch.ones(4410)),
            "inpainting is not",
        ),
    ],
)
def test_small_refuses_what_it_cannot_do(options, message):
    with pytest.raises(RequestError, match=message):
        resolve_request(GenerationRequest(prompts=("a",), **options), TINY_SMALL)
