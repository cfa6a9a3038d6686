"""Jobs: submit, poll, download, cancel, for clips that take longer than a client wants to hold
a connection. One worker takes queued jobs in order and runs each on the pipeline as the
synchronous endpoint does, its status showing the steps done; the jobs queued right behind it
that may share its batch (`BatchRule`) start with it, so the server's batcher can run them as one
pipeline call. Finished results are kept until their time to live passes or the byte cap evicts
the oldest. A job cancelled, or still queued or running past its timeout, stops at the next step
boundary (in a batch: its batch-mates run on, and its rows are discarded)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal

from stable_audio_rt.runtime.requests import ResolvedRequest

Status = Literal["queued", "running", "done", "failed", "cancelled"]
LOG = logging.getLogger("stable_audio_rt.serve")


class Stopped(Exception):
    """A request stopped before its end: its job cancelled or timed out, or its client gone."""


@dataclass
class Job:
    id: str
    resolved: ResolvedRequest
    response_format: str
    deadline: float | None = None  # time.monotonic() past which it fails (--job-timeout-s)
    status: Status = "queued"
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    steps_done: int = 0
    content: list[bytes] | None = None  # one file per clip
    error: str | None = None

    def view(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "seed": self.resolved.seed,
            "steps_done": self.steps_done,
            "steps_total": self.resolved.request.steps,
            "n": self.resolved.request.num_outputs,
            "response_format": self.response_format,
            **({"error": self.error} if self.error is not None else {}),
        }

    def overdue(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def on_step(self, done: int, total: int) -> None:
        """Progress, from the thread that generates; raising stops the run at this step boundary
        (once the job is no longer running: cancelled, or failed by its timeout)."""
        if self.status != "running" or self.overdue(time.monotonic()):
            raise Stopped(f"job {self.id} stopped")
        self.steps_done = done


# A job's run: the job in, one file's bytes per clip out.
Runner = Callable[[Job], Awaitable[list[bytes]]]


@dataclass(frozen=True)
class BatchRule:
    """Which jobs may start together: those of one key (None: alone), up to `max_rows` clips."""

    key: Callable[[ResolvedRequest], Hashable | None]
    max_rows: int = 1

    def joins(self, group: list[Job], job: Job) -> bool:
        key = self.key(group[0].resolved)
        rows = sum(j.resolved.batch for j in group) + job.resolved.batch
        return key is not None and self.key(job.resolved) == key and rows <= self.max_rows


ALONE = BatchRule(lambda resolved: None)


class JobStore:
    def __init__(
        self,
        run: Runner,
        release: Callable[[], None],
        ttl_s: float,
        max_result_bytes: int,
        timeout_s: float | None = None,
        batch: BatchRule = ALONE,
    ) -> None:
        """`release` is called once per submitted job when the worker is done with it (its place
        in the server's bounded queue). A job still queued or running `timeout_s` after it was
        submitted fails (None: no limit). `batch`: which queued jobs start together."""
        self.run, self.release, self.batch = run, release, batch
        self.ttl_s, self.max_result_bytes, self.timeout_s = ttl_s, max_result_bytes, timeout_s
        self.jobs: dict[str, Job] = {}
        self.queue: asyncio.Queue[Job] = asyncio.Queue()

    def submit(self, resolved: ResolvedRequest, response_format: str) -> Job:
        self.expire()
        job = Job(secrets.token_urlsafe(12), resolved, response_format)
        if self.timeout_s is not None:
            job.deadline = job.created + self.timeout_s
        self.jobs[job.id] = job
        self.queue.put_nowait(job)
        return job

    def get(self, job_id: str) -> Job | None:
        self.time_out()
        self.expire()
        return self.jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        """Queued: it will not run. Running: it stops at its next step boundary (a request
        replayed as one CUDA graph has none: it finishes, and its result is discarded)."""
        if job.status in ("queued", "running"):
            job.status, job.finished = "cancelled", time.monotonic()

    def time_out(self) -> None:
        """Fail the jobs still queued or running past their deadline (a running one stops at its
        next step boundary, as a cancelled one does)."""
        now = time.monotonic()
        for job in self.jobs.values():
            if job.status in ("queued", "running") and job.overdue(now):
                job.status, job.finished = "failed", now
                job.error = f"timed out after {self.timeout_s:g} s (sa-serve --job-timeout-s)"

    async def work(self) -> None:
        """The worker, until cancelled: the next job in submission order, with the jobs already
        queued right behind it that may share its batch; the first that may not waits, queued,
        until these are done."""
        held: Job | None = None
        while True:
            group = [held or await self.queue.get()]
            held = None
            while not self.queue.empty():
                job = self.queue.get_nowait()
                if not self.batch.joins(group, job):
                    held = job
                    break
                group.append(job)
            await asyncio.gather(*(self._work_on(job) for job in group))

    async def _work_on(self, job: Job) -> None:
        try:
            self.time_out()
            if job.status == "queued":  # not cancelled or timed out while it waited
                await self._run(job)
        finally:
            self.release()
            self.queue.task_done()
        LOG.info("job %s %s%s", job.id, job.status, f": {job.error}" if job.error else "")
        self.expire()

    async def drain(self) -> None:
        """Until every job submitted so far has finished (a shutdown loses none silently)."""
        await self.queue.join()

    async def _run(self, job: Job) -> None:
        job.status = "running"
        try:
            content = await self.run(job)
        except Exception as e:  # the job reports it; the worker goes on
            self.time_out()  # a run stopped by its deadline says so
            if job.status == "running":  # else cancelled or timed out: it says so already
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
        else:
            self.time_out()
            if job.status == "running":  # else cancelled or timed out meanwhile: discarded
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
        total = sum(_size(j) for j in kept)
        for job in kept:
            if total <= self.max_result_bytes:
                break
            total -= _size(job)
            del self.jobs[job.id]


def _size(job: Job) -> int:
    return sum(len(clip) for clip in job.content)
