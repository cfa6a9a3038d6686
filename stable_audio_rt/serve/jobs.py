"""Jobs: submit, poll, download, cancel, for clips that take longer than a client wants to hold
a connection.

Two parts, so that one server or many replicas (Ray Serve) run the same code:
- `JobBoard` holds every job's state: its request, status, steps done and result. sa-serve keeps
  one in its process; under Ray Serve it is a deployment of its own that every replica reads,
  so a job submitted through one replica is read and cancelled through any.
- `JobWorker` runs jobs: it claims the oldest queued job together with the jobs queued right
  behind it that may share its batch (the server's batcher then runs them as one pipeline call),
  reports their steps while they run (learning which were cancelled or timed out: they stop at
  the next step boundary; in a batch their batch-mates run on), then hands their results in.
  Every replica runs one.

A job whose worker stops reporting (its replica died) for longer than the lease goes back to the
queue for another worker, a bounded number of times. Finished results are kept until their
client deletes them, their time to live passes or the byte cap evicts the oldest."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from stable_audio_rt.runtime.pipeline import StepCallback
from stable_audio_rt.runtime.requests import ResolvedRequest

Status = Literal["queued", "running", "done", "failed", "cancelled"]
# Why `JobBoard.submit` took no job: every place taken, or a stop has begun.
Refusal = Literal["full", "stopping"]
LOG = logging.getLogger("stable_audio_rt.serve")
# How many workers may take a job whose worker went silent, before it fails.
MAX_ATTEMPTS = 3
# Failed and cancelled jobs kept for their clients at most (a status of ~1 KB each; done ones are
# bounded by the results' own cap): submitting and cancelling jobs in a loop cannot grow the board.
MAX_SETTLED_JOBS = 10_000
# A worker closing awaits the claim it has in flight this much longer than the claim's own waits
# (seconds): a board that still serves answers by then; one stopped with its app never will.
CLOSING_CLAIM_GRACE_S = 2.0


class Stopped(Exception):
    """A request stopped before its end: its job cancelled or timed out, or its client gone."""


class Batchable(Protocol):
    """A waiting request or job as batches are formed: its batch key (None: alone) and rows."""

    @property
    def key(self) -> Hashable | None: ...
    @property
    def rows(self) -> int: ...


def joins(group: Sequence[Batchable], candidate: Batchable, max_rows: int) -> bool:
    """Whether `candidate` may run in one batch with `group`: the same batch key, and room for
    its rows in `max_rows` clips (the rule of the server's batcher and of job claims alike)."""
    key = group[0].key
    return (
        key is not None
        and candidate.key == key
        and sum(member.rows for member in group) + candidate.rows <= max_rows
    )


@dataclass
class Job:
    id: str
    resolved: ResolvedRequest | None  # None once settled: its prompts and audio are not kept
    response_format: str
    key: Hashable | None  # what it must share with jobs to start with them (None: alone)
    deadline: float | None = None  # time.monotonic() past which it fails (--job-timeout-s)
    status: Status = "queued"
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    steps_done: int = 0
    content: list[bytes] | None = None  # one file per clip
    error: str | None = None
    attempt: int = 0  # bumped each time it is claimed: reports of an earlier claim are ignored
    owner: str | None = None  # the worker holding it (claimed, its result not yet handed in)
    seen: float = 0.0  # time.monotonic() of its owner's last report
    fetched: set[int] = field(default_factory=set)  # the indices of its clips downloaded
    asked: dict = field(init=False)  # what its status tells of its request, kept once it is dropped

    def __post_init__(self) -> None:
        self.asked = {
            "seed": self.resolved.seed,
            "steps_total": self.resolved.request.steps,
            "n": self.resolved.request.num_outputs,
            "warnings": list(self.resolved.warnings),  # what it asks that runs, but likely not as meant
        }

    def view(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "steps_done": self.steps_done,
            "response_format": self.response_format,
            "attempts": self.attempt,  # workers that took it: more than 1, a replica running it died
            **self.asked,
            **({"error": self.error} if self.error is not None else {}),
        }

    def overdue(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    @property
    def rows(self) -> int:
        return self.resolved.batch


@dataclass(frozen=True)
class Claim:
    """A job as a worker runs it."""

    id: str
    attempt: int
    resolved: ResolvedRequest
    response_format: str
    # The ids of the jobs claimed with it, its own included: its batch needs wait for no others.
    claimed_with: tuple[str, ...] = ()
    queued_s: float = 0.0  # from its submission to this claim (the board's clock: replicas' differ)


@dataclass(frozen=True)
class Progress:
    """The board's answer to a worker's report."""

    stop: list[str]  # the ids of its jobs it should stop
    queued: int  # jobs waiting for a worker (what replicas are scaled on, with requests)
    taking: bool = True  # False once a stop began: the servers refuse new work (`refuse_new`)


@dataclass(frozen=True)
class Reading:
    """What a job's status and download endpoints answer from."""

    view: dict
    response_format: str
    finished: bool
    clip: bytes | None  # the clip asked for, when done and it exists
    clips: int  # how many it has (0 until done)


class JobBoard:
    """Every job's state. Its methods are coroutines that never wait on another (but `claim`'s
    wait for work and `idle`), so it serves the event loop of sa-serve, or of its own Ray Serve
    replica, without locks."""

    def __init__(
        self,
        ttl_s: float,
        max_result_bytes: int,
        timeout_s: float | None = None,
        lease_s: float | None = None,
        max_jobs: int | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        """A job still queued or running `timeout_s` after it was submitted fails (None: no
        limit). A running job whose worker has not reported for `lease_s` is queued again (None:
        workers never go silent: one process). `submit` refuses a job while `max_jobs` are queued
        or held (None: the caller bounds them). `on_settled` is called once per job when no
        worker holds it any more and it will not run (its place in sa-serve's bounded queue)."""
        self.ttl_s, self.max_result_bytes, self.timeout_s = ttl_s, max_result_bytes, timeout_s
        self.lease_s, self.max_jobs, self.on_settled = lease_s, max_jobs, on_settled
        self.jobs: dict[str, Job] = {}  # in submission order
        self.unsettled = 0  # queued or held
        self.taking = True  # False once a stop began: the servers refuse new requests and jobs
        self.closed = False  # True once a stop drained it: workers claim no more
        self.changed = asyncio.Condition()  # notified when a job is queued or settles

    async def submit(
        self, resolved: ResolvedRequest, response_format: str, key: Hashable | None
    ) -> dict | Refusal:
        """The new job's view; "full" when `max_jobs` are already queued or held, "stopping" once
        a stop has begun (checked here, with no wait before the job is queued: a server's own
        check may have answered before the stop)."""
        await self._tidy()
        if not self.taking:
            return "stopping"
        if self.max_jobs is not None and self.unsettled >= self.max_jobs:
            return "full"
        job = Job(secrets.token_urlsafe(12), resolved, response_format, key)
        if self.timeout_s is not None:
            job.deadline = job.created + self.timeout_s
        self.jobs[job.id] = job
        self.unsettled += 1
        async with self.changed:
            self.changed.notify_all()
        return job.view()

    async def read(self, job_id: str, index: int | None = 0, download: bool = False) -> Reading | None:
        """The job's state, and its clip `index` when done (None: the state alone, as a status
        poll reads it, shipping no audio from a shared board); `download`: the client is given that
        clip (a draining server waits for every clip's download)."""
        await self._tidy()
        job = self.jobs.get(job_id)
        if job is None:
            return None
        clips = job.content or []
        clip = clips[index] if index is not None and index < len(clips) else None
        if download and clip is not None:
            job.fetched.add(index)
        return Reading(job.view(), job.response_format, job.finished is not None, clip, len(clips))

    async def cancel(self, job_id: str) -> dict | None:
        """Queued: it will not run. Running: it stops at its next step boundary (a request
        replayed as one CUDA graph has none: it finishes, and its result is discarded).
        Finished: it is forgotten, its result with it (the client has what it wanted). Answers
        its view as it stands, or None if there is no such job."""
        await self._tidy()
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.status in ("queued", "running"):
            await self._end(job, "cancelled")
        elif job.owner is None:  # else its worker has yet to hand it in: it expires as usual
            del self.jobs[job_id]
        return job.view()

    async def claim(
        self, owner: str, max_rows: int, wait_s: float, fill_s: float = 0.0
    ) -> list[Claim] | None:
        """The oldest queued job and the ones queued right behind it that may share its batch
        (up to `max_rows` clips), now held by `owner`; waits up to `wait_s` for one to be queued,
        then up to `fill_s` more for jobs to join it (jobs posted one after another to an idle
        worker start together), unless it is full or a job that cannot join is queued behind it.
        None once the board is closed: the worker has no more work."""
        deadline = time.monotonic() + wait_s
        head, filled_by = None, None  # the group's oldest job, and when it stops waiting for more
        while True:
            if self.closed:
                return None
            await self._tidy()
            group, open_ = self._next_group(max_rows)
            now = time.monotonic()
            if not group:
                head, filled_by = None, None  # another worker took it while this one waited
            elif group[0].id != head:  # a new group (its head cancelled or taken): its own wait
                head, filled_by = group[0].id, now + fill_s
            until = deadline if filled_by is None else filled_by
            if (group and not open_) or now >= until:
                break
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait(), until - now)
                except asyncio.TimeoutError:  # not yet the builtin's alias on Python 3.10
                    pass
        now = time.monotonic()
        for job in group:
            job.status, job.owner, job.seen, job.steps_done = "running", owner, now, 0
            job.attempt += 1
        ids = tuple(job.id for job in group)
        return [Claim(j.id, j.attempt, j.resolved, j.response_format, ids, now - j.created) for j in group]

    def _next_group(self, max_rows: int) -> tuple[list[Job], bool]:
        """The oldest queued job and those right behind it that join it, and whether a job queued
        later still could (room left, and no job queued behind it that cannot join)."""
        group: list[Job] = []
        for job in self.jobs.values():
            if job.status != "queued":
                continue
            if group and not joins(group, job, max_rows):
                return group, False
            group.append(job)
        room = bool(group) and group[0].key is not None and sum(job.rows for job in group) < max_rows
        return group, room

    async def report(self, owner: str, steps: dict[str, tuple[int, int]]) -> Progress:
        """A worker's progress: {job id: (attempt, steps done)} for the jobs it runs. Answers the
        ids of those it should stop (cancelled, timed out, or claimed again by another worker),
        and how many jobs are queued."""
        await self._tidy()
        now, stop = time.monotonic(), []
        for job_id, (attempt, done) in steps.items():
            job = self.jobs.get(job_id)
            if job is None or job.attempt != attempt or job.owner != owner:
                stop.append(job_id)
                continue
            job.seen = now
            if job.status == "running":
                job.steps_done = done
            else:
                stop.append(job_id)
        return Progress(stop, sum(job.status == "queued" for job in self.jobs.values()), self.taking)

    async def finish(
        self, job_id: str, attempt: int, steps_done: int, content: list[bytes] | None, error: str | None
    ) -> None:
        """A worker hands a claimed job in: its clips, or why it failed (a stopped job's answer is
        discarded: it says cancelled or failed already)."""
        await self._tidy()  # a run stopped by its deadline says so
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt:
            return  # expired, or claimed again after its worker went silent
        if job.owner is None and job.status != "queued":
            return  # settled already
        # Queued with this attempt: its lease ran out a moment ago and nobody took it again, so
        # its result stands.
        job.owner = None
        if job.status in ("running", "queued"):
            job.steps_done = steps_done
            if error is None:
                job.status, job.content = "done", content
            else:
                job.status, job.error = "failed", error
            job.finished = time.monotonic()
        await self._settle(job)

    def refuse_new(self) -> None:
        """A stop has begun: the servers refuse new requests and jobs (503); those accepted run."""
        self.taking = False

    async def stop_taking(self) -> None:
        self.refuse_new()

    def undownloaded(self) -> int:
        """Jobs done with a clip not yet downloaded."""
        return sum(j.status == "done" and len(j.fetched) < len(j.content or ()) for j in self.jobs.values())

    async def left(self) -> tuple[int, int]:
        """What a stop waits for: jobs queued or held, and jobs done but not fully downloaded."""
        await self._tidy()
        return self.unsettled, self.undownloaded()

    async def cancel_all(self) -> None:
        """A stop cut short: every job queued or running is cancelled (a running one stops at its
        next step)."""
        for job in [job for job in self.jobs.values() if job.status in ("queued", "running")]:
            if job.status in ("queued", "running"):  # not handed in meanwhile
                await self._end(job, "cancelled")

    async def close(self) -> None:
        """A stop has drained the board: workers' claims answer None from now on."""
        self.closed = True
        async with self.changed:
            self.changed.notify_all()

    async def idle(self) -> None:
        """Until no job is queued or held (a shutdown loses none silently)."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.unsettled == 0)

    async def _end(self, job: Job, status: Status, error: str | None = None) -> None:
        job.status, job.error, job.finished = status, error, time.monotonic()
        if job.owner is None:  # else its worker settles it when it hands it in
            await self._settle(job)

    async def _settle(self, job: Job) -> None:
        job.resolved = None  # it will not run: a client's prompts and uploads are not kept for the TTL
        self.unsettled -= 1
        LOG.info("job %s %s%s", job.id, job.status, f": {job.error}" if job.error else "")
        if self.on_settled is not None:
            self.on_settled()
        async with self.changed:
            self.changed.notify_all()

    async def _tidy(self) -> None:
        """Time out the jobs past their deadline, queue again those whose worker went silent, and
        forget the expired."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.status in ("queued", "running") and job.overdue(now):
                error = f"timed out after {self.timeout_s:g} s (sa-serve --job-timeout-s)"
                await self._end(job, "failed", error)
            elif job.owner is not None and self.lease_s is not None and now - job.seen > self.lease_s:
                await self._requeue(job)
        self._expire(now)

    async def _requeue(self, job: Job) -> None:
        """Its worker went silent (its replica died): another worker takes it, or it fails."""
        owner, job.owner = job.owner, None
        if job.status != "running":  # cancelled or timed out while held: it ends here
            await self._settle(job)
        elif job.attempt < MAX_ATTEMPTS:
            job.status, job.steps_done = "queued", 0
            LOG.warning("job %s queued again: its worker %s stopped reporting", job.id, owner)
            async with self.changed:
                self.changed.notify_all()
        else:
            error = f"its worker stopped reporting {job.attempt} times (replicas died)"
            await self._end(job, "failed", error)

    def _expire(self, now: float) -> None:
        """Forget jobs finished longer than the TTL ago, the oldest of those with no result (failed
        or cancelled) past MAX_SETTLED_JOBS, then the oldest results over the cap (what others'
        cancelled jobs never push out)."""
        settled = [j for j in self.jobs.values() if j.finished is not None and j.owner is None]
        for job in [j for j in settled if now - j.finished > self.ttl_s]:
            del self.jobs[job.id]
        resultless = [j for j in settled if j.id in self.jobs and j.content is None]
        if len(resultless) > MAX_SETTLED_JOBS:
            for job in sorted(resultless, key=lambda j: j.finished)[: len(resultless) - MAX_SETTLED_JOBS]:
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


class Board(Protocol):
    """What workers and the app call: a `JobBoard` in this process, or the handle of one served by
    Ray Serve (`ray_serve.RemoteBoard`)."""

    async def submit(
        self, resolved: ResolvedRequest, response_format: str, key: Hashable | None
    ) -> dict | Refusal: ...
    async def read(self, job_id: str, index: int | None = 0, download: bool = False) -> Reading | None: ...
    async def cancel(self, job_id: str) -> dict | None: ...
    async def claim(
        self, owner: str, max_rows: int, wait_s: float, fill_s: float = 0.0
    ) -> list[Claim] | None: ...
    async def report(self, owner: str, steps: dict[str, tuple[int, int]]) -> Progress: ...
    async def finish(
        self, job_id: str, attempt: int, steps_done: int, content: list[bytes] | None, error: str | None
    ) -> None: ...


# A job's run: the claimed job and its step callback in, one file's bytes per clip out.
Runner = Callable[[Claim, StepCallback], Awaitable[list[bytes]]]


@dataclass
class _Running:
    """A claimed job while its worker runs it: its steps, and whether the board said stop."""

    claim: Claim
    steps_done: int = 0
    stop: bool = False

    def on_step(self, done: int, total: int) -> None:
        """From the thread that generates; raising stops the run at this step boundary."""
        if self.stop:
            raise Stopped(f"job {self.claim.id} stopped")
        self.steps_done = done


class JobWorker:
    """Claims jobs from the board a group at a time (what may share a batch, up to `max_rows`
    clips, waiting up to `fill_s` for a group to fill), runs them concurrently through `run`, and
    reports their steps every `report_s`."""

    def __init__(
        self,
        board: Board,
        run: Runner,
        owner: str,
        max_rows: int,
        report_s: float,
        claim_wait_s: float,
        fill_s: float = 0.0,
        report_idle: bool = False,
    ) -> None:
        """`report_idle`: report while running nothing too, to learn of a stop (a shared board's
        servers: sa-serve in one process reads its own board)."""
        self.board, self.run, self.owner, self.max_rows = board, run, owner, max_rows
        self.report_s, self.claim_wait_s, self.fill_s = report_s, claim_wait_s, fill_s
        self.report_idle = report_idle
        self.running: dict[str, _Running] = {}
        self.queued = 0  # jobs queued on the board at its last answer (0 while this one idles)
        self.taking = True  # the board's word at its last answer: False once a stop has begun
        self.closed = asyncio.Event()  # `close()`: claim no more

    def close(self) -> None:
        """Claim no more: `work` returns once the group in hand is handed in."""
        self.closed.set()

    async def work(self) -> None:
        """Until cancelled, until the board is closed, or until `close()` and the group in hand is
        handed in."""
        reports = asyncio.create_task(self._report())
        try:
            while not self.closed.is_set():
                try:
                    group = await self._claim()
                except Exception:  # a shared board restarting: ask again
                    LOG.exception("claiming jobs failed")
                    await asyncio.sleep(self.claim_wait_s)
                    continue
                if group is None:  # the board is closed (a stop has drained it), or this worker
                    return
                await asyncio.gather(*(self._run(claim) for claim in group))
        finally:
            reports.cancel()

    async def _claim(self) -> list[Claim] | None:
        """The board's next group; None once closed. A claim in flight at `close()` is awaited
        within its waits and CLOSING_CLAIM_GRACE_S: cancelling a remote call at once would not stop
        it taking jobs that nobody then runs. Past that the board is gone (a Serve app deletes its
        board beside its replicas): the call is dropped, not waited on for BOARD_TIMEOUT_S; a job
        it took anyway is queued again when its lease ends."""
        claiming = asyncio.ensure_future(
            self.board.claim(self.owner, self.max_rows, self.claim_wait_s, self.fill_s)
        )
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait((claiming, closed), return_when=asyncio.FIRST_COMPLETED)
            if not claiming.done():
                await asyncio.wait(
                    (claiming,), timeout=self.claim_wait_s + self.fill_s + CLOSING_CLAIM_GRACE_S
                )
            if not claiming.done():
                claiming.cancel()
                return None
            return claiming.result()
        except asyncio.CancelledError:  # the worker cancelled (sa-serve's own board): the claim too
            claiming.cancel()
            raise
        finally:
            closed.cancel()

    async def _run(self, claim: Claim) -> None:
        running = self.running[claim.id] = _Running(claim)
        content, error = None, None
        try:
            content = await self.run(claim, running.on_step)
        except Exception as e:  # the job reports it; the worker goes on
            error = f"{type(e).__name__}: {e}"
        finally:
            del self.running[claim.id]
        try:
            await self.board.finish(claim.id, claim.attempt, running.steps_done, content, error)
        except Exception:  # a shared board gone: its lease puts the job back in the queue
            LOG.exception("handing in job %s failed", claim.id)

    def load(self) -> dict[str, float]:
        """What this worker adds to its replica's load: the jobs it runs, and those queued on the
        board (every busy worker sees the same queue; an idle one would have claimed them)."""
        return {"jobs_running": float(len(self.running)), "jobs_queued": float(self.queued)}

    async def _report(self) -> None:
        """Every `report_s` (while it runs jobs, or always with `report_idle`): the steps of the jobs
        it runs, and the board's word on which to stop and whether a stop has begun (its server
        then refuses new work without asking the board each time)."""
        while True:
            await asyncio.sleep(self.report_s)
            if not self.running and not self.report_idle:
                self.queued = 0
                continue
            steps = {job_id: (r.claim.attempt, r.steps_done) for job_id, r in list(self.running.items())}
            try:
                progress = await self.board.report(self.owner, steps)
            except Exception:  # the board restarting: report again next time
                LOG.exception("reporting job steps failed")
                continue
            self.taking = progress.taking
            self.queued = progress.queued if steps else 0
            for job_id in progress.stop:
                if job_id in self.running:
                    self.running[job_id].stop = True
