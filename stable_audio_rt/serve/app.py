"""The ASGI app: FastAPI (typed bodies whose validation errors name the field, OpenAPI docs at
/docs) on uvicorn. The pipeline is loaded and warmed before the app exists, so /health is ready
whenever it answers. Generation runs in worker threads, one pipeline call at a time; requests
that can share a call (`StableAudio.batch_key`) and wait for the model together run as one batch
(`batching.Generator`); a bounded count of waiting and running requests turns the next one away
with 429.
Bodies are JSON, or multipart/form-data with uploaded reference audio (`bodies.py`), each checked
in full before it waits; a synchronous request whose client goes away gives its place up (at the
next step boundary once it runs, unless batch-mates still run)."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp

from stable_audio_rt.errors import RequestError, StableAudioError
from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio, StepCallback
from stable_audio_rt.runtime.requests import ResolvedRequest
from stable_audio_rt.serve.batching import RETRY_AFTER_S, Generator
from stable_audio_rt.serve.bodies import MIB, BodyTooLarge, BodyTooSlow, parse_generation, read_body
from stable_audio_rt.serve.draining import DEFAULT_DRAIN_GRACE_S, Drain
from stable_audio_rt.serve.jobs import Board, Claim, JobBoard, JobWorker, Reading, Stopped
from stable_audio_rt.serve.metrics import ServeMetrics
from stable_audio_rt.serve.schema import (
    AUDIO_CONTENT,
    BODY_RESPONSES,
    ERROR_RESPONSES,
    OPENAPI_BODY,
    RESPONSE_FORMATS,
    GenerateBody,
)

# What a request whose client went away answers (never sent): nginx's "client closed request".
CLIENT_CLOSED = 499
MS_PER_S = 1000
# How often a job's worker reports its steps to the board and learns which to stop (seconds): to
# the board in this process, and to a board shared by Ray Serve replicas.
LOCAL_REPORT_S = 0.05
SHARED_REPORT_S = 0.5
# How long a worker's claim waits for a job to be queued before it asks again (seconds).
CLAIM_WAIT_S = 1.0
# A refused value is echoed in the 422 only up to this many characters of JSON (a 50 MB body is not).
ECHO_LIMIT = 200
ECHOED_ERRORS = 20  # the most validation errors a 422 lists
JOB_RESPONSES = {**ERROR_RESPONSES, 404: {"description": "no such job (unknown, or its result expired)"}}
# The API key as a Bearer credential, read as RFC 6750 says (the scheme in any case); /docs
# documents it and can send it.
BearerCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, description="sa-serve --api-key")),
]
# The most sampler steps a request may ask for (sa-serve --max-steps): the range of
# stable-audio-tools' own web UI (its gradio slider, 1–500), so that one request cannot hold the
# model for hours.
DEFAULT_MAX_STEPS = 500
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
    max_steps: int = DEFAULT_MAX_STEPS  # a request asking for more sampler steps is refused (422)
    # After a stop signal, how long finished jobs' results wait to be downloaded (`draining.py`).
    drain_grace_s: float = DEFAULT_DRAIN_GRACE_S
    job_timeout_s: float | None = None  # a job queued or running this long after submission fails
    # Clips (rows) one pipeline call may run for requests that share a batch key; 1: no batching
    # (sa-serve's own default is DEFAULT_MAX_BATCH).
    max_batch: int = 1
    batch_wait_ms: float = 0.0  # how long a batch waits for more requests to join it


@dataclass(frozen=True)
class SharedJobs:
    """Jobs on a board that other servers share (Ray Serve replicas): it bounds them (a full board
    refuses a job, 429), and this server's worker runs its share of them as `owner`."""

    board: Board
    owner: str


def create_app(pipe: StableAudio, settings: ServeSettings, shared: SharedJobs | None = None) -> FastAPI:
    """The app on `pipe`; its jobs on a board of its own unless `shared`."""
    metrics = ServeMetrics()
    page = (resources.files("stable_audio_rt.serve") / "static" / "index.html").read_text(encoding="utf-8")
    batch_wait_s = settings.batch_wait_ms / MS_PER_S
    generator = Generator(pipe, settings.max_queue, metrics, settings.max_batch, batch_wait_s)

    # Every request admitted may wait for the model in a thread of its own (and the job worker's
    # batch besides): threads of their own, so that however long the queue, the shared pool
    # (40 threads) stays free to check new bodies and refuse them at once.
    model_threads = settings.max_queue + settings.max_batch

    async def encoded(
        resolved: ResolvedRequest,
        response_format: str,
        on_step: StepCallback,
        claim: Claim | None = None,
        arrived: float | None = None,
    ) -> tuple[list[bytes], GenerationResult]:
        """Run on the pipeline (in a worker thread) and encode; metrics for each outcome, the
        latency from the request's arrival (`arrived`, time.perf_counter()) or a job's submission."""
        began = time.perf_counter() if arrived is None else arrived
        try:
            file_format = RESPONSE_FORMATS[response_format][0]
            contents, result = await anyio.to_thread.run_sync(
                generator.run, resolved, file_format, on_step, claim, limiter=app.state.model_threads
            )
        except StableAudioError:  # the request's own fault (an engine's profile): 422
            raise
        except Stopped:
            metrics.requests.labels("stopped").inc()
            raise
        except Exception:
            metrics.requests.labels("failed").inc()
            raise
        metrics.requests.labels("ok").inc()
        metrics.latency.observe(time.perf_counter() - began + (claim.queued_s if claim is not None else 0.0))
        return contents, result

    async def run_job(claim: Claim, on_step: StepCallback) -> list[bytes]:
        return (await encoded(claim.resolved, claim.response_format, on_step, claim))[0]

    def cancel_now(board: JobBoard) -> None:
        """A second stop signal: every job queued or running cancelled now, not once uvicorn has
        waited for the open requests. Called by the signal's handler, which runs on the event
        loop's thread (so its loop is the running one), and so scheduled as a handler must."""
        loop = asyncio.get_running_loop()

        def start() -> None:
            app.state.cancelling = loop.create_task(board.cancel_all())  # held: a loop holds tasks weakly

        loop.call_soon_threadsafe(start)

    if shared is None:  # its jobs hold places in this server's bounded queue until they settle
        board: Board = JobBoard(
            settings.job_ttl_s,
            settings.max_result_bytes,
            settings.job_timeout_s,
            on_settled=generator.leave,
        )
        owner, report_s = "sa-serve", LOCAL_REPORT_S
        drain: Drain | None = Drain(
            lambda: (generator.waiting, board.undownloaded()),
            settings.drain_grace_s,
            board.refuse_new,
            lambda: cancel_now(board),
        )
    else:  # sa-serve --ray drains the shared board (ray_serve.py)
        board, owner, report_s = shared.board, shared.owner, SHARED_REPORT_S
        drain = None
    # A job claimed alone waits for the jobs posted right after it as a request waits for others.
    worker = JobWorker(
        board,
        run_job,
        owner,
        settings.max_batch,
        report_s,
        CLAIM_WAIT_S,
        batch_wait_s,
        report_idle=shared is not None,
    )

    def within_limits(fields: GenerateBody) -> None:
        """The server's own limits, said as its before the library's bounds and any decoding."""
        if fields.num_inference_steps is not None and fields.num_inference_steps > settings.max_steps:
            raise RequestError(steps_over_limit(fields.num_inference_steps, ""))
        if fields.model is not None and fields.model != settings.model_name:
            raise RequestError(
                f"model {shortened(fields.model)!r} is not served here: this server runs "
                f"{settings.model_name!r} (GET /v1/models); give that, or leave model out"
            )

    def steps_over_limit(steps: int, asked: str) -> str:
        return (
            f"num_inference_steps: {asked}{steps} is over this server's limit of {settings.max_steps} "
            "(sa-serve --max-steps): ask for fewer"
        )

    def parse_told(body: bytes, content_type: str) -> tuple[GenerateBody, ResolvedRequest]:
        """The body parsed, its request resolved, and the prompts the model will not read whole
        added to what its client is told (`warnings`)."""
        fields, resolved = parse_generation(body, content_type, pipe.config, within_limits)
        return fields, dataclasses.replace(
            resolved, warnings=(*resolved.warnings, *pipe.prompt_warnings(resolved))
        )

    async def parsed(request: Request, takes_place: bool = True) -> tuple[GenerateBody, ResolvedRequest]:
        """The body read under the upload limit (413), then checked and resolved off the event
        loop (422 naming the problem), all before it takes a place in the queue; one that would
        take a place (`takes_place`) in a full queue is refused (429) before any of it is read."""
        refuse_if_stopping()  # before reading the body, and again after (a signal may come between)
        with generator.arrival(takes_place):
            try:
                body = await read_body(request, settings.max_upload_bytes)
            except BodyTooLarge as e:
                metrics.requests.labels("invalid").inc()
                raise HTTPException(413, str(e)) from e
            except BodyTooSlow as e:
                metrics.requests.labels("invalid").inc()
                raise HTTPException(408, str(e)) from e
            except ClientDisconnect as e:  # gone mid-upload: nobody to answer, nothing to log
                metrics.requests.labels("stopped").inc()
                raise HTTPException(CLIENT_CLOSED, "the client disconnected during its upload") from e
            content_type = request.headers.get("content-type", "")
            try:
                body, resolved = await anyio.to_thread.run_sync(parse_told, body, content_type)
            except HTTPException:  # 415
                metrics.requests.labels("invalid").inc()
                raise
        if resolved.request.steps > settings.max_steps:  # the model's default (asked ones: within_limits)
            raise RequestError(steps_over_limit(resolved.request.steps, "the model's default of "))
        pipe.check(resolved)  # what the engines' profiles cannot run: 422 now, not a failed job later
        refuse_if_stopping()
        return body, resolved

    def accepting() -> bool:
        """No stop begun: this server's board says so, or (Ray) the shared board's last word to
        this replica's worker (no call to it per request; `submit` checks it again)."""
        return board.taking if shared is None else worker.taking

    def refuse_if_stopping() -> None:
        if not accepting():
            refuse_as_stopping()

    def refuse_as_stopping() -> None:
        metrics.requests.labels("rejected_stopping").inc()
        raise HTTPException(
            503,
            "the server is stopping: it takes no new requests or jobs (those accepted finish and "
            "can be downloaded); send this one to another server, or retry once it is back",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.model_threads = anyio.CapacityLimiter(model_threads)  # made in the server's loop
        working = asyncio.create_task(worker.work())
        yield
        # Shutdown: after a drain (draining.py) nothing is left to run; after a second signal,
        # uvicorn has stopped accepting and finished the open requests.
        if shared is None:  # the accepted jobs run to their end before the worker goes
            if drain is not None and drain.cut_short:  # unless a second signal said stop now
                await board.cancel_all()
            await board.idle()
            working.cancel()
        else:  # the jobs this replica holds run to their end; the other replicas run the rest
            worker.close()
            await working

    # /docs loads its scripts from this server, not a CDN: it works offline. No /redoc: its bundle
    # fetches a logo from the internet.
    app = FastAPIOffline(
        title="stable-audio-rt", summary="Stable Audio Open over HTTP", lifespan=lifespan, redoc_url=None
    )
    app.state.generator, app.state.jobs, app.state.worker = generator, board, worker
    app.state.drain = drain
    app.add_middleware(HeadAsGet)
    if shared is not None:
        app.add_middleware(ReplicaHeader, replica=shared.owner)

    def authorized(credentials: BearerCredentials) -> None:
        if settings.api_key is None:
            return
        given = "" if credentials is None else credentials.credentials
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(StableAudioError)
    async def refused(request: Request, error: StableAudioError) -> JSONResponse:
        metrics.requests.labels("invalid").inc()
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        if request.method == "POST":  # a generation body (not a download's bad index)
            metrics.requests.labels("invalid").inc()
        return JSONResponse({"detail": jsonable_encoder(echoed(error.errors()))}, status_code=422)

    # Open without the API key: the page holds no secret, and its API calls carry the key.
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/health", responses={503: {"description": "stopping (draining): send new work elsewhere"}})
    async def health() -> JSONResponse:
        # A load balancer's probe sees a draining server as not ready, so it routes new work away.
        if not accepting():
            return JSONResponse({"status": "stopping", "model": settings.model_name}, status_code=503)
        return JSONResponse({"status": "ready", "model": settings.model_name})

    @app.get("/v1/models", dependencies=[Depends(authorized)], responses={401: ERROR_RESPONSES[401]})
    async def models() -> dict:
        config = pipe.config
        return {
            "object": "list",
            "data": [{
                "id": settings.model_name,
                "object": "model",
                "sample_rate": config.sample_rate,
                "max_seconds": config.max_seconds,
                "backend": type(pipe.components).__name__,
                "device": str(pipe.device),
            }],
        }  # fmt: skip

    @app.get(
        "/metrics",
        dependencies=[Depends(authorized)],
        response_class=PlainTextResponse,
        responses=ERROR_RESPONSES,
    )
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post(
        "/v1/audio/generate",
        dependencies=[Depends(authorized)],
        openapi_extra=OPENAPI_BODY,
        response_class=Response,
        responses={200: AUDIO_CONTENT, **BODY_RESPONSES},
    )
    async def generate(request: Request) -> Response:
        arrived = time.perf_counter()
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
            if drain is not None and drain.cut_short:
                raise Stopped("the server is stopping now")

        try:
            (content,), result = await encoded(resolved, body.response_format, on_step, arrived=arrived)
        except Stopped:
            if gone.is_set():  # nobody is there to read an answer
                return Response(status_code=CLIENT_CLOSED)
            raise HTTPException(
                503,
                "the server stopped before this request finished (a second stop signal); send it to "
                "another server, or retry once this one is back",
            ) from None
        finally:
            watcher.cancel()
            generator.leave()
        headers = audio_headers(result.seed, result.sample_rate, f"seed-{result.seed}", body.response_format)
        if resolved.warnings:  # JSON in ASCII: a header's text is Latin-1, the warnings' is not
            headers["X-Warnings"] = json.dumps(resolved.warnings)
        return Response(content, media_type=RESPONSE_FORMATS[body.response_format][1], headers=headers)

    def found(job_id: str, answer: dict | Reading | None) -> dict | Reading:
        if answer is None:
            raise HTTPException(404, f"no job {shortened(repr(job_id))} (unknown, or its result expired)")
        return answer

    @app.post(
        "/v1/audio/jobs",
        status_code=202,
        dependencies=[Depends(authorized)],
        openapi_extra=OPENAPI_BODY,
        responses=BODY_RESPONSES,
    )
    async def submit(request: Request) -> JSONResponse:
        body, resolved = await parsed(request, takes_place=shared is None)  # a shared board's own bound
        if shared is None:
            generator.admit()  # its place is given back when it settles
        view = await board.submit(resolved, body.response_format, generator.batch_key(resolved))
        if not isinstance(view, dict):  # refused by the board itself
            if shared is None:
                generator.leave()
            if view == "stopping":  # the stop came after this server's own check
                refuse_as_stopping()
            metrics.requests.labels("rejected_busy").inc()  # a shared board bounds every replica's jobs
            raise HTTPException(
                429, "the job queue is full; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)}
            )
        location = f"/v1/audio/jobs/{view['id']}"
        return JSONResponse(view, status_code=202, headers={"Location": location})

    @app.get("/v1/audio/jobs/{job_id}", dependencies=[Depends(authorized)], responses=JOB_RESPONSES)
    async def status(job_id: str) -> dict:
        return found(job_id, await board.read(job_id, index=None)).view

    @app.get(
        "/v1/audio/jobs/{job_id}/content",
        dependencies=[Depends(authorized)],
        response_class=Response,
        responses={200: AUDIO_CONTENT, **JOB_RESPONSES, 409: {"description": "the job is not done"}},
    )
    async def content(
        request: Request, job_id: str, index: int = Query(0, ge=0, description="which clip (n > 1)")
    ) -> Response:
        # A HEAD ships no clip: it is no download (a draining server waits for the real one).
        downloaded = not request.scope.get(HEAD_ASKED, False)
        reading = found(job_id, await board.read(job_id, index, download=downloaded))
        view = reading.view
        if view["status"] != "done":
            detail = f"job {job_id} is {view['status']}"
            if "error" in view:
                detail += f": {view['error']}"
            if not reading.finished:
                detail += f"; poll GET /v1/audio/jobs/{job_id} until it is done"
            raise HTTPException(409, detail)
        if reading.clip is None:
            raise HTTPException(404, f"job {job_id} has {reading.clips} clip(s): no index {index}")
        name = f"{job_id}-{index}"
        headers = audio_headers(view["seed"], pipe.config.sample_rate, name, reading.response_format)
        media_type = RESPONSE_FORMATS[reading.response_format][1]
        return Response(reading.clip, media_type=media_type, headers=headers)

    @app.delete("/v1/audio/jobs/{job_id}", dependencies=[Depends(authorized)], responses=JOB_RESPONSES)
    async def cancel(job_id: str) -> dict:
        """Cancel a job not yet finished (a running one stops at its next step), or delete a
        finished one with its result. Answers the job as it stood."""
        return found(job_id, await board.cancel(job_id))

    return app


# The scope key saying a request routed as GET was a HEAD.
HEAD_ASKED = "stable_audio_rt.head"


class HeadAsGet:
    """ASGI middleware: HEAD answered wherever GET is (RFC 9110; `curl -I`, load balancers'
    probes), as GET's headers. The server (uvicorn, Ray Serve's proxy) sends no body for a HEAD,
    by its own scope, which this leaves as it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET", HEAD_ASKED: True}
        await self.app(scope, receive, send)


class ReplicaHeader:
    """ASGI middleware: every answer says which replica gave it (`X-Replica`), what load balancing
    and a replica's death look like from outside."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app, self.header = app, (b"x-replica", replica.encode())

    async def __call__(self, scope, receive, send) -> None:
        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, sending if scope["type"] == "http" else send)


async def _watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set `gone` when the client closes its connection: with the body read, that is the only
    message left to receive."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()


def echoed(errors: Sequence[dict]) -> list[dict]:
    """Validation errors as FastAPI words them, bounded: the first ECHOED_ERRORS of them, each
    refused value kept only when it is short JSON (not a whole body that failed to parse, NaN,
    or bytes that are not UTF-8), and long field names cut short."""
    kept = []
    for error in errors[:ECHOED_ERRORS]:
        error = {
            **error,
            "loc": [shortened(part) if isinstance(part, str) else part for part in error["loc"]],
        }
        try:
            short = len(json.dumps(error.get("input"), allow_nan=False)) <= ECHO_LIMIT
        except (TypeError, ValueError):
            short = False
        if not short:
            error.pop("input", None)
        kept.append(error)
    if len(errors) > ECHOED_ERRORS:
        kept.append({"msg": f"and {len(errors) - ECHOED_ERRORS} more errors"})
    return kept


def shortened(text: str) -> str:
    """`text` as a refusal echoes it: at most ECHO_LIMIT characters."""
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "…"


def audio_headers(seed: int, sample_rate: int, name: str, response_format: str) -> dict[str, str]:
    """A clip's headers: its seed and rate, and a file name for clients that save it
    (`curl -OJ`, browsers); the response format is the file's extension."""
    return {
        "X-Seed": str(seed),
        "X-Sample-Rate": str(sample_rate),
        "Content-Disposition": f'attachment; filename="{name}.{response_format}"',
    }
