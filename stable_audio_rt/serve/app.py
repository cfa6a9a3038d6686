"""The ASGI app: FastAPI (typed bodies whose validation errors name the field, OpenAPI docs at
/docs) on uvicorn. The pipeline is loaded and warmed before the app exists, so /health is ready
whenever it answers. Generation runs in a worker thread, one at a time on the pipeline; a bounded
count of waiting and running requests turns the next one away with 429. Bodies are JSON, or
multipart/form-data with uploaded reference audio (`bodies.py`), each checked in full before it
waits; a synchronous request whose client goes away gives its place up (at the next step
boundary once it runs)."""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from stable_audio_rt.errors import RequestError, StableAudioError
from stable_audio_rt.runtime.audio_io import audio_bytes
from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio, StepCallback
from stable_audio_rt.runtime.requests import ResolvedRequest
from stable_audio_rt.serve.bodies import MIB, BodyTooLarge, parse_generation, read_body
from stable_audio_rt.serve.jobs import Job, JobStore, Stopped
from stable_audio_rt.serve.metrics import ServeMetrics
from stable_audio_rt.serve.schema import OPENAPI_BODY, RESPONSE_FORMATS, GenerateBody

# What a client waits before retrying a full queue (seconds, the Retry-After header).
RETRY_AFTER_S = 1
# How often a request waiting for the model checks that it should still run (its client there,
# its job not cancelled or timed out), in seconds.
WAIT_POLL_S = 0.05
# What a request whose client went away answers (never sent): nginx's "client closed request".
CLIENT_CLOSED = 499
# The largest request body, uploads included (sa-serve --max-upload-mb).
DEFAULT_MAX_UPLOAD_MB = 50
# The page at /: its own inline script and style, its API calls to this server, its audio as
# blobs, and nothing else (no fetch from elsewhere: it works offline); not framed by other sites,
# since it takes the API key.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' blob:; "
    "media-src blob:; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ServeSettings:
    model_name: str  # what /v1/models lists
    api_key: str | None = None  # every endpoint but /health needs it when set
    max_queue: int = 16  # requests and jobs waiting or running before 429
    job_ttl_s: float = 3600.0  # how long a finished job's result is kept
    max_result_bytes: int = 512 * MIB  # finished results kept at most; the oldest go first
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * MIB  # a larger request body is refused (413)
    job_timeout_s: float | None = None  # a job queued or running this long after submission fails


class Generator:
    """The pipeline behind a lock, with the count of requests waiting for it."""

    def __init__(self, pipe: StableAudio, max_queue: int, metrics: ServeMetrics) -> None:
        self.pipe, self.max_queue, self.metrics = pipe, max_queue, metrics
        self.lock = threading.Lock()
        self.waiting = 0  # changed on the event loop only

    def admit(self) -> None:
        if self.waiting >= self.max_queue:
            self.metrics.requests.labels("rejected_busy").inc()
            raise HTTPException(
                429,
                f"the queue is full ({self.max_queue} requests waiting or running); retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)

    def leave(self) -> None:
        self.waiting -= 1
        self.metrics.queue_depth.set(self.waiting)

    def run(
        self, resolved: ResolvedRequest, file_format: str, on_step: StepCallback
    ) -> tuple[list[bytes], GenerationResult]:
        """Wait for the model, generate, then encode each clip (still off the event loop: a long
        clip's FLAC takes a while). `on_step(done, total)` is called while the request waits
        (with 0 done) and after each step; it raises `Stopped` to stop the request there."""
        total = resolved.request.steps
        while not self.lock.acquire(timeout=WAIT_POLL_S):
            on_step(0, total)
        try:
            on_step(0, total)
            result = self.pipe.run_resolved(resolved, on_step=on_step)
        finally:
            self.lock.release()
        return [audio_bytes(clip, result.sample_rate, file_format) for clip in result.audio], result


def create_app(pipe: StableAudio, settings: ServeSettings) -> FastAPI:
    metrics = ServeMetrics()
    page = (resources.files("stable_audio_rt.serve") / "static" / "index.html").read_text(encoding="utf-8")
    generator = Generator(pipe, settings.max_queue, metrics)

    async def encoded(
        resolved: ResolvedRequest, response_format: str, on_step: StepCallback
    ) -> tuple[list[bytes], GenerationResult]:
        """Run on the pipeline (in a worker thread) and encode; metrics for each outcome."""
        began = time.perf_counter()
        try:
            file_format = RESPONSE_FORMATS[response_format][0]
            contents, result = await anyio.to_thread.run_sync(generator.run, resolved, file_format, on_step)
        except StableAudioError:  # the request's own fault (an engine's profile): 422
            raise
        except Stopped:
            metrics.requests.labels("stopped").inc()
            raise
        except Exception:
            metrics.requests.labels("failed").inc()
            raise
        metrics.requests.labels("ok").inc()
        metrics.latency.observe(time.perf_counter() - began)
        metrics.rtf.observe(sum(result.timings.values()) / (result.audio.shape[-1] / result.sample_rate))
        metrics.batch_rows.observe(result.audio.shape[0])
        return contents, result

    async def run_job(job: Job) -> list[bytes]:
        return (await encoded(job.resolved, job.response_format, job.on_step))[0]

    store = JobStore(
        run_job, generator.leave, settings.job_ttl_s, settings.max_result_bytes, settings.job_timeout_s
    )

    async def parsed(request: Request) -> tuple[GenerateBody, ResolvedRequest]:
        """The body read under the upload limit (413), then checked and resolved off the event
        loop (422 naming the problem), all before it takes a place in the queue."""
        try:
            body = await read_body(request, settings.max_upload_bytes)
        except BodyTooLarge as e:
            metrics.requests.labels("invalid").inc()
            raise HTTPException(413, str(e)) from e
        content_type = request.headers.get("content-type", "")
        return await anyio.to_thread.run_sync(parse_generation, body, content_type, pipe.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(store.work())
        yield
        # Shutdown (SIGTERM): uvicorn has stopped accepting and finished the open requests;
        # the accepted jobs run to their end before the worker goes.
        await store.drain()
        worker.cancel()

    app = FastAPI(title="stable-audio-rt", summary="Stable Audio Open over HTTP", lifespan=lifespan)
    app.state.generator, app.state.jobs = generator, store

    def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise HTTPException(401, "missing or wrong API key: send Authorization: Bearer <key>")

    @app.exception_handler(StableAudioError)
    async def refused(request: Request, error: StableAudioError) -> JSONResponse:
        metrics.requests.labels("invalid").inc()
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("invalid").inc()
        return await request_validation_exception_handler(request, error)

    # Open without the API key: the page holds no secret, and its API calls carry the key.
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ready", "model": settings.model_name}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        config = pipe.config
        return {
            "object": "list",
            "data": [{
                "id": settings.model_name,
                "object": "model",
                "sample_rate": config.sample_rate,
                "max_seconds": config.sample_size / config.sample_rate,
                "backend": type(pipe.components).__name__,
                "device": str(pipe.device),
            }],
        }  # fmt: skip

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/audio/generate", dependencies=[Depends(authorized)], openapi_extra=OPENAPI_BODY)
    async def generate(request: Request) -> Response:
        body, resolved = await parsed(request)
        if body.n > 1:
            raise RequestError(
                f"n={body.n}: this endpoint returns one clip; submit several as a job (POST /v1/audio/jobs) "
                "and download each with GET /v1/audio/jobs/{id}/content?index=k"
            )
        generator.admit()
        gone = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, gone))

        def on_step(done: int, total: int) -> None:
            if gone.is_set():
                raise Stopped("the client disconnected")

        try:
            (content,), result = await encoded(resolved, body.response_format, on_step)
        except Stopped:  # nobody is there to read an answer
            return Response(status_code=CLIENT_CLOSED)
        finally:
            watcher.cancel()
            generator.leave()
        headers = {"X-Seed": str(result.seed), "X-Sample-Rate": str(result.sample_rate)}
        return Response(content, media_type=RESPONSE_FORMATS[body.response_format][1], headers=headers)

    def found(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, or its result expired)")
        return job

    @app.post(
        "/v1/audio/jobs", status_code=202, dependencies=[Depends(authorized)], openapi_extra=OPENAPI_BODY
    )
    async def submit(request: Request) -> JSONResponse:
        body, resolved = await parsed(request)
        generator.admit()  # its place is given back when the worker is done with it
        job = store.submit(resolved, body.response_format)
        location = f"/v1/audio/jobs/{job.id}"
        return JSONResponse(job.view(), status_code=202, headers={"Location": location})

    @app.get("/v1/audio/jobs/{job_id}", dependencies=[Depends(authorized)])
    async def status(job_id: str) -> dict:
        return found(job_id).view()

    @app.get("/v1/audio/jobs/{job_id}/content", dependencies=[Depends(authorized)])
    async def content(job_id: str, index: int = Query(0, ge=0, description="which clip (n > 1)")) -> Response:
        job = found(job_id)
        if job.status != "done":
            detail = f"job {job_id} is {job.status}"
            if job.error:
                detail += f": {job.error}"
            if job.finished is None:
                detail += f"; poll GET /v1/audio/jobs/{job_id} until it is done"
            raise HTTPException(409, detail)
        if index >= len(job.content):
            raise HTTPException(404, f"job {job_id} has {len(job.content)} clip(s): no index {index}")
        headers = {"X-Seed": str(job.resolved.seed)}
        return Response(
            job.content[index], media_type=RESPONSE_FORMATS[job.response_format][1], headers=headers
        )

    @app.delete("/v1/audio/jobs/{job_id}", dependencies=[Depends(authorized)])
    async def cancel(job_id: str) -> dict:
        job = found(job_id)
        store.cancel(job)
        return job.view()

    return app


async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set `gone` when the client closes its connection: with the body read, that is the only
    message left to receive."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()
