"""Audio-to-audio and inpainting over real HTTP on 127.0.0.1 with the tiny model: the reference
audio uploaded (multipart/form-data) beside the JSON body, on the synchronous endpoint and as a
job, the bytes equal to the Python API's for the same request and audio; bad uploads refused
(413 over the limit, 422 naming the problem) before they take a place in the queue, leaving no
job behind."""

import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import soundfile as sf
from serving import QUICK, serving

from stable_audio_rt.runtime.audio_io import audio_bytes, samples_read_for
from stable_audio_rt.serve import bodies
from stable_audio_rt.serve.app import ServeSettings, SharedJobs, create_app
from stable_audio_rt.serve.background import BackgroundServer
from stable_audio_rt.serve.bodies import MIB, decode_audio
from stable_audio_rt.serve.jobs import JobBoard

RATE = 44100
# A small upload limit, so an oversized body is quick to send.
SMALL_LIMIT = MIB // 2
POLL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server(pipe):
    with serving(pipe, max_upload_bytes=SMALL_LIMIT) as running:
        yield running


def _tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)


def _file(samples: np.ndarray, rate: int, file_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=file_format)
    return buffer.getvalue()


def _decoded(upload: bytes) -> tuple[np.ndarray, int]:
    """The upload as the server reads it: (channels, samples) float32 and its rate."""
    data, rate = sf.read(io.BytesIO(upload), dtype="float32", always_2d=True)
    return data.T.copy(), rate


def _post(server, path: str, body: dict, **files: bytes) -> httpx.Response:
    """The body as JSON, or with files as multipart/form-data."""
    if not files:
        return httpx.post(f"{server.url}{path}", json=body, timeout=POLL_TIMEOUT_S)
    uploads = {name: (f"{name}.wav", content, "audio/wav") for name, content in files.items()}
    return httpx.post(
        f"{server.url}{path}", data={"request": json.dumps(body)}, files=uploads, timeout=POLL_TIMEOUT_S
    )


def _varied_as_the_api_varies(server, pipe, prompt: str, seed: int, upload: bytes) -> httpx.Response:
    """Audio-to-audio on the upload, served; its bytes checked against the Python API's on the
    file the upload holds."""
    body = {"input": prompt, "seed": seed, "init_noise_level": 3.0, **QUICK}
    response = _post(server, "/v1/audio/generate", body, init_audio=upload)
    assert response.status_code == 200, response.text
    alone = pipe.generate(
        prompt, seed=seed, init_audio=_decoded(upload), init_noise_level=3.0, seconds_total=0.5, steps=2
    )
    assert response.content == audio_bytes(alone.audio[0], alone.sample_rate, "WAV")
    return response


def test_audio_to_audio_gives_the_apis_audio_for_the_same_upload(server, pipe):
    response = _varied_as_the_api_varies(server, pipe, "jazz drums", 3, _file(_tone(1.0, RATE, 2), RATE))
    plain = {"input": "jazz drums", "seed": 3, **QUICK}
    text_only = httpx.post(f"{server.url}/v1/audio/generate", json=plain, timeout=POLL_TIMEOUT_S)
    assert text_only.status_code == 200 and text_only.content != response.content  # the upload counts


def test_an_inpainting_job_gives_the_apis_audio_for_the_same_upload(server, pipe):
    rate = 22050  # resampled to the model's rate, as sa-run's files are
    upload = _file(_tone(1.0, rate, 1), rate, "FLAC")
    body = {"input": "guitar", "seed": 8, "keep_ranges": [[0, 0.25]], "num_inference_steps": 2}
    job = _post(server, "/v1/audio/jobs", body, inpaint_audio=upload)
    assert job.status_code == 202, job.text
    served = httpx.get(f"{_done(server, job.json()['id'])}/content")
    keep = np.zeros(RATE)  # 1 s of the reference at the model's rate, its first quarter kept
    keep[: RATE // 4] = 1
    alone = pipe.generate("guitar", seed=8, steps=2, inpaint_audio=_decoded(upload), inpaint_mask=keep)
    assert alone.audio.shape[-1] == RATE  # the clip's length is the reference's
    assert served.content == audio_bytes(alone.audio[0], alone.sample_rate, "WAV")


def test_a_long_upload_is_decoded_only_as_far_as_the_window_reaches(server, pipe):
    """1000 s at 10 Hz in 20 KB: the server decodes the window and the resampler's context, not
    hours at 44.1 kHz, and answers the API's audio for the whole clip."""
    rate = 10
    upload = _file(np.random.default_rng().uniform(-0.5, 0.5, (1000 * rate, 1)), rate)
    samples, _ = decode_audio("init_audio", upload, pipe.config)
    assert samples.shape[-1] == samples_read_for(pipe.config.sample_size, rate, RATE) < 1000 * rate
    _varied_as_the_api_varies(server, pipe, "drone", 4, upload)


def _done(server, job_id: str) -> str:
    """The job's URL once it is done."""
    url = f"{server.url}/v1/audio/jobs/{job_id}"
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while (view := httpx.get(url).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    assert view["status"] == "done", view
    return url


TONE = _file(_tone(1.0, RATE, 2), RATE)
BAD_UPLOADS = [
    ({"init_audio": b"not audio at all"}, {}, "init_audio: cannot read the upload as audio"),
    ({"init_audio": _file(np.zeros((0, 2)), RATE)}, {}, "init_audio: the uploaded audio is empty"),
    (
        {"init_audio": TONE, "inpaint_audio": TONE},
        {"keep_ranges": [[0, 0.5]]},
        "give init_audio (audio-to-audio) or inpaint_audio (inpainting), not both",
    ),
    ({"inpaint_audio": TONE}, {}, "inpainting needs either keep_ranges (what of an inpaint_audio upload"),
    (
        {"inpaint_audio": TONE},
        {"keep_ranges": [[0, 0.5]], "inpaint_ranges": [[0.5, 1]]},
        "give keep_ranges or inpaint_ranges, not both",
    ),
    (
        {"inpaint_audio": TONE},
        {"keep_ranges": [[0.5, 0.9]], "window": "trim", "audio_length": 0.3},
        "keep_ranges/inpaint_ranges marks parts of inpaint_audio past the window this request generates",
    ),
    (
        {"inpaint_audio": TONE},
        {"keep_ranges": [[0.5, 5]]},
        "keep_ranges: 0.5,5.0 is outside inpaint_audio (0–1.00 s)",
    ),
    (
        {"inpaint_audio": TONE},
        {"inpaint_ranges": [[0.6, 0.2]]},
        "inpaint_ranges: 0.6,0.2 is outside inpaint_audio",
    ),
    (
        {"inpaint_audio": _file(_tone(4.0, 8000, 1), 8000)},  # past the tiny model's window
        {"inpaint_ranges": [[3, 3.5]]},
        "inpaint_ranges: 3.0,3.5 is outside the model's window (0–2.97 s)",
    ),
    ({"inpaint_audio": TONE}, {"keep_ranges": [[0.5]]}, '"keep_ranges",0'),
    ({}, {"inpaint_ranges": [[0, 1]]}, "keep_ranges/inpaint_ranges need an inpaint_audio upload"),
    (
        {"init_audio": TONE},
        {"init_noise_level": 0.2},
        "init_noise_level (0.2) must be greater than the schedule's end, σmin (0.3)",
    ),
    ({"init_audio": TONE}, {"init_noise_level": -1}, '"init_noise_level"'),
    ({}, {"init_noise_level": 2}, "init_noise_level needs an init_audio upload"),
    ({"audio": TONE}, {}, "unknown multipart field 'audio'"),
]


@pytest.mark.parametrize("files,fields,named", BAD_UPLOADS, ids=[named for *_, named in BAD_UPLOADS])
@pytest.mark.parametrize("path", ["/v1/audio/generate", "/v1/audio/jobs"])
def test_bad_uploads_are_refused_by_name_before_they_wait(server, path, files, fields, named):
    response = _refused(server, lambda: _post(server, path, {"input": "x", **QUICK, **fields}, **files))
    assert response.status_code == 422 and named in response.text, response.text


def _refused(server, send: Callable[[], httpx.Response]) -> httpx.Response:
    """`send()`'s answer, checking it reached neither the model nor the queue, and left no job."""
    generator, jobs = server.app.state.generator, server.app.state.jobs.jobs
    before = set(jobs)
    generator.run = lambda *_: pytest.fail("a refused request reached the model")
    try:
        response = send()
    finally:
        del generator.run  # the class's method again
    assert generator.waiting == 0 and set(jobs) == before
    return response


def _multipart(server, content: bytes, content_type: str) -> httpx.Response:
    headers = {"Content-Type": content_type}
    return httpx.post(f"{server.url}/v1/audio/jobs", content=content, headers=headers, timeout=30)


BOUNDARY = "b0undary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
REQUEST_PART = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="request"\r\n\r\n{{"input": "x"}}\r\n'
BAD_FORMS = [
    ("multipart/form-data", REQUEST_PART, "malformed multipart body: No boundary given"),
    (FORM, "no delimiter anywhere", "malformed multipart body: Expected boundary character"),
    (
        FORM,
        REQUEST_PART.removesuffix("\r\n"),
        "malformed multipart body: it ends before its closing boundary",
    ),
    (
        FORM,
        f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--",
        'a part has no name; give each part Content-Disposition: form-data; name=\\"request\\" or',
    ),
    (FORM, REQUEST_PART + REQUEST_PART + f"--{BOUNDARY}--", "multipart field 'request' is given twice"),
    (FORM, f"--{BOUNDARY}--", "a multipart body needs a 'request' field holding the JSON body"),
    (
        FORM,
        REQUEST_PART.replace('"x"}', '"x",') + f"--{BOUNDARY}--",
        '"type":"json_invalid","loc":["body"',
    ),
    (
        FORM,
        REQUEST_PART
        + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="init_audio"\r\n\r\n/etc/passwd\r\n'
        + f"--{BOUNDARY}--",
        "init_audio must be an uploaded file (e.g. curl -F init_audio=@clip.wav), not a text field",
    ),
]


@pytest.mark.parametrize("content_type,content,named", BAD_FORMS, ids=[named for *_, named in BAD_FORMS])
def test_malformed_multipart_bodies_are_refused_by_name(server, content_type, content, named):
    response = _refused(server, lambda: _multipart(server, content.encode(), content_type))
    assert response.status_code == 422 and named in response.text, response.text


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_other_content_types_are_refused(server, content_type):
    """Not read as JSON: a web page may post these cross-origin without the browser asking first."""
    send = lambda: _multipart(server, b'{"input": "x"}', content_type)  # noqa: E731
    response = _refused(server, send)
    assert response.status_code == 415 and f"unsupported Content-Type '{content_type}'" in response.text


def test_a_hand_written_multipart_body_is_read(server):
    """curl's and browsers' form: the JSON as a file part too."""
    body = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="request"; filename="body.json"\r\n'
        f"Content-Type: application/json\r\n\r\n"
        f'{{"input": "x", "audio_length": 0.5, "num_inference_steps": 2, "seed": 1}}\r\n--{BOUNDARY}--\r\n'
    )
    response = _multipart(server, body.encode(), FORM)
    assert response.status_code == 202 and response.json()["seed"] == 1, response.text
    _done(server, response.json()["id"])


def test_a_path_given_as_audio_in_json_is_refused(server):
    body = {"input": "x", "init_audio": "/etc/passwd"}
    response = _refused(server, lambda: httpx.post(f"{server.url}/v1/audio/generate", json=body, timeout=30))
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["msg"].startswith("init_audio is not a JSON field: upload the audio as the file field")
    assert "ctx" not in error  # was {"error": {}}: the exception object, unserialisable


@pytest.mark.parametrize("chunked", [False, True], ids=["declared length", "chunked"])
def test_an_upload_over_the_limit_is_413_naming_it(server, chunked):
    upload = TONE * 4  # ~700 kB > SMALL_LIMIT
    assert len(upload) > SMALL_LIMIT
    url = f"{server.url}/v1/audio/generate"
    if chunked:  # no Content-Length: refused as it streams in
        form = httpx.Request("POST", url, data={"request": '{"input": "x"}'}, files={"init_audio": upload})
        headers = {"Content-Type": form.headers["content-type"]}
        response = _refused(server, lambda: httpx.post(url, content=iter(form.stream), headers=headers))
    else:
        response = _refused(
            server, lambda: _post(server, "/v1/audio/generate", {"input": "x"}, init_audio=upload)
        )
    assert response.status_code == 413, response.text
    assert "over the upload limit of 0.5 MiB (sa-serve --max-upload-mb)" in response.text


HEAD_OF_A_BODY = (
    b"POST /v1/audio/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 1000\r\n\r\n{"input":'
)


def _slow_bodies(server, count: int) -> list[socket.socket]:
    """`count` connections that each send a body's first bytes, then nothing."""
    url = httpx.URL(server.url)
    connections = [socket.create_connection((url.host, url.port)) for _ in range(count)]
    for connection in connections:
        connection.sendall(HEAD_OF_A_BODY)
    return connections


def test_bodies_arriving_are_bounded_and_a_client_gone_mid_upload_is_quiet(pipe, capfd):
    """At most --max-queue bodies arrive at once (clients cannot hold more in the server's memory),
    refused at once past that; they hold no place in the queue; one whose client goes mid-upload
    leaves without a traceback in the log."""
    with serving(pipe, max_queue=2) as running:
        generator = running.app.state.generator
        slow = _slow_bodies(running, 2)
        try:
            _until(lambda: generator.arriving == 2)
            began = time.monotonic()
            more = httpx.post(f"{running.url}/v1/audio/generate", json={"input": "x", **QUICK}, timeout=30)
            assert more.status_code == 429 and "2 request bodies are arriving already" in more.text, more.text
            assert time.monotonic() - began < 5  # refused as it came, not after a read timed out
            assert generator.waiting == 0, "arriving bodies take no place in the queue"
        finally:
            for connection in slow:
                connection.close()
        _until(lambda: generator.arriving == 0)
        fine = httpx.post(f"{running.url}/v1/audio/generate", json={"input": "x", **QUICK}, timeout=60)
        assert fine.status_code == 200
    logged = capfd.readouterr().err  # uvicorn's own handler writes to the process's stderr
    assert "Exception in ASGI application" not in logged and "ClientDisconnect" not in logged, logged


@contextmanager
def _one_request_waiting(server) -> Iterator[None]:
    """The model held while the block runs, one synchronous request waiting for it; answered after."""
    generator = server.app.state.generator
    with generator.lock:
        waiting = threading.Thread(
            target=httpx.post,
            args=(f"{server.url}/v1/audio/generate",),
            kwargs={"json": {"input": "x", **QUICK}, "timeout": 60},
        )
        waiting.start()
        _until(lambda: generator.waiting == 1)
        yield
    waiting.join(timeout=60)


def test_a_request_for_a_full_queue_is_refused_before_its_body_is_read(pipe):
    with serving(pipe, max_queue=1) as running:
        with _one_request_waiting(running):  # the queue of one is full
            (connection,) = _slow_bodies(running, 1)  # its body never comes
            with connection:
                connection.settimeout(30)
                answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 429") and b"the queue is full" in answer, answer


def test_a_body_that_trickles_in_is_refused_once_it_falls_behind(pipe, monkeypatch):
    monkeypatch.setattr(bodies, "BODY_GRACE_S", 0.5)
    with serving(pipe) as running:
        (connection,) = _slow_bodies(running, 1)  # 22 bytes, then nothing: behind at once
        with connection:
            connection.settimeout(30)
            answer = connection.recv(4096)
        _until(lambda: running.app.state.generator.arriving == 0)
    assert answer.startswith(b"HTTP/1.1 408") and b"came in slower than 64 KiB/s" in answer, answer


def test_a_job_for_a_shared_board_is_not_refused_for_the_replicas_own_queue(pipe):
    """Under Ray Serve the board bounds jobs; a replica's queue of synchronous requests does not."""
    board = JobBoard(3600.0, 1 << 30)
    app = create_app(pipe, ServeSettings("tiny-random", max_queue=1), SharedJobs(board, "replica"))
    running = BackgroundServer(app)
    try:
        with _one_request_waiting(running):  # the replica's queue of one is full
            job = httpx.post(f"{running.url}/v1/audio/jobs", json={"input": "y", **QUICK}, timeout=30)
            assert job.status_code == 202, job.text
    finally:
        running.stop()


def _until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)
