"""The ASGI app: FastAPI (typed bodies whose validation errors name the field, OpenAPI docs at
/docs) on uvicorn. The pipeline is loaded and warmed before the app exists, so /health is ready
whenever it answers. Generation runs in a worker thread, one at a time on the pipeline; a bounded
count of waiting and running requests turns the next one away with 429."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from stable_audio_rt.errors import StableAudioError
from stable_audio_rt.runtime.audio_io import audio_bytes
from stable_audio_rt.runtime.pipeline import StableAudio
from stable_audio_rt.runtime.requests import resolve_request
from stable_audio_rt.serve.metrics import ServeMetrics
from stable_audio_rt.serve.schema import RESPONSE_FORMATS, GenerateBody

# What a client waits before retrying a full queue (seconds, the Retry-After header).
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServeSettings:
    model_name: str  # what /v1/models lists
    api_key: str | None = None  # every endpoint but /health needs it when set
    max_queue: int = 16  # requests waiting or running before 429


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

    def run(self, resolved):
        with self.lock:
            return self.pipe.run_resolved(resolved)


def create_app(pipe: StableAudio, settings: ServeSettings) -> FastAPI:
    app = FastAPI(title="stable-audio-rt", summary="Stable Audio Open over HTTP")
    metrics = ServeMetrics()
    generator = Generator(pipe, settings.max_queue, metrics)
    app.state.generator = generator

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

    @app.post("/v1/audio/generate", dependencies=[Depends(authorized)])
    async def generate(body: GenerateBody) -> Response:
        began = time.perf_counter()
        resolved = resolve_request(body.request(), pipe.config)  # refused (422) before it waits
        generator.admit()
        try:
            result = await anyio.to_thread.run_sync(generator.run, resolved)
        except StableAudioError:  # the request's own fault (an engine's profile): 422 below
            raise
        except Exception:
            metrics.requests.labels("failed").inc()
            raise
        finally:
            generator.leave()
        file_format, media_type = RESPONSE_FORMATS[body.response_format]
        content = audio_bytes(result.audio[0], result.sample_rate, file_format)
        seconds = time.perf_counter() - began
        audio_seconds = result.audio.shape[-1] / result.sample_rate
        metrics.requests.labels("ok").inc()
        metrics.latency.observe(seconds)
        metrics.rtf.observe(sum(result.timings.values()) / audio_seconds)
        metrics.batch_rows.observe(result.audio.shape[0])
        headers = {"X-Seed": str(result.seed), "X-Sample-Rate": str(result.sample_rate)}
        return Response(content, media_type=media_type, headers=headers)

    return app
