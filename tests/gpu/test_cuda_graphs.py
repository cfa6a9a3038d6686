"""Whole-request CUDA graphs on a real GPU: replay equals the eager run in every mode, later
requests of one shape replay with their own inputs, and a replay allocates nothing."""

import numpy as np
import pytest
import torch

from stable_audio_rt.bench.quality import cosine_distance
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request

RATE = 44100
# Replay runs the eager run's kernels; only reduction order may differ between streams.
REPLAY_COSINE_TOL = 1e-5
# Two seeds' audio from the random-weight model: independent noise, far apart (~1); the replay
# bound above is 1e-5, so anything above 1e-3 is a different request's audio.
DIFFERENT_SEEDS_MIN_COSINE = 1e-3
# A batch's rows against each request alone: the products and convolutions may sum in another
# order for 3 rows than for 1 (cuDNN's TF32 convolutions may even take another algorithm), which
# the random decoder's gain magnifies; the CPU's bf16 run measured 2.4e-5. Still 10x below two
# seeds' distance.
BATCH_AUDIO_COSINE_TOL = 1e-4


@pytest.fixture(scope="module")
def pipes():
    graphed = StableAudio.from_pretrained("tiny-random", device="cuda")
    return graphed, StableAudio(graphed.components, cuda_graph=False)


def _audio(generator):
    return (0.3 * torch.randn(2, RATE, generator=generator)).numpy()


def _modes(generator):
    keep = np.ones(RATE)
    keep[RATE // 4 : RATE // 2] = 0
    return {
        "text": dict(negative_prompt="hiss"),
        "audio": dict(init_audio=(_audio(generator), RATE), init_noise_level=3.0),
        "inpaint": dict(inpaint_audio=(_audio(generator), RATE), inpaint_mask=keep),
    }


@pytest.mark.parametrize("mode", ["text", "audio", "inpaint"])
def test_replay_equals_eager_and_follows_its_seed(pipes, generator, mode):
    graphed, eager = pipes
    options = _modes(generator)[mode]
    seeds = torch.randint(0, 2**31, (3,), generator=generator).tolist()
    before = graphed.graphs.captures, graphed.graphs.replays
    audio = []
    for prompt, seed in zip(("warm pad", "warm pad", "rain on a roof"), seeds, strict=True):
        kwargs = dict(seconds_total=1.0, steps=8, seed=seed, **options)
        ours, expected = graphed.generate(prompt, **kwargs), eager.generate(prompt, **kwargs)
        assert cosine_distance(ours.latents, expected.latents) <= REPLAY_COSINE_TOL
        assert cosine_distance(ours.audio, expected.audio) <= REPLAY_COSINE_TOL
        audio.append(ours.audio)
    after = graphed.graphs.captures, graphed.graphs.replays
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2), "3 requests of one shape: 1 capture"
    # A graph that ignored its inputs would replay the capturing request's audio.
    assert cosine_distance(audio[1], audio[0]) > DIFFERENT_SEEDS_MIN_COSINE
    assert cosine_distance(audio[2], audio[1]) > DIFFERENT_SEEDS_MIN_COSINE


def test_replay_allocates_nothing(pipes):
    graphed, _ = pipes
    graphed.generate("x", seconds_total=1.0, steps=8, seed=1)
    entry = graphed.graphs.get(next(reversed(graphed.graphs.entries)))
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    allocated = torch.cuda.memory_allocated()
    entry.graph.replay()
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
    assert torch.cuda.memory_allocated() == allocated


def test_a_batch_replays_as_one_graph_with_each_request_its_own(pipes, generator):
    """run_batch under a CUDA graph: one capture for the merged shape, and each request's rows
    as its eager run alone gives them (its own prompt, seed, CFG scale and length)."""
    graphed, eager = pipes
    seeds = torch.randint(0, 2**31, (3,), generator=generator).tolist()
    requests = [
        GenerationRequest(("warm pad",), seconds_total=1.0, steps=8, seed=seeds[0], cfg_scale=7.0),
        GenerationRequest(("rain",), seconds_total=0.7, steps=8, seed=seeds[1], cfg_scale=3.0),
        GenerationRequest(("hiss",), seconds_total=1.0, steps=8, seed=seeds[2], cfg_scale=5.0),
    ]
    resolved = [resolve_request(r, graphed.config) for r in requests]
    before = graphed.graphs.captures
    batched = graphed.run_batch(resolved)
    assert graphed.graphs.captures - before == 1
    for ours, one in zip(batched, resolved, strict=True):
        alone = eager.run_resolved(one)
        assert cosine_distance(ours.latents, alone.latents) <= REPLAY_COSINE_TOL
        assert ours.audio.shape == alone.audio.shape  # its own clip length
        assert cosine_distance(ours.audio, alone.audio) <= BATCH_AUDIO_COSINE_TOL
