"""Whole-request CUDA graphs on a real GPU: replay equals the eager run in every mode, later
requests of one shape replay with their own inputs, a replay allocates nothing, and requests on
worker threads (as sa-serve runs them) capture and replay as on one thread."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from stable_audio_rt.bench.quality import cosine_distance
from stable_audio_rt.runtime.audio_io import audio_bytes
from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio
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
# A WAV of 16-bit stereo holds at least this many bytes per sample frame.
BYTES_PER_STEREO_PCM16_SAMPLE = 4


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


def test_each_graph_counts_its_pool_and_the_memory_cap_evicts(pipes):
    """A capture records the memory its private pool holds (torch.cuda.graph empties the cache on
    entry, which once cancelled the pool against the warm-up's freed blocks: about 0 bytes, and
    the cap on the graphs' memory never evicted). The pool is the segments torch's allocator
    files under the graph's pool id; a cap of one graph's pool keeps only the newest."""
    graphed, _ = pipes
    cache = graphed.graphs
    cache.clear()
    saved_cap = cache.max_bytes
    try:
        # Step counts no other test here uses (its cache is emptied around this test anyway).
        graphed.generate("x", seconds_total=1.0, steps=11, seed=1)
        first_shape, first = next(iter(cache.entries.items()))
        pool = first.graph.pool()
        in_pool = sum(s["total_size"] for s in torch.cuda.memory_snapshot() if s["segment_pool_id"] == pool)
        assert in_pool > 0 and first.bytes >= in_pool
        cache.max_bytes = first.bytes
        graphed.generate("x", seconds_total=1.0, steps=12, seed=1)
        assert first_shape not in cache.entries and len(cache.entries) == 1
    finally:
        cache.max_bytes = saved_cap
        cache.clear()


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


# sa-serve's worker threads (serve/app.py: each request on a thread of a pool, the model held by
# one at a time, the others resolving their requests and encoding their audio meanwhile).
WORKER_THREADS = 4


def test_worker_threads_capture_and_replay_as_sa_serve_runs_them(pipes, generator):
    """Requests on a pool of threads, as sa-serve runs them, alone or in batches of two (its
    dynamic batching): each of the three shapes captured once by whichever thread meets it first
    and replayed by the others, no capture failed (a failure falls back to eager with only a
    warning), and each answer its request's eager run alone."""
    graphed, eager = pipes
    seeds = iter(torch.randint(0, 2**31, (10,), generator=generator).tolist())
    # Step counts no other test of this module uses: shapes this test captures itself, (5 steps,
    # 1 row), (6, 1) and (5, 2), met by 3, 2 and 2 of the 7 pipeline calls.
    batches = [[5], [6], [5, 5], [5], [6], [5, 5], [5]]
    work = [
        [
            GenerationRequest((f"prompt {k}",), seconds_total=1.0, steps=steps, seed=next(seeds))
            for steps in batch
        ]
        for k, batch in enumerate(batches)
    ]
    model = threading.Lock()

    def serve(requests: list[GenerationRequest]) -> list[tuple[GenerationResult, bytes]]:
        resolved = [resolve_request(r, graphed.config) for r in requests]  # off the model, as parsed
        with model:
            results = graphed.run_batch(resolved)
        return [(r, audio_bytes(r.audio[0], r.sample_rate, "WAV")) for r in results]  # off it too

    before = graphed.graphs.captures, graphed.graphs.replays
    with ThreadPoolExecutor(WORKER_THREADS) as pool:
        answers = [answer for batch in pool.map(serve, work) for answer in batch]
    after = graphed.graphs.captures, graphed.graphs.replays
    assert not graphed.graphs.failed, f"captures failed for {graphed.graphs.failed}"
    assert (after[0] - before[0], after[1] - before[1]) == (3, len(batches) - 3)
    requests = [request for batch in work for request in batch]
    for request, (result, wav) in zip(requests, answers, strict=True):
        alone = eager.run(request)
        assert cosine_distance(result.latents, alone.latents) <= REPLAY_COSINE_TOL
        # A batch's rows may sum in another order than one row alone (as in the batch test above).
        assert cosine_distance(result.audio, alone.audio) <= BATCH_AUDIO_COSINE_TOL
        assert len(wav) > result.audio.shape[-1] * BYTES_PER_STEREO_PCM16_SAMPLE
