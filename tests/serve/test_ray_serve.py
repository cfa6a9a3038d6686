"""sa-serve on Ray Serve, on a Ray started and stopped here (127.0.0.1, CPU replicas of the tiny
model). `sa-serve --ray` itself: it serves, and SIGTERM drains it as sa-serve in one process
(new work refused, the running job finished and downloaded), also while it deploys. Then, built from
the Serve config file's builder as `serve run` would: both replicas answer the
same API with the same bytes as one server; a job is read and cancelled through either; and with
one replica killed under load every request ends (answered, or an error; none hangs), the replica
is replaced and serves, and the jobs submitted before the kill finish."""

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile
from serving import QUICK, TEST_MAX_STEPS, free_port, wait_healthy

from stable_audio_rt.runtime.audio_io import audio_bytes
from stable_audio_rt.serve import cli
from stable_audio_rt.serve.jobs import JobBoard
from stable_audio_rt.serve.ray_options import options_to_argv

ray = pytest.importorskip("ray", reason="Ray Serve is the [ray] extra (pip install -e '.[ray]')")
import yaml  # noqa: E402 (Ray's dependency)
from ray import serve  # noqa: E402

from stable_audio_rt.serve import ray_serve  # noqa: E402

CONFIG = Path(__file__).parents[2] / "deploy" / "ray-serve.yaml"
RAYSERVICE = Path(__file__).parents[2] / "deploy" / "kuberay-rayservice.yaml"
# The tiny model on the reference path, two replicas of one CPU each.
ARGS = {"model": "tiny-random", "device": "cpu", "dtype": "fp32", "kernels": "torch", "replicas": 2,
        "max_steps": TEST_MAX_STEPS}  # fmt: skip
# Time bounds (seconds): Ray and two replicas starting on 2 busy cores; one request (it may wait
# behind a long job); a replica replaced and warmed.
START_S, REQUEST_S, REPLACE_S = 240, 120, 180
# Long jobs: still running when the replica dies (a few seconds of tiny-model steps on one
# thread). Their steps differ, so they never share a batch: each replica's worker claims one.
LONG_STEPS = (400, 500)
# The autoscaled app: one replica to start, two at most, one request or job each at a time,
# a replica added after the load has called for it UPSCALE_DELAY_S (Serve's default: 30 s); a
# backlog of jobs that keeps one replica busy for minutes (the test cancels what is left once the
# second replica runs), and how long the scale-up may take on a busy 2-core machine (120 s
# measured with Serve's default delay).
SCALED_APP = "sa-serve-scaled"
UPSCALE_DELAY_S = 2
SCALED = {**{k: v for k, v in ARGS.items() if k != "replicas"}, "min_replicas": 1, "max_replicas": 2,
          "max_batch": 1, "upscale_delay_s": UPSCALE_DELAY_S}  # fmt: skip
BACKLOG_JOBS, BACKLOG_STEPS = 24, 800
SCALE_UP_S = 300
# One step of a 16-bit sample.
ONE_SAMPLE_STEP = 1


@pytest.fixture(scope="module")
def cluster():
    ray_serve.start_local_ray(num_cpus=4, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_serve.app_builder(ARGS), name=ray_serve.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _replicas_answering(url: str, method: str, path: str, **kwargs) -> list[httpx.Response]:
    """Answers asked one after another until both replicas have answered, within REQUEST_S.
    Serve's router picks between idle replicas at random: a fixed count of 8 met one replica
    alone about once in 128 runs."""
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + REQUEST_S
    while len({a.headers["x-replica"] for a in answers}) < 2:
        assert time.monotonic() < deadline, f"one replica answered all {len(answers)} requests"
        answers.append(httpx.request(method, f"{url}{path}", timeout=REQUEST_S, **kwargs))
    return answers


def test_sa_serve_ray_serves_then_sigterm_drains_the_jobs_and_serves_their_results():
    """The command line: a local Ray started, the app deployed, a job run; SIGTERM (as `kill` or
    `docker stop` sends it) drains as sa-serve in one process does: new work gets 503 (and
    /health, so a load balancer routes it away) while the running job ends and its result stays
    downloadable; once downloaded, everything stops. First in this file: no other Ray runs
    beside it."""
    port = free_port()
    command = [sys.executable, "-m", "stable_audio_rt.serve.cli", "--ray", "--model", "tiny-random",
               "--device", "cpu", "--replicas", "1", "--port", str(port),
               "--drain-grace-s", str(REQUEST_S)]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, START_S)
        job = httpx.post(f"{url}/v1/audio/jobs", json={"input": "x", "audio_length": 0.5,
                                                      "num_inference_steps": 300}).json()["id"]  # fmt: skip
        deadline = time.monotonic() + REQUEST_S
        while _view(url, job)["steps_done"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        while httpx.get(f"{url}/health", timeout=REQUEST_S).status_code != 503:  # the stop reaches it
            assert time.monotonic() < deadline
            time.sleep(0.1)
        refused = httpx.post(f"{url}/v1/audio/jobs", json={"input": "y", **QUICK}, timeout=REQUEST_S)
        assert refused.status_code == 503 and "the server is stopping" in refused.text
        assert _ended(url, job, deadline)["status"] == "done"
        assert httpx.get(f"{url}/v1/audio/jobs/{job}/content", timeout=REQUEST_S).status_code == 200
        log, _ = process.communicate(timeout=REQUEST_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, log[-3000:]
    drained = log.index("sa-serve: stopping: nothing left to run or download")
    assert -1 < log.find(f"job {job} done") < drained, log[-3000:]


def test_sa_serve_ray_stops_at_a_signal_while_it_deploys():
    """Replicas Ray cannot place (more CPUs each than the machine has) leave the deploy waiting
    for ever: SIGTERM stops it and says so. Before the cluster below starts: no other Ray runs
    beside it."""
    port = free_port()
    command = [sys.executable, "-m", "stable_audio_rt.serve.cli", "--ray", "--model", "tiny-random",
               "--device", "cpu", "--replica-cpus", "1000", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    reading = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reading.start()
    try:
        deadline = time.monotonic() + START_S
        while not any("sa-serve: deploying on Ray" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=REQUEST_S)
        reading.join(timeout=REQUEST_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    log = "".join(lines)
    assert process.returncode == 0, log[-3000:]
    # Its job board may be up already (it takes no CPU): a drain then finds nothing accepted.
    stops = ("stopping without a drain: the app had not finished deploying", "stopping: nothing left to run")
    assert any(stop in log for stop in stops), log[-3000:]
    assert "serving on http" not in log, log[-3000:]


class _BoardHandle:
    """A DeploymentHandle onto a JobBoard in this process, on one event loop of its own."""

    def __init__(self, board: JobBoard) -> None:
        self.board, self.loop, self.calls = board, asyncio.new_event_loop(), []

    def __getattr__(self, method: str):
        handle = self

        class Call:
            def remote(self, *args):
                handle.calls.append(method)
                answer = handle.loop.run_until_complete(getattr(handle.board, method)(*args))
                return SimpleNamespace(result=lambda timeout_s=None: answer)

        return Call()


@pytest.mark.parametrize("cut_short", [False, True])
def test_the_ray_drain_waits_for_the_boards_jobs_or_a_second_signal(pipe, monkeypatch, cut_short):
    """`_drain` over the shared board without a cluster: new work refused, then it waits while a
    job runs (a second signal cancels it instead), then closes the board so workers stop."""
    from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request

    board = JobBoard(3600.0, 1 << 30)
    handle = _BoardHandle(board)
    resolved = resolve_request(GenerationRequest(("x",), seconds_total=0.5, steps=2), pipe.config)
    job = handle.loop.run_until_complete(board.submit(resolved, "wav", None))["id"]
    (claim,) = handle.loop.run_until_complete(board.claim("replica", 1, 0))
    monkeypatch.setattr(ray_serve.serve, "get_deployment_handle", lambda *a, **k: handle)
    polls = []

    def second_signal() -> bool:  # the job ends after a few polls, unless a signal comes first
        polls.append(1)
        if len(polls) == 3 and not cut_short:
            handle.loop.run_until_complete(board.finish(job, claim.attempt, 2, [b"clip"], None))
            handle.loop.run_until_complete(board.read(job, 0, download=True))
        return cut_short

    assert ray_serve._drain(5.0, second_signal, serving=True)
    assert not board.taking and board.closed
    assert board.jobs[job].status == ("cancelled" if cut_short else "done")
    assert ("cancel_all" in handle.calls) == cut_short
    assert handle.loop.run_until_complete(board.claim("replica", 1, 0)) is None  # workers stop


def test_the_ray_drain_does_nothing_where_no_board_is_up(monkeypatch):
    def no_app(*args, **kwargs):
        raise RuntimeError("no such application")

    monkeypatch.setattr(ray_serve.serve, "get_deployment_handle", no_app)
    assert ray_serve._drain(5.0, lambda: False, serving=False) is False


def test_the_config_files_name_this_builder_and_sa_serves_options():
    config = yaml.safe_load(CONFIG.read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "stable_audio_rt.serve.ray_serve:app_builder"
    argv = options_to_argv(application["args"])
    args = cli.build_parser().parse_args(argv)
    assert args.model == application["args"]["model"] and args.max_replicas is not None
    service = yaml.safe_load(RAYSERVICE.read_text())
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"] == config["applications"]


# Loopback in /proc/net/tcp and tcp6's hex: 127.0.0.1, and the same as a v4-mapped v6 address.
LOOPBACK_HEX = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
LISTEN_STATE = "0A"


def _listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc writes them) of sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == LISTEN_STATE and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_local_ray_listens_on_this_machine_only(cluster):
    # Ray would have taken the machine's network address, and bound every interface with it.
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    gcs = ray.get_runtime_context().gcs_address
    addresses = _listening_addresses(int(gcs.rsplit(":", 1)[1]))
    assert gcs.startswith("127.0.0.1:") and addresses and addresses <= set(LOOPBACK_HEX), addresses


def test_both_replicas_answer_with_one_servers_bytes(cluster, pipe):
    body = {"input": "rain", "seed": 7, **QUICK}
    answers = _replicas_answering(cluster, "POST", "/v1/audio/generate", json=body)
    alone = pipe.generate("rain", seed=7, seconds_total=0.5, steps=2)
    assert {a.status_code for a in answers} == {200} and len({a.content for a in answers}) == 1
    # A replica computes with one thread (Ray sets its CPUs), this process with more: fp32 sums in
    # another order, ~1e-6 apart, may round to the neighbouring 16-bit sample and no further.
    served = soundfile.read(io.BytesIO(answers[0].content), dtype="int16")[0].astype(np.int32)
    here = soundfile.read(io.BytesIO(audio_bytes(alone.audio[0], alone.sample_rate, "WAV")), dtype="int16")
    assert np.abs(served - here[0]).max() <= ONE_SAMPLE_STEP
    assert len({a.headers["x-replica"] for a in answers}) == 2, "one replica answered every request"


def test_a_job_is_read_and_cancelled_through_either_replica(cluster):
    job = httpx.post(f"{cluster}/v1/audio/jobs", json={"input": "x", **QUICK}, timeout=REQUEST_S).json()
    readers, view = set(), job
    deadline = time.monotonic() + REQUEST_S
    while len(readers) < 2 or view["status"] != "done":
        answer = httpx.get(f"{cluster}/v1/audio/jobs/{job['id']}")
        view = answer.json()
        readers.add(answer.headers["x-replica"])
        assert time.monotonic() < deadline, (readers, view)
    contents = _replicas_answering(cluster, "GET", f"/v1/audio/jobs/{job['id']}/content")
    assert len({c.headers["x-replica"] for c in contents}) == 2 and len({c.content for c in contents}) == 1
    long = httpx.post(f"{cluster}/v1/audio/jobs", json={"input": "y", "audio_length": 0.5,
                                                        "num_inference_steps": 5000}).json()  # fmt: skip
    cancelled = httpx.delete(f"{cluster}/v1/audio/jobs/{long['id']}").json()
    views = _replicas_answering(cluster, "GET", f"/v1/audio/jobs/{long['id']}")
    assert cancelled["status"] == "cancelled" and {v.json()["status"] for v in views} == {"cancelled"}
    assert len({v.headers["x-replica"] for v in views}) == 2


class _Load:
    """Clients posting short requests back to back until stopped; every request's outcome kept."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.stop = url, threading.Event()
        self.outcomes: list[tuple[float, str, str | None]] = []  # (time, outcome, replica)
        self.threads = [threading.Thread(target=self._client, args=(k,)) for k in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, k: int) -> None:
        with httpx.Client(timeout=REQUEST_S) as client:
            while not self.stop.is_set():
                body = {"input": f"load {k}", **QUICK}
                try:
                    answer = client.post(f"{self.url}/v1/audio/generate", json=body)
                except httpx.TimeoutException:
                    self.outcomes.append((time.monotonic(), "hung", None))
                except httpx.TransportError as e:
                    self.outcomes.append((time.monotonic(), f"connection: {e}", None))
                else:
                    replica = answer.headers.get("x-replica")
                    self.outcomes.append((time.monotonic(), str(answer.status_code), replica))

    def replicas_since(self, since: float) -> Counter:
        return Counter(r for t, outcome, r in list(self.outcomes) if t > since and outcome == "200")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(REQUEST_S + 10)
            assert not thread.is_alive(), "a client never got an answer"


def test_a_replica_killed_under_load_is_replaced_and_no_request_hangs(cluster):
    load = _Load(cluster, clients=4)
    try:
        began = time.monotonic()
        while len(load.replicas_since(began)) < 2:
            assert time.monotonic() < began + REQUEST_S, load.outcomes[-10:]
            time.sleep(0.1)
        jobs = [
            httpx.post(f"{cluster}/v1/audio/jobs", json={"input": f"long {steps}", "audio_length": 0.5,
                                                         "num_inference_steps": steps}).json()["id"]
            for steps in LONG_STEPS
        ]  # fmt: skip
        while not all(_view(cluster, job)["steps_done"] > 0 for job in jobs):  # one on each replica
            assert time.monotonic() < began + REQUEST_S, [_view(cluster, job) for job in jobs]
            time.sleep(0.2)
        victim, survivor = list(load.replicas_since(began))
        killed = time.monotonic()  # before the kill: no failure it causes can precede it
        ray.kill(_replica_actor(victim), no_restart=True)
        while len(set(load.replicas_since(killed)) - {victim}) < 2:  # the survivor and a new one
            assert time.monotonic() < killed + REPLACE_S, Counter(o for _, o, _ in load.outcomes)
            time.sleep(0.5)
        replaced = time.monotonic()
    finally:
        load.finish()
    outcomes = Counter(outcome for _, outcome, _ in load.outcomes)
    assert outcomes["hung"] == 0 and outcomes["200"] > 0, outcomes
    failed = [(t, outcome) for t, outcome, _ in load.outcomes if outcome != "200"]
    assert all(killed <= t <= replaced and not outcome.startswith("4") for t, outcome in failed), (
        f"only requests caught by the kill may fail, and with a server's error: {failed}"
    )
    assert victim not in load.replicas_since(replaced)
    attempts = []
    for job in jobs:  # one ran on the killed replica: queued again once its lease ran out
        view = _ended(cluster, job, time.monotonic() + REPLACE_S)
        assert view["status"] == "done" and view["steps_done"] == view["steps_total"], view
        assert httpx.get(f"{cluster}/v1/audio/jobs/{job}/content").status_code == 200
        attempts.append(view["attempts"])
    assert sorted(attempts) == [1, 2], "the killed replica's job ran again elsewhere; the other once"
    status = serve.status().applications[ray_serve.APP_NAME].deployments[ray_serve.INGRESS_NAME]
    assert status.replica_states.get("RUNNING") == 2, status


def _view(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/audio/jobs/{job_id}", timeout=REQUEST_S).json()


def _ended(url: str, job_id: str, deadline: float) -> dict:
    """The job's view once it is no longer queued or running (before `deadline`)."""
    while (view := _view(url, job_id))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, view
        time.sleep(0.2)
    return view


def _replica_actor(unique_id: str):
    (name,) = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].endswith(f"#{ray_serve.INGRESS_NAME}#{unique_id}")
    ]
    return ray.get_actor(name, namespace="serve")


def test_a_backlog_of_jobs_alone_adds_a_replica(cluster):
    """Autoscaling counts the jobs running and queued as requests (`jobs_and_requests_policy`):
    with no HTTP request in flight, a queue of jobs takes a second app from one replica to two
    (after the upscale delay asked for, `--upscale-delay-s`); the jobs cancelled then each end at
    once."""
    serve.run(ray_serve.app_builder(SCALED), name=SCALED_APP, route_prefix="/scaled")
    try:
        url = f"{cluster}/scaled"
        jobs = [
            httpx.post(f"{url}/v1/audio/jobs", json={"input": f"backlog {k}", "audio_length": 0.5,
                                                     "num_inference_steps": BACKLOG_STEPS}).json()["id"]
            for k in range(BACKLOG_JOBS)
        ]  # fmt: skip
        deadline = time.monotonic() + SCALE_UP_S
        while _running_replicas(SCALED_APP) < 2:
            assert time.monotonic() < deadline, [_view(url, job)["status"] for job in jobs]
            time.sleep(1)
        # The rest of the backlog is not needed: each stops at a step boundary (one done already is
        # deleted: its answer is its last view).
        answers = [httpx.delete(f"{url}/v1/audio/jobs/{job}").json() for job in jobs]
        views = [a if a["status"] == "done" else _ended(url, a["id"], deadline) for a in answers]
        assert {view["status"] for view in views} <= {"done", "cancelled"}, views
        # The backlog ran, whichever came first on this machine (a job's end or the new replica):
        # a job done, or one cancelled part-way.
        assert any(view["status"] == "done" or view["steps_done"] > 0 for view in views), views
    finally:
        serve.delete(SCALED_APP)


def _running_replicas(app: str) -> int:
    status = serve.status().applications[app].deployments[ray_serve.INGRESS_NAME]
    return status.replica_states.get("RUNNING", 0)
