"""sa-serve's jobs over real HTTP on 127.0.0.1 with the tiny model: submit → poll → download
gives the synchronous endpoint's bytes; several clips per job; the steps done while it runs;
unknown ids, early downloads, cancelling a queued and a running job (stopped at a step), jobs
timing out, a failing job, results expiring after their time to live, and a real SIGTERM."""

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import httpx
import pytest
import torch
import uvicorn
from serving import QUICK, TEST_MAX_STEPS, free_port, serving, wait_healthy

from stable_audio_rt.runtime.audio_io import audio_bytes
from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request
from stable_audio_rt.serve.app import CLAIM_WAIT_S, ServeSettings, create_app
from stable_audio_rt.serve.background import BackgroundServer
from stable_audio_rt.serve.draining import Drain, DrainingServer
from stable_audio_rt.serve.jobs import JobBoard

POLL_TIMEOUT_S = 120
# Steps the tiny model takes tens of seconds over: a job certainly still running when stopped.
LONG = {"audio_length": 0.5, "num_inference_steps": 2000}


@pytest.fixture(scope="module")
def server(pipe):
    with serving(pipe, max_queue=4) as running:
        yield running


def _wait(server, job_id: str, *statuses: str) -> dict:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        view = httpx.get(f"{server.url}/v1/audio/jobs/{job_id}").json()
        if view["status"] in statuses:
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


def _submit(server, body: dict) -> dict:
    response = httpx.post(f"{server.url}/v1/audio/jobs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/audio/jobs/{response.json()['id']}"
    return response.json()


def test_a_job_gives_the_synchronous_endpoints_audio(server):
    body = {"input": "rain", "seed": 99, "response_format": "flac", **QUICK}
    job = _submit(server, body)
    assert job["status"] in ("queued", "running") and job["seed"] == 99 and job["steps_total"] == 2
    assert _wait(server, job["id"], "done", "failed")["status"] == "done"
    content = httpx.get(f"{server.url}/v1/audio/jobs/{job['id']}/content")
    sync = httpx.post(f"{server.url}/v1/audio/generate", json=body, timeout=120)
    assert content.status_code == 200 and content.headers["content-type"] == "audio/flac"
    assert content.headers["x-seed"] == "99" and content.content == sync.content
    assert content.headers["x-sample-rate"] == "44100"  # a pcm clip's rate is known only from it
    disposition = f'attachment; filename="{job["id"]}-0.flac"'  # what `curl -OJ` saves it as
    assert content.headers["content-disposition"] == disposition


def test_a_job_of_n_clips_gives_each_of_the_apis_clips(server, pipe):
    job = _submit(server, {"input": "rain", "seed": 5, "n": 2, **QUICK})
    assert job["n"] == 2
    _wait(server, job["id"], "done")
    alone = pipe.generate("rain", seed=5, num_outputs=2, seconds_total=0.5, steps=2)
    url = f"{server.url}/v1/audio/jobs/{job['id']}/content"
    clips = [httpx.get(url, params={"index": k}).content for k in range(2)]
    assert clips == [audio_bytes(clip, alone.sample_rate, "WAV") for clip in alone.audio]
    assert clips[0] != clips[1] and httpx.get(url).content == clips[0]  # index 0 by default
    beyond = httpx.get(url, params={"index": 2})
    assert beyond.status_code == 404 and "has 2 clip(s): no index 2" in beyond.text
    assert httpx.get(url, params={"index": -1}).status_code == 422


def test_a_running_jobs_status_counts_its_steps(server):
    generator, steps = server.app.state.generator, 100
    with generator.lock:  # held until the job is seen running with no step done
        job = _submit(server, {"input": "x", "audio_length": 0.5, "num_inference_steps": steps})
        view = _wait(server, job["id"], "running")
        assert (view["steps_done"], view["steps_total"]) == (0, steps)
    seen, deadline = [], time.monotonic() + POLL_TIMEOUT_S
    while (view := httpx.get(f"{server.url}/v1/audio/jobs/{job['id']}").json())["status"] == "running":
        assert time.monotonic() < deadline, view
        seen.append(view["steps_done"])
        time.sleep(0.01)
    assert view["status"] == "done" and view["steps_done"] == steps
    assert seen == sorted(seen) and any(0 < done < steps for done in seen), seen


def test_the_pipeline_reports_each_step_and_stops_when_told(pipe):
    """What job progress and stopping are built on: `run_resolved(on_step=...)`, run eagerly."""
    resolved = resolve_request(GenerationRequest(("x",), seed=4, seconds_total=0.5, steps=3), pipe.config)
    calls = []
    reported = pipe.run_resolved(resolved, on_step=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert torch.equal(reported.audio, pipe.run_resolved(resolved).audio)

    def stop_after_two(done: int, total: int) -> None:
        calls.append(done)
        if done == 2:
            raise InterruptedError("stop here")

    calls.clear()
    with pytest.raises(InterruptedError, match="stop here"):
        pipe.run_resolved(resolved, on_step=stop_after_two)
    assert calls == [1, 2]


def test_unknown_jobs_and_bad_bodies(server):
    assert httpx.get(f"{server.url}/v1/audio/jobs/nope").status_code == 404
    assert httpx.get(f"{server.url}/v1/audio/jobs/nope/content").status_code == 404
    assert httpx.delete(f"{server.url}/v1/audio/jobs/nope").status_code == 404
    refused = httpx.post(f"{server.url}/v1/audio/jobs", json={"input": "x", "audio_length": 60})
    assert refused.status_code == 422 and "audio_length must be in" in refused.text
    assert server.app.state.generator.waiting == 0, "a refused job holds no place"


def test_cancelling_a_queued_and_a_running_job(server):
    generator = server.app.state.generator
    with generator.lock:  # the model is busy: the first job runs (waits for it), the second queues
        running = _submit(server, {"input": "a", **QUICK})
        _wait(server, running["id"], "running")
        queued = _submit(server, {"input": "b", **QUICK})
        early = httpx.get(f"{server.url}/v1/audio/jobs/{queued['id']}/content")
        assert early.status_code == 409 and "is queued; poll GET" in early.text
        assert httpx.delete(f"{server.url}/v1/audio/jobs/{queued['id']}").json()["status"] == "cancelled"
        assert httpx.delete(f"{server.url}/v1/audio/jobs/{running['id']}").json()["status"] == "cancelled"
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while generator.waiting:  # both places given back once the worker is done with them
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for job in (running, queued):
        assert _wait(server, job["id"], "cancelled", "done")["status"] == "cancelled"
        gone = httpx.get(f"{server.url}/v1/audio/jobs/{job['id']}/content")
        assert gone.status_code == 409 and "is cancelled" in gone.text


def test_deleting_a_finished_job_frees_its_result_and_a_cancelled_one_on_a_second_delete(server):
    done = _submit(server, {"input": "a", **QUICK})["id"]
    _wait(server, done, "done")
    url = f"{server.url}/v1/audio/jobs"
    deleted = httpx.delete(f"{url}/{done}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "done"
    assert httpx.get(f"{url}/{done}").status_code == 404
    assert httpx.get(f"{url}/{done}/content").status_code == 404
    assert done not in server.app.state.jobs.jobs, "its result is freed"
    with server.app.state.generator.lock:  # queued behind the held model: cancelled unrun
        cancelled = _submit(server, {"input": "b", **QUICK})["id"]
        assert httpx.delete(f"{url}/{cancelled}").json()["status"] == "cancelled"
    assert _wait(server, cancelled, "cancelled", "done")["status"] == "cancelled", "still readable"
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while server.app.state.jobs.jobs[cancelled].owner is not None:  # its worker hands it in
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.delete(f"{url}/{cancelled}").json()["status"] == "cancelled"
    assert httpx.get(f"{url}/{cancelled}").status_code == 404


def test_cancelling_a_job_mid_run_stops_it_at_a_step(server):
    generator = server.app.state.generator
    job = _submit(server, {"input": "x", **LONG})
    _stepping(server, job["id"])
    assert httpx.delete(f"{server.url}/v1/audio/jobs/{job['id']}").json()["status"] == "cancelled"
    _free(generator)  # long before its 2000 steps could end
    view = httpx.get(f"{server.url}/v1/audio/jobs/{job['id']}").json()
    assert view["status"] == "cancelled" and view["steps_done"] < view["steps_total"]


def _stepping(server, job_id: str) -> None:
    """Until the job has run a step."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while _wait(server, job_id, "running")["steps_done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _free(generator, timeout_s: float = 30) -> None:
    """Until every place in the queue is given back."""
    deadline = time.monotonic() + timeout_s
    while generator.waiting:
        assert time.monotonic() < deadline, "a place was never given back"
        time.sleep(0.05)


def test_jobs_time_out_queued_and_running(pipe):
    timeout_s = 1.0
    running = BackgroundServer(
        create_app(pipe, ServeSettings("tiny-random", job_timeout_s=timeout_s, max_steps=TEST_MAX_STEPS))
    )
    try:
        generator, message = running.app.state.generator, "timed out after 1 s (sa-serve --job-timeout-s)"
        with generator.lock:  # the model is busy: one job waits for it, one in the queue
            first = _submit(running, {"input": "a", **QUICK})
            _wait(running, first["id"], "running")
            second = _submit(running, {"input": "b", **QUICK})
            time.sleep(timeout_s)
            for job in (first, second):
                view = _wait(running, job["id"], "failed")
                assert view["error"] == message and view["steps_done"] == 0
        _free(generator)
        stepping = _submit(running, {"input": "c", **LONG})  # times out mid-run
        view = _wait(running, stepping["id"], "failed", "done")
        assert view["status"] == "failed" and view["error"] == message
        _free(generator)  # stopped at a step, long before its 2000 steps could end
        assert httpx.get(f"{running.url}/v1/audio/jobs/{stepping['id']}").json()["steps_done"] < 2000
        quick = _submit(running, {"input": "d", **QUICK})  # the worker goes on
        assert _wait(running, quick["id"], "done", "failed")["status"] == "done"
    finally:
        running.stop()


def test_a_failing_job_reports_its_error_and_the_next_one_runs(server, monkeypatch):
    generator = server.app.state.generator
    calls = []

    def fail_once(resolved, file_format, on_step, claim=None):
        calls.append(resolved)
        if len(calls) == 1:
            raise RuntimeError("the device fell over")
        return type(generator).run(generator, resolved, file_format, on_step, claim)

    monkeypatch.setattr(generator, "run", fail_once)
    failed, fine = _submit(server, {"input": "x", **QUICK}), _submit(server, {"input": "y", **QUICK})
    view = _wait(server, failed["id"], "failed", "done")
    assert view["status"] == "failed" and "the device fell over" in view["error"]
    assert _wait(server, fine["id"], "done", "failed")["status"] == "done"


def test_results_expire_after_their_time_to_live(pipe, clock):
    """The board's clock moved by the test: a busy machine cannot outlive the TTL by accident."""
    ttl_s = 60.0
    running = BackgroundServer(create_app(pipe, ServeSettings("tiny-random", job_ttl_s=ttl_s)))
    try:
        job = _submit(running, {"input": "x", **QUICK})
        _wait(running, job["id"], "done")
        url = f"{running.url}/v1/audio/jobs/{job['id']}"
        clock.advance(0.99 * ttl_s)
        assert httpx.get(url).status_code == 200 and httpx.get(f"{url}/content").status_code == 200
        clock.advance(0.02 * ttl_s)
        assert httpx.get(url).status_code == 404
    finally:
        clock.advance(CLAIM_WAIT_S)  # the idle worker's claim ends by the board's clock: let it
        running.stop()


def test_the_result_cap_evicts_the_oldest(pipe):
    running = BackgroundServer(create_app(pipe, ServeSettings("tiny-random", max_result_bytes=150_000)))
    try:  # one 0.5 s stereo WAV is ~88 kB: the cap holds one
        first, second = (_submit(running, {"input": p, **QUICK}) for p in "ab")
        _wait(running, second["id"], "done")  # every read first forgets what is over the cap
        assert httpx.get(f"{running.url}/v1/audio/jobs/{first['id']}").status_code == 404
        assert httpx.get(f"{running.url}/v1/audio/jobs/{second['id']}/content").status_code == 200
    finally:
        running.stop()


def test_sigterm_drains_every_accepted_job_and_serves_its_result_then_exits():
    """Every accepted job ends known, and its client can fetch it: after SIGTERM new work gets
    503 while the running and queued jobs finish and stay downloadable; once each is downloaded
    the process exits by itself (a cancelled one is logged as such); none is lost silently."""
    port = free_port()
    command = [sys.executable, "-m", "stable_audio_rt.serve.cli", "--model", "tiny-random",
               "--device", "cpu", "--port", str(port), "--drain-grace-s", str(POLL_TIMEOUT_S)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        server = SimpleNamespace(url=f"http://127.0.0.1:{port}")  # what _submit and _wait read
        wait_healthy(server.url, process, POLL_TIMEOUT_S)
        # Long enough to be seen running while the others wait: 200 steps.
        running = _submit(server, {"input": "a", "audio_length": 0.5, "num_inference_steps": 200})["id"]
        queued = [_submit(server, {"input": p, **QUICK})["id"] for p in "bc"]
        cancelled = _submit(server, {"input": "d", **QUICK})["id"]
        httpx.delete(f"{server.url}/v1/audio/jobs/{cancelled}")
        _stepping(server, running)
        assert [_wait(server, job_id, "queued")["status"] for job_id in queued] == ["queued"] * 2
        process.send_signal(signal.SIGTERM)
        refused = httpx.post(f"{server.url}/v1/audio/jobs", json={"input": "e", **QUICK}, timeout=30)
        assert refused.status_code == 503 and "the server is stopping" in refused.text
        health = httpx.get(f"{server.url}/health")  # a load balancer's probe: route new work away
        assert health.status_code == 503 and health.json()["status"] == "stopping"
        for job_id in [running, *queued]:  # still answering: each finishes and is downloaded
            _wait(server, job_id, "done")
            assert httpx.get(f"{server.url}/v1/audio/jobs/{job_id}/content").status_code == 200
        _, log = process.communicate(timeout=POLL_TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0 and "Application shutdown complete" in log, log[-3000:]
    drained = log.index("stopping: nothing left to run or download")
    assert all(-1 < log.find(f"job {job_id} done") < drained for job_id in [running, *queued]), log[-3000:]
    assert -1 < log.find(f"job {cancelled} cancelled") < drained, log[-3000:]


def test_a_drain_waits_for_every_clips_download_only_as_long_as_its_grace(pipe):
    board, busy = JobBoard(ttl_s=3600, max_result_bytes=2**20), [1]
    drain = Drain(lambda: (busy[0], board.undownloaded()), 5.0, board.refuse_new)
    assert not drain.over(0.0), "not draining"
    resolved = resolve_request(
        GenerationRequest(("x",), seconds_total=0.5, steps=2, seed=1, num_outputs=2), pipe.config
    )

    async def submitted() -> list[str]:
        return [(await board.submit(resolved, "wav", None))["id"] for _ in range(2)]

    async def download(job_id: str, index: int) -> None:
        assert (await board.read(job_id, index, download=True)).clip is not None

    fetched, left = asyncio.run(submitted())
    for job_id in (fetched, left):
        job = board.jobs[job_id]
        job.status, job.content, job.finished = "done", [b"clip 0", b"clip 1"], time.monotonic()
    assert board.taking
    drain.start()
    assert not board.taking, "new work refused"
    assert not drain.over(100.0), "a job still running"
    busy[0] = 0
    asyncio.run(board.read(fetched, 0))  # a status read is no download
    for job_id, index in ((fetched, 0), (fetched, 1), (left, 0)):
        asyncio.run(download(job_id, index))
    assert not drain.over(100.0) and not drain.over(104.9), "a clip not yet downloaded, within the grace"
    assert drain.over(105.0)
    asyncio.run(download(left, 1))
    drain.idle_since = None
    assert drain.over(105.0), "every clip downloaded"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_the_jobs_and_requests_left_at_once_and_exits_by_it(stop):
    """The jobs left are cancelled and an open synchronous request stopped at its next step
    (its client gets 503) at the second signal, not after minutes of steps; the exit status is
    128 + the signal's (Ctrl-C's is 130), with a line saying so, and no traceback."""
    port = free_port()
    command = [sys.executable, "-m", "stable_audio_rt.serve.cli", "--model", "tiny-random", "--device", "cpu",
               "--port", str(port), "--max-steps", str(TEST_MAX_STEPS), "--max-batch", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    answered: list[httpx.Response] = []
    try:
        server = SimpleNamespace(url=f"http://127.0.0.1:{port}")
        wait_healthy(server.url, process, POLL_TIMEOUT_S)
        jobs = [_submit(server, {"input": p, **LONG})["id"] for p in "ab"]  # minutes of steps each
        _stepping(server, jobs[0])
        url = f"{server.url}/v1/audio/generate"
        sync = threading.Thread(
            target=lambda: answered.append(httpx.post(url, json={"input": "c", **LONG}, timeout=300))
        )
        sync.start()
        _until_answered(server.url, lambda _: _queued(server) == 3)  # the request waits behind the jobs
        process.send_signal(stop)
        _until_answered(server.url, lambda health: health.status_code == 503)  # draining
        process.send_signal(stop)
        _, log = process.communicate(timeout=POLL_TIMEOUT_S)
        sync.join(timeout=POLL_TIMEOUT_S)
    finally:
        process.kill()
    assert all(f"job {job_id} cancelled" in log for job_id in jobs), log[-3000:]
    assert "Application shutdown complete" in log and "Traceback" not in log, log[-3000:]
    assert process.returncode == 128 + stop, (process.returncode, log[-3000:])
    assert f"stopped by a second {stop.name}" in log
    (response,) = answered
    assert response.status_code == 503 and "a second stop signal" in response.text, response.text


def test_a_signal_after_the_drain_is_over_cuts_nothing_short():
    """Once drained, the server is stopping anyway: a signal then only hurries uvicorn, and the
    exit is a drained one (it said 'the jobs left were cancelled' and 143)."""
    drain = Drain(lambda: (0, 0), 5.0, lambda: None, on_cut_short=lambda: pytest.fail("nothing to cancel"))
    server = DrainingServer(uvicorn.Config(_app_never_called), drain)
    server.handle_exit(signal.SIGTERM, None)
    assert drain.started and drain.over(time.monotonic())
    server.handle_exit(signal.SIGTERM, None)
    assert not drain.cut_short and drain.signal is None and server.force_exit


async def _app_never_called(scope, receive, send) -> None:  # never called: no server runs
    raise AssertionError(scope)


def _queued(server) -> float:
    """sa-serve's queue depth: requests and jobs waiting or running."""
    text = httpx.get(f"{server.url}/metrics").text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("sa_queue_depth "))


def _until_answered(url: str, answered: Callable[[httpx.Response], bool]) -> None:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while not answered(httpx.get(f"{url}/health")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
