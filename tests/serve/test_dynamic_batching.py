"""sa-serve's dynamic batching over real HTTP on 127.0.0.1 with the tiny model: concurrent
requests that can share a pipeline call run as one batch, each answered with its own audio (what
the Python API gives it alone, within the batch's float32 rounding: tests/runtime/test_batching.py);
a request that fails in a batch gets its own error while its batch-mates complete; a job cancelled
in a running batch is discarded while its batch-mate finishes; the batch-size metric."""

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import soundfile as sf
from serving import QUICK, serving

from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request
from stable_audio_rt.serve.batching import Generator
from stable_audio_rt.serve.jobs import Claim, Stopped
from stable_audio_rt.serve.metrics import ServeMetrics

# Every request of a batch is already waiting when the model is let go (`_held_until_waiting`),
# so the window only makes a batch that could take more wait a moment: no timing to win.
BATCH_WAIT_MS = 20
MAX_BATCH = 4
# Each row of a batch differs from its request alone by float32 rounding amplified by the random
# decoder (≤ 1.2e-4 of the largest sample, tests/runtime/test_batching.py): a few 16-bit steps.
PCM_TOLERANCE = 4e-4
POLL_TIMEOUT_S = 60


@pytest.fixture
def server(pipe):
    with serving(pipe, max_batch=MAX_BATCH, batch_wait_ms=BATCH_WAIT_MS) as running:
        yield running


@contextmanager
def _held_until_waiting(server, requests: int) -> Iterator[None]:
    """The model held while the block sends requests, and let go once `requests` of them wait
    for it: they meet the batcher together however slowly their threads start."""
    generator = server.app.state.generator
    with generator.lock:
        yield
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while len(generator.pending) < requests:
            assert time.monotonic() < deadline, f"{len(generator.pending)} of {requests} requests arrived"
            time.sleep(0.01)


def _post_together(server, bodies: list[dict]) -> list[httpx.Response]:
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def post(k: int) -> None:
        responses[k] = httpx.post(f"{server.url}/v1/audio/generate", json=bodies[k], timeout=120)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(len(bodies))]
    with _held_until_waiting(server, len(bodies)):
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return responses


def _metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} "))


def test_concurrent_requests_run_as_one_batch_each_with_its_own_audio(server, pipe):
    bodies = [
        {"input": "rain", "seed": 1, "guidance_scale": 7.0, **QUICK},
        {"input": "wind", "seed": 2, "guidance_scale": 3.0, **QUICK},
        {"input": "drums", "seed": 3, "guidance_scale": 5.0, **QUICK},
    ]
    responses = _post_together(server, bodies)
    assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
    assert (_metric(server, "sa_batch_requests_count"), _metric(server, "sa_batch_requests_sum")) == (1, 3)
    for body, response in zip(bodies, responses, strict=True):
        assert response.headers["x-seed"] == str(body["seed"])
        served, _ = sf.read(io.BytesIO(response.content), dtype="float32", always_2d=True)
        alone = pipe.generate(
            body["input"], seed=body["seed"], cfg_scale=body["guidance_scale"], seconds_total=0.5, steps=2
        ).audio[0]
        expected = alone.clamp(-1, 1).T.numpy()
        assert np.abs(served - expected).max() <= PCM_TOLERANCE * np.abs(expected).max() + 2**-15


def test_requests_that_cannot_share_a_batch_run_apart(server):
    bodies = [
        {"input": "a", "seed": 1, **QUICK},
        {"input": "b", "seed": 2, "audio_length": 0.5, "num_inference_steps": 3},
    ]
    assert [r.status_code for r in _post_together(server, bodies)] == [200, 200]
    assert (_metric(server, "sa_batch_requests_count"), _metric(server, "sa_batch_requests_sum")) == (2, 2)


def test_a_request_that_fails_in_a_batch_gets_its_own_error(server, pipe, monkeypatch):
    def broken_batch(resolved, on_step=None, progress=False):
        if len(resolved) > 1:  # a batch of one is how run_resolved runs
            raise RuntimeError("the batch fell over")
        return type(pipe).run_batch(pipe, resolved, on_step, progress)

    def fails_for_bad(resolved, progress=False, on_step=None):
        if resolved.request.prompts == ("bad",):
            raise RuntimeError("this request fell over")
        return type(pipe).run_resolved(pipe, resolved, progress, on_step)

    monkeypatch.setattr(pipe, "run_batch", broken_batch)
    monkeypatch.setattr(pipe, "run_resolved", fails_for_bad)
    bodies = [{"input": p, "seed": 1, **QUICK} for p in ("good", "bad", "fine")]
    assert [r.status_code for r in _post_together(server, bodies)] == [200, 500, 200]
    assert _metric(server, "sa_batch_requests_sum") == 3


def _wait(server, job_id: str, *statuses: str) -> dict:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while (view := httpx.get(f"{server.url}/v1/audio/jobs/{job_id}").json())["status"] not in statuses:
        assert time.monotonic() < deadline, view
        time.sleep(0.02)
    return view


def _submit(server, body: dict) -> str:
    response = httpx.post(f"{server.url}/v1/audio/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


@pytest.fixture
def pair_server(pipe):
    """Batches of two that wait for their second clip as long as a test waits: a claimed pair of
    jobs becomes one batch however far apart its two threads reach the batcher."""
    with serving(pipe, max_batch=2, batch_wait_ms=POLL_TIMEOUT_S * 1000) as running:
        yield running


def test_jobs_posted_one_after_another_to_an_idle_server_start_as_one_batch(pipe):
    """The idle worker's claim of the first job waits for the next (up to the batch wait, here
    longer than a test: the batch is full once the third arrives, and starts then)."""
    with serving(pipe, max_batch=3, batch_wait_ms=POLL_TIMEOUT_S * 1000) as server:
        ids = [_submit(server, {"input": prompt, "seed": 1, **QUICK}) for prompt in ("a", "b", "c")]
        assert all(_wait(server, job, "done", "failed")["status"] == "done" for job in ids)
        batches = _metric(server, "sa_batch_requests_count"), _metric(server, "sa_batch_requests_sum")
    assert batches == (1, 3)


def test_a_job_whose_claim_ended_its_wait_starts_without_waiting_again_in_the_batcher(pipe):
    """The claim of the first job ends once a job that cannot join it is queued (the second fills
    a batch alone); the first then runs at once, not after a second batch wait in the batcher
    (here longer than the test waits: the old double wait failed it)."""
    with serving(pipe, max_batch=2, batch_wait_ms=2 * POLL_TIMEOUT_S * 1000) as server:
        lone = _submit(server, {"input": "a", "seed": 1, **QUICK})
        full = _submit(server, {"input": "b", "seed": 1, "n": 2, **QUICK})
        assert [_wait(server, job, "done", "failed")["status"] for job in (lone, full)] == ["done", "done"]
        batches = _metric(server, "sa_batch_requests_count"), _metric(server, "sa_batch_requests_sum")
    assert batches == (2, 2)


def test_a_claimed_job_stopped_before_its_batch_formed_is_waited_for_no_more(pipe):
    """Its claim's batch-mate, already forming its batch, starts at once (it waited the whole
    batch wait for a job that would never come)."""
    generator = Generator(pipe, 4, ServeMetrics(), max_batch=4, batch_wait_s=2 * POLL_TIMEOUT_S)
    resolved = resolve_request(GenerationRequest(("x",), seconds_total=0.5, steps=2, seed=1), pipe.config)
    first, second = (Claim(job, 1, resolved, "wav", ("a", "b")) for job in ("a", "b"))
    answered = []
    running = threading.Thread(
        target=lambda: answered.append(generator.run(resolved, "WAV", lambda done, total: None, first))
    )
    running.start()
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while generator.pending or not generator.lock.locked():  # its batch is forming: it waits for "b"
        assert time.monotonic() < deadline
        time.sleep(0.01)

    def cancelled(done: int, total: int) -> None:
        raise Stopped("job b cancelled")

    with pytest.raises(Stopped):
        generator.run(resolved, "WAV", cancelled, second)
    running.join(timeout=POLL_TIMEOUT_S)
    assert len(answered) == 1, "its batch still waited for the stopped job"


def test_a_job_cancelled_in_a_running_batch_is_discarded_and_its_batch_mate_finishes(pair_server):
    server, long = pair_server, {"audio_length": 0.5, "num_inference_steps": 100}
    generator = server.app.state.generator
    with generator.lock:  # the model is busy with a first job: the next two queue behind it
        first = _submit(server, {"input": "x", "n": 2, **QUICK})  # a full batch: it runs at once
        _wait(server, first, "running")
        cancelled, finished = _submit(server, {"input": "a", **long}), _submit(server, {"input": "b", **long})
    while _wait(server, cancelled, "running", "done")["steps_done"] < 1:  # they start as one batch
        time.sleep(0.01)
    assert _wait(server, finished, "running", "done")["status"] == "running"
    assert httpx.delete(f"{server.url}/v1/audio/jobs/{cancelled}").json()["status"] == "cancelled"
    view = _wait(server, finished, "done", "failed")
    assert view["status"] == "done" and view["steps_done"] == long["num_inference_steps"]
    assert httpx.get(f"{server.url}/v1/audio/jobs/{cancelled}").json()["status"] == "cancelled"
    assert (_metric(server, "sa_batch_requests_count"), _metric(server, "sa_batch_requests_sum")) == (2, 3)
