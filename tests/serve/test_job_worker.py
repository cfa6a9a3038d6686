"""A job worker closing (a Ray Serve replica stopping) with a claim in flight: a board that
answers within the claim's waits has its group run and handed in; a board that never answers (a
Serve app deletes its board beside its replicas) is given up on after the claim's waits and
CLOSING_CLAIM_GRACE_S, not BOARD_TIMEOUT_S (the deletion took 34 s per app)."""

import asyncio
import time
from types import SimpleNamespace

from stable_audio_rt.serve.jobs import CLOSING_CLAIM_GRACE_S, JobWorker

CLAIM_WAIT_S, FILL_S = 0.2, 0.1


class Board:
    """Answers a claim after `answer_s` (None: never), with one job the first time."""

    def __init__(self, answer_s: float | None) -> None:
        self.answer_s = answer_s
        self.claims = self.cancelled = 0
        self.finished: list[tuple[str, bytes | None]] = []

    async def claim(self, owner, max_rows, wait_s, fill_s):
        self.claims += 1
        try:
            await asyncio.sleep(3600 if self.answer_s is None else self.answer_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [SimpleNamespace(id="job", attempt=1)] if self.claims == 1 else []

    async def report(self, owner, steps):
        return SimpleNamespace(stop=set(), taking=True, queued=0)

    async def finish(self, job_id, attempt, steps_done, content, error):
        self.finished.append((job_id, content))


async def _close_mid_claim(board: Board) -> float:
    async def run(claim, on_step):
        return [b"audio"]

    worker = JobWorker(board, run, "me", max_rows=1, report_s=60, claim_wait_s=CLAIM_WAIT_S, fill_s=FILL_S)
    working = asyncio.create_task(worker.work())
    while board.claims == 0:
        await asyncio.sleep(0.01)
    worker.close()
    began = time.monotonic()
    await asyncio.wait_for(working, timeout=30)
    return time.monotonic() - began


def test_a_claim_answered_within_its_waits_is_run_and_handed_in():
    board = Board(answer_s=CLAIM_WAIT_S)
    asyncio.run(_close_mid_claim(board))
    assert board.finished == [("job", [b"audio"])] and board.claims == 1 and board.cancelled == 0


def test_a_board_that_never_answers_is_given_up_on_after_the_claims_waits_and_the_grace():
    board = Board(answer_s=None)
    took = asyncio.run(_close_mid_claim(board))
    bound = CLAIM_WAIT_S + FILL_S + CLOSING_CLAIM_GRACE_S
    assert bound - 0.05 <= took <= bound + 1.0, took
    assert board.cancelled == 1 and board.finished == []


def test_a_worker_cancelled_mid_claim_cancels_its_claim():
    """sa-serve in one process stops its worker by cancelling it: the claim must not go on alone
    and take jobs nobody runs."""

    async def cancel_mid_claim(board: Board) -> None:
        worker = JobWorker(board, None, "me", max_rows=1, report_s=60, claim_wait_s=CLAIM_WAIT_S)
        working = asyncio.create_task(worker.work())
        while board.claims == 0:
            await asyncio.sleep(0.01)
        working.cancel()
        await asyncio.gather(working, return_exceptions=True)
        await asyncio.sleep(0.1)  # the claim's cancellation lands (asyncio.run's end cancels all)
        assert board.cancelled == 1

    asyncio.run(cancel_mid_claim(Board(answer_s=None)))
