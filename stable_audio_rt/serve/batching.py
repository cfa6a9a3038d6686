"""The dynamic batcher: the pipeline behind a lock, the requests waiting for it, and the batches
they run in (`Generator`); a bounded count of waiting and running requests turns the next one
away with 429."""

from __future__ import annotations

import threading
import time
from collections.abc import Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import HTTPException

from stable_audio_rt.runtime.audio_io import audio_bytes
from stable_audio_rt.runtime.pipeline import GenerationResult, StableAudio, StepCallback
from stable_audio_rt.runtime.planning import BatchKey
from stable_audio_rt.runtime.requests import ResolvedRequest
from stable_audio_rt.serve.jobs import Claim, Stopped, joins
from stable_audio_rt.serve.metrics import ServeMetrics

# What a client waits before retrying a full queue (seconds, the Retry-After header).
RETRY_AFTER_S = 1
# Claimed jobs that stopped before their batch formed, remembered (newest first kept) so that a
# forming batch waits for them no more: far more than the batches forming at once hold.
WITHDRAWN_KEPT = 1024
# How often a request waiting for the model checks that it should still run (its client there,
# its job not cancelled or timed out), in seconds.
WAIT_POLL_S = 0.05


@dataclass
class _Ticket:
    """One request waiting for the model, and its outcome once a batch has run it."""

    resolved: ResolvedRequest
    on_step: StepCallback
    key: BatchKey | None  # None: it runs alone
    claim: Claim | None = None  # a job's: its claim has waited for batch-mates already
    taken: bool = False  # in a batch (changed under Generator.arrived)
    result: GenerationResult | None = None
    error: Exception | None = None  # its own failure, or its Stopped
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return self.resolved.batch

    def finish(self, result: GenerationResult | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Generator:
    """The pipeline behind a lock, with the count of requests waiting for it and the dynamic
    batcher: whichever waiting thread gets the model runs the oldest waiting request, together
    with the waiting requests of its batch key (in arrival order, up to `max_batch` clips),
    waiting up to `batch_wait_s` for more to arrive. Each request gets its own outcome: its own
    error if it alone fails (after a failed batch every request is run alone), its own `Stopped`.

    Stopping in a batch: a request stopped (cancelled, timed out, its client gone) while it waits
    leaves the queue unrun; one stopped while its batch runs gives up its answer at the next step
    boundary but its batch-mates run on (its rows are computed and discarded); a batch stops early
    only when every one of its requests has stopped."""

    def __init__(
        self,
        pipe: StableAudio,
        max_queue: int,
        metrics: ServeMetrics,
        max_batch: int = 1,
        batch_wait_s: float = 0.0,
    ) -> None:
        self.pipe, self.max_queue, self.metrics = pipe, max_queue, metrics
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.lock = threading.Lock()  # the model: held while a batch forms and runs
        self.waiting = 0  # changed on the event loop only
        self.arriving = 0  # bodies being read and checked, each maybe a request (event loop only)
        self.pending: list[_Ticket] = []  # requests waiting for a batch, oldest first
        self.arrived = threading.Condition()  # guards `pending`; notified when one is added
        self.withdrawn: dict[str, None] = {}  # claimed jobs stopped before a batch took them (ordered)

    def check_room(self) -> None:
        """429 unless the queue has a place for one more request."""
        if self.waiting >= self.max_queue:
            self.refuse_busy(f"the queue is full ({self.max_queue} requests waiting or running)")

    def refuse_busy(self, why: str) -> None:
        self.metrics.requests.labels("rejected_busy").inc()
        raise HTTPException(429, f"{why}; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})

    @contextmanager
    def arrival(self, takes_place: bool) -> Iterator[None]:
        """A body being read and checked (on the event loop only): 429 at once, before any of it
        is read, if it would take a place in a full queue (`takes_place`), or if `max_queue`
        bodies are arriving already (so clients cannot hold more bodies in the server's memory
        than that; arriving bodies hold no place in the queue, so slow ones cannot shut it)."""
        if takes_place:
            self.check_room()
        if self.arriving >= self.max_queue:
            self.refuse_busy(f"{self.arriving} request bodies are arriving already (--max-queue)")
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def admit(self) -> None:
        self.check_room()
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)

    def leave(self) -> None:
        self.waiting -= 1
        self.metrics.queue_depth.set(self.waiting)

    def batch_key(self, resolved: ResolvedRequest) -> BatchKey | None:
        """What the request must share with others to run in one batch with them (None: alone)."""
        return self.pipe.batch_key(resolved) if self.max_batch > 1 else None

    def run(
        self, resolved: ResolvedRequest, file_format: str, on_step: StepCallback, claim: Claim | None = None
    ) -> tuple[list[bytes], GenerationResult]:
        """Wait for the model, generate (maybe in a batch with others), then encode each clip
        (still off the event loop: a long clip's FLAC takes a while). `on_step(done, total)` is
        called while the request waits (with 0 done) and after each step; it raises `Stopped`
        to stop the request there. A job's `claim` (the jobs claimed with it) ends its batch's
        wait once those have arrived: the claim waited for batch-mates already."""
        ticket = _Ticket(resolved, on_step, self.batch_key(resolved), claim)
        with self.arrived:
            self.pending.append(ticket)
            self.arrived.notify_all()
        total = resolved.request.steps
        while not ticket.done.is_set():
            if not ticket.taken:
                try:
                    on_step(0, total)
                except Exception:
                    with self.arrived:
                        if not ticket.taken:  # else its batch has it: the batch answers it
                            self.pending.remove(ticket)
                            if claim is not None:  # its claim's batch-mates wait for it no more
                                self._withdrew(claim.id)
                            raise
            if self.lock.acquire(timeout=WAIT_POLL_S):
                try:
                    if not ticket.done.is_set():
                        self._run_next_batch()
                finally:
                    self.lock.release()
        if ticket.error is not None:
            raise ticket.error
        result = ticket.result
        return [audio_bytes(clip, result.sample_rate, file_format) for clip in result.audio], result

    def _run_next_batch(self) -> None:
        """With the model held: form the next batch and run it, answering each of its requests."""
        batch = self._form_batch()
        for ticket in batch:  # stopped while the batch formed: it leaves unrun
            try:
                ticket.on_step(0, ticket.resolved.request.steps)
            except Exception as e:
                ticket.finish(error=e)
        batch = [t for t in batch if not t.done.is_set()]
        if not batch:
            return
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.batch_rows.observe(sum(t.rows for t in batch))
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        running = {id(t): t for t in batch}

        def on_step(done: int, total: int) -> None:
            for ticket in list(running.values()):
                try:
                    ticket.on_step(done, total)
                except Exception as e:  # it gives up its answer; its batch-mates run on
                    del running[id(ticket)]
                    ticket.finish(error=e)
            if not running:
                raise Stopped("every request of the batch stopped")

        try:
            results = self.pipe.run_batch([t.resolved for t in batch], on_step=on_step)
        except Exception:
            if not running:
                return
            # Whose fault it was is unknown: each request still running gets its own outcome alone.
            for ticket in running.values():
                self._run_alone(ticket)
            return
        for ticket, result in zip(batch, results, strict=True):
            if not ticket.done.is_set():
                ticket.finish(result)
        self._observe_rtf(results)  # once every request has its answer

    def _form_batch(self) -> list[_Ticket]:
        """The oldest waiting request and the waiting ones of its batch key that fit, in arrival
        order, after waiting up to `batch_wait_s` for the batch to fill."""
        deadline = time.monotonic() + self.batch_wait_s
        batch: list[_Ticket] = []
        with self.arrived:
            while True:
                for ticket in list(self.pending):
                    if batch and not joins(batch, ticket, self.max_batch):
                        continue
                    self.pending.remove(ticket)
                    ticket.taken = True
                    batch.append(ticket)
                left = deadline - time.monotonic()
                full = sum(t.rows for t in batch) >= self.max_batch
                done = _claims_complete(batch, self.withdrawn)
                if batch[0].key is None or full or done or left <= 0:
                    return batch
                self.arrived.wait(left)

    def _withdrew(self, job_id: str) -> None:
        """A claimed job stopped before its batch took it (under `arrived`): recorded, the
        oldest such record let go past WITHDRAWN_KEPT, and a forming batch told."""
        self.withdrawn[job_id] = None
        if len(self.withdrawn) > WITHDRAWN_KEPT:
            del self.withdrawn[next(iter(self.withdrawn))]
        self.arrived.notify_all()

    def _run_alone(self, ticket: _Ticket) -> None:
        try:
            result = self.pipe.run_resolved(ticket.resolved, on_step=ticket.on_step)
        except Exception as e:
            ticket.finish(error=e)
        else:
            ticket.finish(result)
            self._observe_rtf([result])

    def _observe_rtf(self, results: list[GenerationResult]) -> None:
        """One pipeline call's real-time factor: its seconds per second of the audio it made (a
        batch's results each hold the whole call's timings)."""
        audio_s = sum(r.audio.shape[0] * r.audio.shape[-1] / r.sample_rate for r in results)
        self.metrics.rtf.observe(sum(results[0].timings.values()) / audio_s)


def _claims_complete(batch: list[_Ticket], withdrawn: Container[str]) -> bool:
    """Whether the batch is jobs only, with every job claimed with them in it or `withdrawn`:
    nothing else to wait for (their claim already waited the batch wait for more to be queued)."""
    if any(t.claim is None for t in batch):
        return False
    here = {t.claim.id for t in batch}
    return all(job in here or job in withdrawn for t in batch for job in t.claim.claimed_with)
