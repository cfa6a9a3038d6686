"""Requests run as one batch (`StableAudio.run_batch`) on the tiny random models (CPU): each row
gets what its request gets alone, with its own prompts, seed, CFG scale, numbers and negative
prompt; requests that cannot share a batch are refused by name."""

import pytest
import torch
from reference_path import REFERENCE_PATH

from stable_audio_rt.errors import RequestError
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request

# What every request of a batch shares (its batch key): window, steps, guidance, schedule.
SHARED = dict(steps=3, window="full")
# Not bit-identical on the CPU: the T5, DiT and VAE matrix kernels sum in an order that depends on
# the batch's row count (measured with one thread too), so each row differs from its request
# alone by float32 rounding, which CFG 7 amplifies (latents ≤ 3.1e-6 of their largest value here)
# and the random VAE decoder's large gain amplifies further (audio ≤ 1.2e-4). The bounds: 3x that.
LATENT_RTOL = 1e-5
AUDIO_RTOL = 4e-4


@pytest.fixture(scope="module")
def pipe():
    return StableAudio.load("tiny-random", device="cpu", cuda_graph=False, **REFERENCE_PATH)


def _resolved(pipe, prompts, **options):
    return resolve_request(GenerationRequest(tuple(prompts), **{**SHARED, **options}), pipe.config)


def _relative_error(batched: torch.Tensor, alone: torch.Tensor) -> float:
    return float((batched - alone).abs().max() / alone.abs().max())


def _assert_close(batched, alone) -> None:
    assert batched.seed == alone.seed
    assert batched.audio.shape == alone.audio.shape and batched.latents.shape == alone.latents.shape
    assert _relative_error(batched.latents, alone.latents) <= LATENT_RTOL
    assert _relative_error(batched.audio, alone.audio) <= AUDIO_RTOL


@pytest.mark.parametrize("noise", ["gaussian", "brownian"])
def test_a_batch_gives_each_request_what_it_gets_alone(pipe, noise):
    varied = [
        dict(prompts=["rain"], seed=1, cfg_scale=7.0, seconds_total=1.0, negative_prompt="hiss"),
        dict(prompts=["wind", "birds"], seed=2, cfg_scale=3.5, seconds_total=0.5, negative_prompt="hum",
             num_outputs=2, seconds_start=0.1),
        dict(prompts=["drums"], seed=3, cfg_scale=12.0, seconds_total=1.5, negative_prompt="noise"),
    ]  # fmt: skip
    requests = [_resolved(pipe, noise=noise, **options) for options in varied]
    assert len({pipe.batch_key(r) for r in requests}) == 1
    batched = pipe.run_batch(requests)
    assert [r.audio.shape[0] for r in batched] == [1, 4, 1]
    # The batch's timings in each result, each its own dict: one result's edit is not another's.
    assert batched[0].timings == batched[1].timings and batched[0].timings is not batched[1].timings
    assert "postprocess" in batched[0].timings  # the last stage too, timed before the copies
    for result, request in zip(batched, requests, strict=True):
        _assert_close(result, pipe.run_resolved(request))


def test_a_batch_without_cfg_on_the_rf_model():
    small = StableAudio.load("tiny-random-small", device="cpu", cuda_graph=False, **REFERENCE_PATH)
    requests = [
        resolve_request(GenerationRequest((p,), seed=s, seconds_total=t, steps=4), small.config)
        for p, s, t in [("a", 10, 1.0), ("b", 11, 2.0)]
    ]
    for result, request in zip(small.run_batch(requests), requests, strict=True):
        _assert_close(result, small.run_resolved(request))


def test_the_batch_reports_its_steps(pipe):
    calls = []
    pipe.run_batch(
        [_resolved(pipe, ["a"], seed=1), _resolved(pipe, ["b"], seed=2)], on_step=lambda *c: calls.append(c)
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    "other",
    [
        dict(steps=4),
        dict(cfg_scale=1.0),  # CFG off against on
        dict(negative_prompt="hiss"),
        dict(window="trim", seconds_total=1.0),
        dict(guidance="apg"),
        dict(noise="brownian"),
        dict(sigma_min=0.5),
        dict(vae_chunk=25),
    ],
)
def test_requests_that_cannot_share_a_batch_are_refused(pipe, other):
    first, second = _resolved(pipe, ["a"], seed=1), _resolved(pipe, ["b"], seed=2, **other)
    assert pipe.batch_key(first) != pipe.batch_key(second)
    with pytest.raises(RequestError, match="cannot run as one batch"):
        pipe.run_batch([first, second])


def test_audio_to_audio_runs_only_alone(pipe):
    tone = (torch.zeros(2, 44100), 44100)
    request = _resolved(pipe, ["a"], seed=1, init_audio=tone, init_noise_level=1.0)
    assert pipe.batch_key(request) is None
    with pytest.raises(RequestError, match="cannot run as one batch"):
        pipe.run_batch([request, request])
    with pytest.raises(RequestError, match="at least one request"):
        pipe.run_batch([])


def test_each_result_of_a_batch_holds_only_its_own_audio_and_latents(pipe):
    """Views into the batch's tensors kept (and pickled) every request's audio with each result."""
    window = pipe.config.max_seconds  # the whole window: a slice of the batch's audio is contiguous
    batch = [_resolved(pipe, [f"p{k}"], seed=k, seconds_total=window) for k in range(3)]
    for result in pipe.run_batch(batch):
        for tensor in (result.audio, result.latents):
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
