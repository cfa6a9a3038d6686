"""sa-serve's jobs over real HTTP on 127.0.0.1 with the tiny model: submit → poll → download
gives the synchronous endpoint's bytes; unknown ids, early downloads, cancelling a queued and a
running job, a failing job, and results expiring after their time to live."""

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from reference_path import REFERENCE_PATH
from serving import QUICK

from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.serve.app import ServeSettings, create_app
from stable_audio_rt.serve.background import BackgroundServer

POLL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def pipe():
    return StableAudio.load("tiny-random", device="cpu", cuda_graph=False, **REFERENCE_PATH)


@pytest.fixture(scope="module")
def server(pipe):
    running = BackgroundServer(create_app(pipe, ServeSettings("tiny-random", max_queue=4)))
    yield running
    running.stop()


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
    assert job["status"] in ("queued", "running") and job["seed"] == 99 and job["steps"] == 2
    assert _wait(server, job["id"], "done", "failed")["status"] == "done"
    content = httpx.get(f"{server.url}/v1/audio/jobs/{job['id']}/content")
    sync = httpx.post(f"{server.url}/v1/audio/generate", json=body, timeout=120)
    assert content.status_code == 200 and content.headers["content-type"] == "audio/flac"
    assert content.headers["x-seed"] == "99" and content.content == sync.content


def test_unknown_jobs_and_bad_bodies(server):
    assert httpx.get(f"{server.url}/v1/audio/jobs/nope").status_code == 404
    assert httpx.get(f"{server.url}/v1/audio/jobs/nope/content").status_code == 404
    assert httpx.delete(f"{server.url}/v1/audio/jobs/nope").status_code == 404
    refused = httpx.post(f"{server.url}/v1/audio/jobs", json={"input": "x", "audio_length": 60})
    assert refused.status_code == 422 and "seconds_total must be in" in refused.text
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


def test_a_failing_job_reports_its_error_and_the_next_one_runs(server, monkeypatch):
    generator = server.app.state.generator
    calls = []

    def fail_once(resolved, file_format):
        calls.append(resolved)
        if len(calls) == 1:
            raise RuntimeError("the device fell over")
        return type(generator).run(generator, resolved, file_format)

    monkeypatch.setattr(generator, "run", fail_once)
    failed, fine = _submit(server, {"input": "x", **QUICK}), _submit(server, {"input": "y", **QUICK})
    view = _wait(server, failed["id"], "failed", "done")
    assert view["status"] == "failed" and "the device fell over" in view["error"]
    assert _wait(server, fine["id"], "done", "failed")["status"] == "done"


def test_results_expire_after_their_time_to_live(pipe):
    running = BackgroundServer(create_app(pipe, ServeSettings("tiny-random", job_ttl_s=0.5)))
    try:
        job = _submit(running, {"input": "x", **QUICK})
        _wait(running, job["id"], "done")
        time.sleep(1.0)
        assert httpx.get(f"{running.url}/v1/audio/jobs/{job['id']}").status_code == 404
    finally:
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


def test_sigterm_finishes_every_accepted_job_then_exits():
    with socket.socket() as probe:  # a free port for the server process
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "stable_audio_rt.serve.cli", "--model", "tiny-random",
               "--device", "cpu", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "sa-serve did not start"
            time.sleep(0.2)
        accepted = [
            httpx.post(f"{url}/v1/audio/jobs", json={"input": p, **QUICK}).json()["id"] for p in "abc"
        ]
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=POLL_TIMEOUT_S)
    finally:
        process.kill()
    # uvicorn re-raises the signal once its graceful shutdown is over: killed by SIGTERM, after.
    assert process.returncode == -signal.SIGTERM and "Application shutdown complete" in log, log[-3000:]
    finished = log.index("Application shutdown complete")
    assert all(-1 < log.find(f"job {job_id} done") < finished for job_id in accepted), log[-3000:]
