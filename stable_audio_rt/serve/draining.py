"""Stopping without losing work, for sa-serve in one process and sa-serve --ray alike.

The first SIGTERM or Ctrl-C starts a drain: new requests and jobs get 503, while those already
accepted run to their end and the server keeps listening, so that their clients can still poll
and download. It stops once nothing is left to run and every finished job's result has been
downloaded, or `grace_s` after the work ran out, whichever is first. A second signal stops at
once: the jobs still queued or running are cancelled and the synchronous requests still open are
stopped (each running one at its next step; their clients get 503), and the process exits with
128 + the signal's number, as a process killed by it would report (130 for Ctrl-C).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

LOG = logging.getLogger("stable_audio_rt.serve")
# How long finished jobs' results wait to be downloaded once a drain has nothing left to run
# (seconds, sa-serve --drain-grace-s): a client polling every few seconds gets there first.
DEFAULT_DRAIN_GRACE_S = 30.0


class Drain:
    """Whether a server is draining, and whether its drain is over: sa-serve's in this process,
    and sa-serve --ray's over its replicas (the command line asks the shared job board)."""

    def __init__(
        self,
        left: Callable[[], tuple[int, int]],
        grace_s: float,
        on_start: Callable[[], None],
        on_cut_short: Callable[[], None] = lambda: None,
    ) -> None:
        """`left()`: (requests and jobs accepted and not yet settled, jobs done but not fully
        downloaded); `on_start()` makes the servers refuse new work; `on_cut_short()` (from a
        signal handler, on the event loop's thread) stops what runs."""
        self.left, self.grace_s, self.on_start, self.on_cut_short = left, grace_s, on_start, on_cut_short
        self.started = False
        self.signal: int | None = None  # the second signal's number: stop without waiting
        self.over_at: float | None = None  # when `over` first said the server may stop
        self.idle_since: float | None = None  # when the drain last found nothing left to run

    @property
    def cut_short(self) -> bool:
        """A second signal came: stop without waiting for jobs or downloads."""
        return self.signal is not None

    def start(self) -> None:
        self.started = True
        self.on_start()
        LOG.info(
            "stopping: no new requests or jobs (503); %d accepted still to finish, their results "
            "downloadable for up to %g s after",
            self.left()[0],
            self.grace_s,
        )

    def over(self, now: float) -> bool:
        """Whether the server may stop now: nothing left to run, and every finished result
        downloaded or the grace run out."""
        if self.over_at is not None:
            return True
        if self._over(now):
            self.over_at = now
            return True
        return False

    def _over(self, now: float) -> bool:
        if not self.started:
            return False
        busy, waiting = self.left()
        if busy:
            self.idle_since = None
            return False
        if not waiting:
            LOG.info("stopping: nothing left to run or download")
            return True
        self.idle_since = self.idle_since if self.idle_since is not None else now
        if now - self.idle_since >= self.grace_s:
            LOG.info("stopping: %d finished job(s) not downloaded within %g s", waiting, self.grace_s)
            return True
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first stop signal drains (`Drain`) instead of stopping."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Not uvicorn's own, which raises the signal again once it has stopped (a traceback for
        Ctrl-C): the caller exits with `Drain.signal`'s status instead."""
        if not self.drain.started:
            self.drain.start()
        elif self.drain.over_at is not None:  # drained, now stopping: nothing to cut short or cancel
            self.force_exit = True
        elif not self.drain.cut_short:  # a second signal: stop now
            self.drain.signal = sig
            self.drain.on_cut_short()
            self.should_exit = True
        else:  # a third: not even waiting for the stopped requests to answer
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        return self.drain.over(time.monotonic())
