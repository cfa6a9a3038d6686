"""sa-serve over real HTTP on 127.0.0.1 with the tiny model: every endpoint, the audio equal to
the Python API's for the same request, bad requests refused by name before they wait, the API
key, a full queue, and the metrics. Each server stops at the end of its test module."""

import io
import json
import socket
import threading
import time
import warnings

import httpx
import numpy as np
import pytest
import soundfile as sf
from serving import QUICK, TEST_MAX_STEPS, serving

from stable_audio_rt.runtime.audio_io import audio_bytes
from stable_audio_rt.serve import app as app_module
from stable_audio_rt.serve import cli
from stable_audio_rt.serve.schema import MAX_PROMPT_CHARS

API_KEY = "test-key-not-a-secret"
# Steps the tiny model takes tens of seconds over: a request certainly still running when stopped.
LONG_STEPS = 2000


@pytest.fixture(scope="module")
def server(pipe):
    with serving(pipe, max_queue=1) as running:
        yield running


@pytest.fixture(scope="module")
def keyed(pipe):
    with serving(pipe, api_key=API_KEY) as running:
        yield running


def _wav(response: httpx.Response) -> np.ndarray:
    data, rate = sf.read(io.BytesIO(response.content), dtype="int16", always_2d=True)
    assert rate == 44100
    return data


def test_head_answers_wherever_get_does_with_gets_headers_and_no_body(server):
    job = httpx.post(f"{server.url}/v1/audio/jobs", json={"input": "x", **QUICK}, timeout=30).json()
    _finished(server, job)
    paths = [
        "/",
        "/health",
        "/metrics",
        "/v1/models",
        f"/v1/audio/jobs/{job['id']}",
        f"/v1/audio/jobs/{job['id']}/content",
    ]
    for path in paths:
        head = httpx.head(f"{server.url}{path}")
        assert server.app.state.jobs.undownloaded() == 1, "a HEAD of the clip is no download"
        got = httpx.get(f"{server.url}{path}")
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], path
    assert server.app.state.jobs.undownloaded() == 0
    # What comes over the wire (httpx reads no body after a HEAD, whatever the server sends):
    # GET's length, then nothing.
    clip = f"/v1/audio/jobs/{job['id']}/content"
    url = httpx.URL(server.url)
    with socket.create_connection((url.host, url.port)) as connection:
        connection.sendall(f"HEAD {clip} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        connection.settimeout(30)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    headers, _, after = answer.partition(b"\r\n\r\n")
    length = len(httpx.get(f"{server.url}{clip}").content)
    assert f"content-length: {length}".encode() in headers.lower() and after == b"", answer[:500]
    assert httpx.head(f"{server.url}/v1/audio/jobs/nosuch").status_code == 404
    assert httpx.head(f"{server.url}/v1/audio/generate").status_code == 405  # POST only


def test_health_and_models(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ready", "model": "tiny-random"}
    assert httpx.head(f"{server.url}/health").status_code == 200  # load balancers' probes
    (model,) = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert model["id"] == "tiny-random" and model["sample_rate"] == 44100 and model["device"] == "cpu"


def test_generate_returns_the_apis_audio_for_the_same_request(server, pipe):
    # vLLM-Omni's clients name the model; the served one is taken.
    body = {"model": "tiny-random", "input": "rain on a tin roof", "seed": 1234, **QUICK}
    response = httpx.post(f"{server.url}/v1/audio/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav" and response.headers["x-seed"] == "1234"
    assert response.headers["content-disposition"] == 'attachment; filename="seed-1234.wav"'
    served = _wav(response)
    assert served.shape == (int(0.5 * 44100), 2)
    alone = pipe.generate("rain on a tin roof", seed=1234, seconds_total=0.5, steps=2)
    assert response.content == audio_bytes(alone.audio[0], alone.sample_rate, "WAV")
    again = httpx.post(f"{server.url}/v1/audio/generate", json=body, timeout=120)
    assert again.content == response.content
    other = httpx.post(f"{server.url}/v1/audio/generate", json={**body, "seed": 1235}, timeout=120)
    assert other.headers["x-seed"] == "1235" and not np.array_equal(_wav(other), served)


def test_a_requests_warnings_reach_its_client(server):
    """What runs but likely not as meant is said to the client, not only in the server's log:
    in X-Warnings (JSON) beside the clip, and in a job's status."""
    body = {"input": "x", "negative_prompt": "hiss", "guidance_scale": 1, "guidance": "apg", "apg_scale": 0.5}
    expected = [
        "the negative prompt and guidance='apg' have no effect at a CFG scale of 1 (no unconditional pass "
        "runs); give a CFG scale above 1 to use them"
    ]
    warned = httpx.post(f"{server.url}/v1/audio/generate", json={**body, **QUICK}, timeout=120)
    assert warned.status_code == 200 and json.loads(warned.headers["x-warnings"]) == expected
    plain = httpx.post(f"{server.url}/v1/audio/generate", json={"input": "x", **QUICK}, timeout=120)
    assert plain.status_code == 200 and "x-warnings" not in plain.headers
    for job_body, warnings_said in ((body, expected), ({"input": "x"}, [])):
        job = httpx.post(f"{server.url}/v1/audio/jobs", json={**job_body, **QUICK}, timeout=120).json()
        assert job["warnings"] == warnings_said
        assert _finished(server, job)["warnings"] == warnings_said


def _finished(server, job: dict) -> dict:
    """The job's status once it has run: its place in the server's queue of one given back."""
    deadline = time.monotonic() + 60
    while job["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
        job = httpx.get(f"{server.url}/v1/audio/jobs/{job['id']}").json()
    return job


def test_a_prompt_the_model_will_not_read_whole_is_told_to_its_client(server, pipe):
    """Over T5's length a prompt runs truncated: its client hears so before the run (X-Warnings,
    a job's status), not only the server's log: once, however many clips or the same negative prompt."""
    length = pipe.config.conditioning.t5_max_length
    long = " ".join(["rain"] * length)
    told = (
        f"the prompt {long[:40]!r}… is over {length} T5 tokens; the model reads the first {length} and "
        "ignores the rest"
    )
    body = {"input": long, "negative_prompt": long, **QUICK}
    answer = httpx.post(f"{server.url}/v1/audio/generate", json=body, timeout=120)
    assert answer.status_code == 200 and json.loads(answer.headers["x-warnings"]) == [told]
    fits = httpx.post(f"{server.url}/v1/audio/generate", json={"input": "rain", **QUICK}, timeout=120)
    assert fits.status_code == 200 and "x-warnings" not in fits.headers
    job = httpx.post(f"{server.url}/v1/audio/jobs", json={**body, "n": 2}, timeout=120).json()
    assert job["warnings"] == [told] and _finished(server, job)["status"] == "done"


def test_every_format_holds_the_same_samples(server):
    base = {"input": "x", "seed": 7, **QUICK}
    wav = _wav(httpx.post(f"{server.url}/v1/audio/generate", json=base, timeout=120))
    flac = httpx.post(
        f"{server.url}/v1/audio/generate", json={**base, "response_format": "flac"}, timeout=120
    )
    assert flac.headers["content-type"] == "audio/flac"
    assert np.array_equal(sf.read(io.BytesIO(flac.content), dtype="int16", always_2d=True)[0], wav)
    pcm = httpx.post(f"{server.url}/v1/audio/generate", json={**base, "response_format": "pcm"}, timeout=120)
    assert pcm.headers["content-type"] == "application/octet-stream"
    assert np.array_equal(np.frombuffer(pcm.content, "<i2").reshape(-1, 2), wav)


BAD_BODIES = [
    ({}, "input"),
    ({"input": ""}, "input"),
    ({"input": 3}, "input"),
    ({"input": "x", "bogus": 1}, "bogus"),
    ({"input": "x", "audio_length": -1}, "audio_length"),
    ({"input": "x", "audio_length": 60}, "audio_length must be in (0, 2.97]"),  # the body's names
    (
        {"input": "x", "audio_start": 2, "audio_length": 1},
        "audio_start (2.0) must be less than audio_length",
    ),
    ({"input": "x", "num_inference_steps": 0}, "num_inference_steps"),
    (
        {"input": "x", "num_inference_steps": TEST_MAX_STEPS + 1},
        f"num_inference_steps: {TEST_MAX_STEPS + 1} is over this server's limit of {TEST_MAX_STEPS} "
        "(sa-serve --max-steps)",
    ),
    ({"input": "x", "guidance_scale": 25.5}, '"loc":["body","guidance_scale"]'),
    (
        {"input": "x", "guidance_scale": float("inf")},
        '"guidance_scale"],"msg":"Input should be a finite number"',
    ),
    ({"input": "x", "audio_length": float("nan")}, '"audio_length"],"msg":"Input should be a finite number"'),
    ({"input": "x", "model": "someone/else"}, "model 'someone/else' is not served here: this server runs"),
    ({"input": "x", "guidance_scale": -1}, "guidance_scale"),
    ({"input": "x", "seed": -1}, "seed"),
    ({"input": "x", "seed": 2**63}, "seed"),
    ({"input": "x", "response_format": "mp3"}, "response_format"),
    ({"input": "x", "guidance": "xyz"}, "guidance"),
    ({"input": "x", "apg_scale": 2}, "apg_scale"),
    (
        {"input": "x", "apg_scale": 0.5},
        "apg_scale applies to guidance='apg'; with guidance='cfg' it would do",
    ),
    # Past the library's own bound too, the server's limit is the one named (its flag can lower it).
    (
        {"input": "x", "num_inference_steps": 10_001},
        f"num_inference_steps: 10001 is over this server's limit of {TEST_MAX_STEPS} (sa-serve --max-steps)",
    ),
    # A bool or text is no number (true ran as 1 step); the seed alone is taken as text, not a bool.
    ({"input": "x", "seed": True}, '"seed"],"msg":"Input should be a valid integer, not a boolean"'),
    # T5 reads a few hundred characters; megabytes held the model while the tokenizer read them.
    ({"input": "x" * (MAX_PROMPT_CHARS + 1)}, f"String should have at most {MAX_PROMPT_CHARS} characters"),
    ({"input": "x", "negative_prompt": "x" * (MAX_PROMPT_CHARS + 1)}, '"loc":["body","negative_prompt"]'),
    (
        {"input": "x", "num_inference_steps": True},
        '"num_inference_steps"],"msg":"Input should be a valid integer"',
    ),
    ({"input": "x", "guidance_scale": True}, '"guidance_scale"],"msg":"Input should be a valid number"'),
    ({"input": "x", "audio_length": "1.5"}, '"audio_length"],"msg":"Input should be a valid number"'),
    ({"input": "x", "noise": "pink"}, "noise"),
    ({"input": "x", "window": "half"}, "window"),
    ({"input": "x", "negative_prompt": 5}, "negative_prompt"),
    ({"input": "x", "n": 0}, '"loc":["body","n"]'),
    ({"input": "x", "n": 9}, '"loc":["body","n"],"msg":"Input should be less than or equal to 8"'),
    (
        {"input": "x", "n": 2},
        "n=2: this endpoint returns one clip; submit several as a job (POST /v1/audio/jobs)",
    ),
]


@pytest.mark.parametrize("body,named", BAD_BODIES)
def test_bad_requests_are_refused_by_name_before_they_wait(server, body, named):
    server.app.state.generator.run = lambda *_: pytest.fail("a bad request reached the model")
    try:
        # As Python's json writes it: NaN and Infinity too (httpx's json= refuses them).
        content, headers = json.dumps(body), {"Content-Type": "application/json"}
        response = httpx.post(f"{server.url}/v1/audio/generate", content=content, headers=headers, timeout=30)
    finally:
        del server.app.state.generator.run  # the class's method again
    assert response.status_code == 422 and named in response.text, response.text


def test_a_field_given_twice_is_refused_not_taken_from_its_last_value(server):
    content = b'{"input": "x", "seed": 1, "seed": 2, "input": "y"}'
    response = httpx.post(f"{server.url}/v1/audio/generate", content=content, timeout=30)
    assert response.status_code == 422, response.text
    assert "the JSON body gives 'input', 'seed' more than once: give each once" in response.text


def test_a_body_that_is_not_json_is_refused(server):
    response = httpx.post(f"{server.url}/v1/audio/generate", content=b"{not json", timeout=30)
    assert response.status_code == 422 and "json" in response.text.lower()


@pytest.mark.parametrize(
    "content,named",
    [
        (b'{"input": "caf\xe9"}', "json_invalid"),
        (b"{" + b"x" * 2_000_000, "json_invalid"),
        (json.dumps({"input": "x", "k" * 2_000_000: 1}).encode(), "extra_forbidden"),
        (
            json.dumps({"input": "x", **{f"field{i}": i for i in range(20_000)}}).encode(),
            "and 19980 more errors",
        ),
        (json.dumps({"input": "x", "model": "m" * 2_000_000}).encode(), "is not served here"),
    ],
    ids=["not UTF-8", "2 MB not JSON", "a 2 MB field name", "20000 unknown fields", "a 2 MB model"],
)
def test_a_refusal_echoes_no_body_it_cannot_or_should_not_send(server, content, named):
    """Bytes that are not UTF-8 were a 500 (the echo failed to encode), and a 2 MB body, field
    name or model name came back whole in its 422."""
    headers = {"Content-Type": "application/json"}
    response = httpx.post(f"{server.url}/v1/audio/generate", content=content, headers=headers, timeout=60)
    assert response.status_code == 422 and named in response.text, response.text[:500]
    assert len(response.content) < 10_000, len(response.content)


def test_a_request_accepted_as_the_server_starts_stopping_is_refused(pipe, monkeypatch):
    """A body still arriving when the drain starts: refused once read (it got a 202 after the
    server had gone)."""
    with serving(pipe) as running:
        board, parse = running.app.state.jobs, app_module.parse_generation

        def parsed_as_the_signal_comes(*args):
            answer = parse(*args)
            board.refuse_new()  # what the drain's start does
            return answer

        monkeypatch.setattr(app_module, "parse_generation", parsed_as_the_signal_comes)
        response = httpx.post(f"{running.url}/v1/audio/jobs", json={"input": "x", **QUICK}, timeout=30)
        assert response.status_code == 503 and "the server is stopping" in response.text
        assert running.app.state.jobs.jobs == {} and running.app.state.generator.waiting == 0
        board.taking = True  # let the server stop as tests stop it


def test_steps_over_the_servers_limit_are_refused_saying_whose_they_are(pipe):
    with serving(pipe, max_steps=3) as running:
        url = f"{running.url}/v1/audio/generate"
        asked = httpx.post(url, json={"input": "x", "num_inference_steps": 4}, timeout=30)
        assert "num_inference_steps: 4 is over this server's limit of 3 (sa-serve --max-steps)" in asked.text
        default = httpx.post(url, json={"input": "x"}, timeout=30)
        assert "num_inference_steps: the model's default of 100 is over this server's limit" in default.text


@pytest.mark.parametrize("most_frames,frames", [(1000, 64), (8, 8)])
def test_the_warm_up_runs_in_the_longest_window_the_backend_takes(pipe, monkeypatch, most_frames, frames):
    """The model's window, or an engine folder's shorter profile (`sa-export --frames 1:4:8`):
    a server on such a folder used to fail its own warm-up."""
    warmed = []
    monkeypatch.setattr(cli.StableAudio, "from_plan", lambda *a, **k: pipe)
    monkeypatch.setattr(pipe.components, "most_frames", lambda: most_frames)
    monkeypatch.setattr(pipe, "generate", lambda prompt, **options: warmed.append(options))
    args = cli.build_parser().parse_args(["--model", "tiny-random"])
    cli.loaded(args, cli.settings_from_arguments(args, ""))
    (options,) = warmed
    ratio, rate = pipe.config.vae.downsampling_ratio, pipe.config.sample_rate
    assert options["frames"] == frames and 0 < options["seconds_total"] <= frames * ratio / rate


def test_an_empty_api_key_is_no_key(monkeypatch):
    monkeypatch.setenv(cli.API_KEY_VARIABLE, "")
    args = cli.build_parser().parse_args(["--model", "tiny-random"])
    assert cli.settings_from_arguments(args, "tiny-random").api_key is None


def test_a_full_queue_answers_429_and_the_waiting_request_completes(server):
    generator = server.app.state.generator  # max_queue=1
    answers = {}
    with generator.lock:  # the model is busy
        waiting = threading.Thread(
            target=lambda: answers.update(first=httpx.post(
                f"{server.url}/v1/audio/generate", json={"input": "x", **QUICK}, timeout=120))
        )  # fmt: skip
        waiting.start()
        deadline = time.monotonic() + 30
        while generator.waiting < 1:
            assert time.monotonic() < deadline, "the first request never queued"
            time.sleep(0.01)
        refused = httpx.post(f"{server.url}/v1/audio/generate", json={"input": "x", **QUICK}, timeout=30)
    waiting.join(timeout=120)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.text
    assert answers["first"].status_code == 200 and generator.waiting == 0


def test_a_long_queue_leaves_threads_to_check_and_refuse_new_requests(pipe):
    """More requests waiting for the model than anyio's shared pool has threads (40): a bad body
    is still refused at once, while they all wait."""
    waiting_count = 45
    with serving(pipe, max_queue=waiting_count + 5) as running:
        generator, answers = running.app.state.generator, []
        body = {"input": "x", "audio_length": 0.1, "num_inference_steps": 1}
        with generator.lock:  # the model is busy: every request waits in a thread
            clients = [
                threading.Thread(
                    target=lambda: answers.append(
                        httpx.post(f"{running.url}/v1/audio/generate", json=body, timeout=300).status_code
                    )
                )
                for _ in range(waiting_count)
            ]
            for client in clients:
                client.start()
            _until(lambda: generator.waiting == waiting_count, "the requests never all queued", 120)
            refused = httpx.post(
                f"{running.url}/v1/audio/generate", json={"input": "x", "seed": -1}, timeout=60
            )
            assert refused.status_code == 422 and generator.waiting == waiting_count
        for client in clients:
            client.join(timeout=300)
    assert answers == [200] * waiting_count


def _until(condition, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _abandoned(server, body: dict, read_timeout_s: float) -> threading.Thread:
    """A client that gives up waiting for the answer and closes its connection."""

    def post() -> None:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.url}/v1/audio/generate", json=body, timeout=httpx.Timeout(30, read=read_timeout_s)
            )

    client = threading.Thread(target=post)
    client.start()
    return client


def test_a_client_that_disconnects_while_queued_frees_its_place_unrun(server, monkeypatch):
    generator, ran = server.app.state.generator, []
    monkeypatch.setattr(generator.pipe, "run_resolved", lambda *a, **k: ran.append(a))
    with generator.lock:  # the model is busy: the request waits in the queue
        client = _abandoned(server, {"input": "x", **QUICK}, read_timeout_s=2)
        _until(lambda: generator.waiting == 1, "the request never queued")
        client.join(timeout=30)
        # Its place is given back while the model is still busy, so it can no longer run.
        _until(lambda: generator.waiting == 0, "the abandoned request kept its place")
    assert ran == []


def test_a_client_that_disconnects_while_running_stops_it_at_a_step(server, pipe, monkeypatch):
    generator, steps = server.app.state.generator, []

    def counted(resolved, progress=False, on_step=None):
        def step(done: int, total: int) -> None:
            steps.append(done)
            on_step(done, total)

        return type(pipe).run_resolved(pipe, resolved, progress, step)

    monkeypatch.setattr(generator.pipe, "run_resolved", counted)
    client = _abandoned(server, {"input": "x", "audio_length": 0.5, "num_inference_steps": LONG_STEPS}, 2)
    _until(lambda: steps, "the request never started")
    client.join(timeout=30)
    _until(lambda: generator.waiting == 0, "the abandoned request ran on")
    assert 0 < max(steps) < LONG_STEPS


def _counts(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("sa_")}


def test_metrics_count_outcomes(server):
    ok, invalid = 'sa_requests_total{outcome="ok"}', 'sa_requests_total{outcome="invalid"}'
    before = _counts(server)
    httpx.post(f"{server.url}/v1/audio/generate", json={"input": "x", **QUICK}, timeout=120)
    httpx.post(f"{server.url}/v1/audio/generate", json={"input": "x", "seed": -5}, timeout=30)
    httpx.post(f"{server.url}/v1/audio/generate", content="x", headers={"Content-Type": "text/plain"})  # 415
    httpx.get(f"{server.url}/v1/audio/jobs/abc/content?index=-1")  # a bad download, not a generation
    counts = _counts(server)
    assert counts[ok] - before.get(ok, 0) == 1 and counts[invalid] - before.get(invalid, 0) == 2
    assert counts["sa_request_seconds_count"] >= 1 and counts["sa_queue_depth"] == 0


def test_latency_counts_a_jobs_wait_and_the_rtf_each_pipeline_call_once(pipe):
    """sa_request_seconds is arrival to audio: a job's time queued on the board counts (it held
    only the run's time). sa_rtf is observed once per pipeline call, over all the clips it made
    (each request of a batch observed the whole call's time over its own clips)."""
    held_s = 1.0
    with serving(pipe, max_batch=4, batch_wait_ms=30_000) as running:
        url = f"{running.url}/v1/audio/jobs"
        with running.app.state.generator.lock:  # the model busy: the first job waits for it,
            first = httpx.post(url, json={"input": "x", **{**QUICK, "num_inference_steps": 3}}, timeout=30)
            _until_running(running, first.json())
            # ... and these two, which cannot join it, wait on the board, then run as one call
            jobs = [httpx.post(url, json={"input": p, "n": 2, **QUICK}, timeout=30).json() for p in "ab"]
            time.sleep(held_s)
        for job in [first.json(), *jobs]:
            assert _finished(running, job)["status"] == "done"
        counts = _counts(running)
    assert counts["sa_request_seconds_count"] == 3 and counts["sa_request_seconds_sum"] >= 3 * held_s
    assert counts["sa_batch_requests_count"] == counts["sa_rtf_count"] == 2


def _until_running(server, job: dict) -> None:
    deadline = time.monotonic() + 60
    while job["status"] != "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.01)
        job = httpx.get(f"{server.url}/v1/audio/jobs/{job['id']}").json()


def test_an_api_key_guards_all_but_health(keyed):
    assert httpx.get(f"{keyed.url}/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(f"{keyed.url}/v1/models", headers=headers)
        assert response.status_code == 401 and API_KEY not in response.text
        assert response.headers["www-authenticate"] == "Bearer"  # RFC 6750's challenge
    lowercase = {"Authorization": f"bearer {API_KEY}"}  # the scheme is case-insensitive (RFC 7235)
    assert httpx.get(f"{keyed.url}/v1/models", headers=lowercase).status_code == 200
    refused = httpx.post(f"{keyed.url}/v1/audio/generate", json={"input": "x", **QUICK}, timeout=30)
    assert refused.status_code == 401
    good = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{keyed.url}/v1/models", headers=good).status_code == 200
    assert httpx.get(f"{keyed.url}/metrics", headers=good).status_code == 200


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--max-queue", "0"], "--max-queue must be at least 1"),
        (["--port", "70000"], "--port must be in"),
        (["--job-ttl-s", "0"], "--job-ttl-s must be positive"),
        (["--job-timeout-s", "-1"], "--job-timeout-s must be positive"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
        (["--drain-grace-s", "-1"], "--drain-grace-s must be ≥ 0"),
        # NaN passes every comparison: a NaN batch wait spun a core and hung requests.
        (["--batch-wait-ms", "nan"], "--batch-wait-ms must be a finite number, got nan"),
        (["--max-upload-mb", "inf"], "--max-upload-mb must be a finite number, got inf"),
        (["--job-ttl-s", "nan"], "--job-ttl-s must be a finite number"),
        (["--job-timeout-s", "nan"], "--job-timeout-s must be a finite number"),
        (["--drain-grace-s", "nan"], "--drain-grace-s must be a finite number"),
    ],
)
def test_sa_serve_refuses_bad_options_before_loading(arguments, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "plan_from_arguments", lambda *a: pytest.fail("nothing may load"))
    assert cli.main(["--model", "tiny-random", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_the_api_docs_say_what_the_endpoints_answer(server):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns of operations sharing an operationId
        server.app.openapi_schema = None  # built afresh, whatever an earlier test asked for
        spec = server.app.openapi()
    assert spec == httpx.get(f"{server.url}/openapi.json").json()
    operations = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(operations) == len(set(operations)), operations
    assert set(spec["paths"]["/health"]) == {"get"}  # HEAD answers wherever GET does (HeadAsGet), unlisted
    assert "401" in spec["paths"]["/v1/models"]["get"]["responses"]
    generate = spec["paths"]["/v1/audio/generate"]["post"]
    assert set(generate["responses"]["200"]["content"]) == {
        "audio/wav",
        "audio/flac",
        "application/octet-stream",
    }
    assert {"401", "413", "415", "422", "429"} <= set(generate["responses"])
    content = spec["paths"]["/v1/audio/jobs/{job_id}/content"]["get"]["responses"]
    assert "audio/wav" in content["200"]["content"] and {"404", "409"} <= set(content)
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    (scheme,) = spec["components"]["securitySchemes"].values()
    assert scheme == {"type": "http", "scheme": "bearer", "description": "sa-serve --api-key"}
    assert (
        "model"
        in spec["paths"]["/v1/audio/generate"]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ]["properties"]
    )


def test_a_port_in_use_is_refused_before_loading(capsys, monkeypatch):
    monkeypatch.setattr(cli, "plan_from_arguments", lambda *a: pytest.fail("nothing may load"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["--model", "tiny-random", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "host,key,warned", [("0.0.0.0", None, True), ("0.0.0.0", "k", False), ("127.0.0.1", None, False)]
)
def test_listening_beyond_this_machine_without_a_key_warns(host, key, warned, capsys):
    class Bound:  # no socket on another interface is opened by the tests
        def getsockname(self):
            return (host, 8000)

    cli.warn_if_open(Bound(), key)
    assert ("without an API key: anyone who can reach this machine" in capsys.readouterr().err) == warned
