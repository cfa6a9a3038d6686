"""Stopping without losing work (sa-serve in one process; Ray Serve drains its replicas itself).

The first SIGTERM or Ctrl-C starts a drain: new requests and jobs get 503, while those already
accepted run to their end and the server keeps listening, so that their clients can still poll
and download. It stops once nothing is left to run and every finished job's result has been
downloaded, or `grace_s` after the work ran out, whichever is first. A second signal stops as
uvicorn does: open requests finish, and so do the accepted jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import uvicorn

from stable_audio_rt.serve.jobs import JobBoard

LOG = logging.getLogger("stable_audio_rt.serve")
# How long finished jobs' results wait to be downloaded once a drain has nothing left to run
# (seconds, sa-serve --drain-grace-s): a client polling every few seconds gets there first.
DEFAULT_DRAIN_GRACE_S = 30.0


class Drain:
    """Whether the server is draining, and whether its drain is over."""

    def __init__(self, board: JobBoard, busy: Callable[[], int], grace_s: float) -> None:
        """`busy()`: requests and jobs accepted and not yet settled."""
        self.board, self.busy, self.grace_s = board, busy, grace_s
        self.started = False
        self.delivered: set[str] = set()  # jobs whose result has been downloaded at least once
        self.idle_since: float | None = None  # when the drain last found nothing left to run

    def start(self) -> None:
        self.started = True
        LOG.info(
            "stopping: no new requests or jobs (503); %d accepted still to finish, their results "
            "downloadable for up to %g s after",
            self.busy(),
            self.grace_s,
        )

    def downloaded(self, job_id: str) -> None:
        self.delivered.add(job_id)

    def over(self, now: float) -> bool:
        """Whether the server may stop now: nothing left to run, and every finished result
        downloaded or the grace run out."""
        if not self.started:
            return False
        if self.busy():
            self.idle_since = None
            return False
        self.delivered &= self.board.jobs.keys()  # expired jobs need no delivery
        waiting = [
            job.id
            for job in self.board.jobs.values()
            if job.status == "done" and job.id not in self.delivered
        ]
        if not waiting:
            LOG.info("stopping: every accepted job has finished and its result was downloaded")
            return True
        self.idle_since = self.idle_since if self.idle_since is not None else now
        if now - self.idle_since >= self.grace_s:
            LOG.info("stopping: %d finished job(s) not downloaded within %g s", len(waiting), self.grace_s)
            return True
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first stop signal drains (`Drain`) instead of stopping."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig, frame) -> None:
        if self.drain.started:
            super().handle_exit(sig, frame)  # a second signal: uvicorn's own stop
        else:
            self.drain.start()

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        return self.drain.over(time.monotonic())
