"""Jobs: submit, poll, download, cancel, for clips that take longer than a client wants to hold
a connection. One worker takes queued jobs in order and runs each on the pipeline as the
synchronous endpoint does; finished results are kept until their time to live passes or the
byte cap evicts the oldest."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from stable_audio_rt.runtime.requests import ResolvedRequest

Status = Literal["queued", "running", "done", "failed", "cancelled"]
LOG = logging.getLogger("stable_audio_rt.serve")


@dataclass
class Job:
    id: str
    resolved: ResolvedRequest
    response_format: str
    status: Status = "queued"
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    content: bytes | None = None
    error: str | None = None

    def view(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "seed": self.resolved.seed,
            "steps": self.resolved.request.steps,
            "response_format": self.response_format,
            **({"error": self.error} if self.error is not None else {}),
        }


# A job's run: the resolved request and format in, the audio file's bytes out.
Runner = Callable[[Job], Awaitable[bytes]]


class JobStore:
    def __init__(self, run: Runner, release: Callable[[], None], ttl_s: float, max_result_bytes: int) -> None:
        """`release` is called once per submitted job when the worker is done with it (its place
        in the server's bounded queue)."""
        self.run, self.release = run, release
        self.ttl_s, self.max_result_bytes = ttl_s, max_result_bytes
        self.jobs: dict[str, Job] = {}
        self.queue: asyncio.Queue[Job] = asyncio.Queue()

    def submit(self, resolved: ResolvedRequest, response_format: str) -> Job:
        self.expire()
        job = Job(secrets.token_urlsafe(12), resolved, response_format)
        self.jobs[job.id] = job
        self.queue.put_nowait(job)
        return job

    def get(self, job_id: str) -> Job | None:
        self.expire()
        return self.jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        """Queued: it will not run. Running: its result is discarded when the step loop ends
        (a captured request cannot stop between steps)."""
        if job.status in ("queued", "running"):
            job.status, job.finished = "cancelled", time.monotonic()

    async def work(self) -> None:
        """The worker: one job at a time, in submission order, until cancelled."""
        while True:
            job = await self.queue.get()
            try:
                if job.status == "queued":  # not cancelled while it waited
                    await self._run(job)
            finally:
                self.release()
                self.queue.task_done()
            LOG.info("job %s %s", job.id, job.status)
            self.expire()

    async def drain(self) -> None:
        """Until every job submitted so far has finished (a shutdown loses none silently)."""
        await self.queue.join()

    async def _run(self, job: Job) -> None:
        job.status = "running"
        try:
            content = await self.run(job)
        except Exception as e:  # the job reports it; the worker goes on
            if job.status == "running":
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
        else:
            if job.status == "running":  # else cancelled meanwhile: the result is discarded
                job.status, job.content = "done", content
        job.finished = job.finished or time.monotonic()

    def expire(self) -> None:
        """Forget jobs finished longer than the TTL ago, then the oldest results over the cap."""
        now = time.monotonic()
        for job in [
            j for j in self.jobs.values() if j.finished is not None and now - j.finished > self.ttl_s
        ]:
            del self.jobs[job.id]
        kept = sorted((j for j in self.jobs.values() if j.content is not None), key=lambda j: j.finished)
        total = sum(len(j.content) for j in kept)
        for job in kept:
            if total <= self.max_result_bytes:
                break
            total -= len(job.content)
            del self.jobs[job.id]
