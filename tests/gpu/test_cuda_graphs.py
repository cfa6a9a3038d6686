"""Whole-request CUDA graphs on a real GPU: replay equals the eager run in every mode, later
requests of one shape replay with their own inputs, and a replay allocates nothing."""

import numpy as np
import pytest
import torch

from stable_audio_rt.bench.quality import cosine_distance
from stable_audio_rt.runtime.pipeline import StableAudio

RATE = 44100
# Replay runs the eager run's kernels; only reduction order may differ between streams.
REPLAY_COSINE_TOL = 1e-5
# Two seeds' audio from the random-weight model: independent noise, far apart (~1); the replay
# bound above is 1e-5, so anything above 1e-3 is a different request's audio.
DIFFERENT_SEEDS_MIN_COSINE = 1e-3


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
