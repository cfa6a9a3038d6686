"""The job board that replicas share, without a server: which queued jobs a worker claims
together, a silent worker's jobs queued again for another (its late reports and results ignored),
jobs failing after too many silent workers, a cancelled job settling once when its worker hands it
in, and a full board refusing jobs."""

import asyncio
import time

import pytest

from stable_audio_rt.runtime.requests import GenerationRequest, resolve_request
from stable_audio_rt.serve import jobs
from stable_audio_rt.serve.jobs import MAX_ATTEMPTS, JobBoard

# A lease (seconds) the tests outlive by moving the board's clock, not by sleeping: with a real
# clock, a busy machine pausing 50 ms between two awaits would end a lease the test meant to keep.
LEASE_S = 0.05


def _resolved(pipe, steps: int = 2, outputs: int = 1):
    request = GenerationRequest(("x",), seconds_total=0.5, steps=steps, num_outputs=outputs)
    return resolve_request(request, pipe.config)


def _board(**kwargs) -> tuple[JobBoard, list[int]]:
    settled = []
    board = JobBoard(3600.0, 1 << 30, on_settled=lambda: settled.append(1), **kwargs)
    return board, settled


def test_a_claim_takes_the_oldest_and_the_jobs_right_behind_it_that_share_its_batch(pipe):
    async def scenario():
        board, _ = _board()
        views = [
            await board.submit(_resolved(pipe, outputs=rows), "wav", key)
            for rows, key in [(1, "a"), (2, "a"), (1, "b"), (1, "a"), (1, None), (1, None)]
        ]
        ids = [v["id"] for v in views]
        first = await board.claim("w1", max_rows=4, wait_s=0)
        second = await board.claim("w2", max_rows=4, wait_s=0)  # "b" stops the first group
        third = await board.claim("w1", max_rows=1, wait_s=0)
        fourth = await board.claim("w1", max_rows=4, wait_s=0)  # None: always alone
        return ids, [[c.id for c in group] for group in (first, second, third, fourth)]

    ids, groups = asyncio.run(scenario())
    assert groups == [ids[0:2], [ids[2]], [ids[3]], [ids[4]]]


def test_a_silent_workers_job_runs_again_and_its_late_answer_is_ignored(pipe, clock):
    async def scenario():
        board, settled = _board(lease_s=LEASE_S)
        job = (await board.submit(_resolved(pipe), "wav", None))["id"]
        (lost,) = await board.claim("dead", 1, 0)
        assert (await board.report("dead", {job: (lost.attempt, 1)})).stop == []
        clock.advance(2 * LEASE_S)  # "dead" reports no more
        (again,) = await board.claim("alive", 1, 0)
        assert (again.id, again.attempt) == (job, 2)
        assert (await board.report("dead", {job: (lost.attempt, 2)})).stop == [job], "told to stop"
        await board.finish(job, lost.attempt, 2, [b"stale"], None)
        assert (await board.read(job)).view["status"] == "running" and settled == []
        await board.finish(job, again.attempt, 2, [b"fresh"], None)
        reading = await board.read(job)
        return reading, settled

    reading, settled = asyncio.run(scenario())
    assert reading.view["status"] == "done" and reading.view["attempts"] == 2
    assert reading.clip == b"fresh" and settled == [1]


def test_a_result_handed_in_just_after_the_lease_ran_out_stands(pipe, clock):
    async def scenario():
        board, settled = _board(lease_s=LEASE_S)
        job = (await board.submit(_resolved(pipe), "wav", None))["id"]
        (claim,) = await board.claim("slow", 1, 0)
        clock.advance(2 * LEASE_S)
        assert (await board.read(job)).view["status"] == "queued"  # queued again, not yet taken
        await board.finish(job, claim.attempt, 2, [b"late"], None)
        return await board.read(job), await board.claim("other", 1, 0), settled

    reading, taken, settled = asyncio.run(scenario())
    assert reading.view["status"] == "done" and reading.clip == b"late" and reading.view["attempts"] == 1
    assert taken == [] and settled == [1]


def test_a_job_whose_workers_keep_going_silent_fails(pipe, clock):
    async def scenario():
        board, settled = _board(lease_s=LEASE_S)
        job = (await board.submit(_resolved(pipe), "wav", None))["id"]
        for _ in range(MAX_ATTEMPTS):
            assert len(await board.claim("dying", 1, 0)) == 1
            clock.advance(2 * LEASE_S)
        assert await board.claim("alive", 1, 0) == []
        return (await board.read(job)).view, settled

    view, settled = asyncio.run(scenario())
    assert view["status"] == "failed" and f"stopped reporting {MAX_ATTEMPTS} times" in view["error"]
    assert settled == [1]


def test_a_cancelled_running_job_settles_once_when_handed_in(pipe):
    async def scenario():
        board, settled = _board()
        job = (await board.submit(_resolved(pipe, steps=50), "wav", None))["id"]
        (claim,) = await board.claim("w", 1, 0)
        assert (await board.cancel(job))["status"] == "cancelled"
        assert settled == [], "its worker still runs it: its place is not free yet"
        assert (await board.report("w", {job: (claim.attempt, 3)})).stop == [job]
        await board.finish(job, claim.attempt, 3, None, "Stopped: job stopped")
        await board.finish(job, claim.attempt, 3, None, "again")  # a repeat changes nothing
        await asyncio.wait_for(board.idle(), 1)
        return (await board.read(job)).view, settled

    view, settled = asyncio.run(scenario())
    assert view["status"] == "cancelled" and "error" not in view and settled == [1]


def test_a_settled_job_keeps_its_status_but_not_its_request(pipe):
    """Done, failed or cancelled (queued or running), a job's prompts and uploads are let go at
    once, not kept for the TTL; its status still tells what it asked."""

    async def scenario():
        board, _ = _board()
        ids = [(await board.submit(_resolved(pipe, steps=3, outputs=2), "wav", None))["id"] for _ in range(4)]
        asked = (await board.read(ids[0])).view
        claims = [(await board.claim("w", 2, 0))[0] for _ in range(3)]
        await board.finish(ids[0], claims[0].attempt, 3, [b"a", b"b"], None)
        await board.finish(ids[1], claims[1].attempt, 1, None, "RuntimeError: fell over")
        await board.cancel(ids[2])  # running: settled when its worker hands it in
        held = board.jobs[ids[2]].resolved is not None
        await board.finish(ids[2], claims[2].attempt, 1, None, "Stopped")
        await board.cancel(ids[3])  # queued
        return asked, [(await board.read(i)).view for i in ids], [board.jobs[i].resolved for i in ids], held

    asked, views, requests, held = asyncio.run(scenario())
    assert [v["status"] for v in views] == ["done", "failed", "cancelled", "cancelled"]
    assert held and requests == [None] * 4
    what = ("steps_total", "n", "warnings")  # each drew its own seed
    assert all({k: v[k] for k in what} == {k: asked[k] for k in what} for v in views)
    assert asked["steps_total"] == 3 and asked["n"] == 2 and views[0]["seed"] == asked["seed"]


def test_the_board_keeps_the_newest_jobs_without_a_result_up_to_its_bound(pipe, monkeypatch):
    """Submitting and cancelling jobs in a loop cannot grow the board: past MAX_SETTLED_JOBS the
    oldest failed or cancelled ones are forgotten, never a queued one, nor a done one whose
    result its client has yet to download (results have their own cap)."""
    monkeypatch.setattr(jobs, "MAX_SETTLED_JOBS", 3)

    async def scenario():
        board, _ = _board()
        done = (await board.submit(_resolved(pipe), "wav", None))["id"]
        (claim,) = await board.claim("w", 1, 0)
        await board.finish(done, claim.attempt, 2, [b"clip"], None)
        queued = (await board.submit(_resolved(pipe), "wav", None))["id"]
        cancelled = []
        for _ in range(10):
            cancelled.append((await board.submit(_resolved(pipe), "wav", None))["id"])
            await board.cancel(cancelled[-1])
        return [await board.read(i) for i in [done, queued, *cancelled]]

    kept = [reading is not None for reading in asyncio.run(scenario())]
    assert kept == [True, True] + [False] * 7 + [True] * 3, "the done, the queued and the 3 newest cancelled"


def test_a_full_board_refuses_and_a_claim_waits_for_work(pipe):
    async def scenario():
        board, _ = _board(max_jobs=1)
        assert isinstance(await board.submit(_resolved(pipe), "wav", None), dict)
        assert await board.submit(_resolved(pipe), "wav", None) == "full"
        await board.claim("w", 1, 0)
        began = time.monotonic()
        assert await board.claim("w", 1, 0.2) == []  # nothing queued: it waited, then gave up
        waited = time.monotonic() - began
        late = asyncio.create_task(board.claim("w", 1, 5))
        await asyncio.sleep(0.05)
        board.max_jobs = None
        await board.submit(_resolved(pipe), "wav", None)
        return waited, await asyncio.wait_for(late, 1)

    waited, late = asyncio.run(scenario())
    assert waited >= 0.2 and len(late) == 1


@pytest.mark.parametrize("outputs", [1, 3])
def test_a_claim_counts_clips_not_jobs(pipe, outputs):
    async def scenario():
        board, _ = _board()
        for _ in range(3):
            await board.submit(_resolved(pipe, outputs=outputs), "wav", "k")
        return await board.claim("w", max_rows=3, wait_s=0)

    assert len(asyncio.run(scenario())) == 3 // outputs


def test_a_claim_waits_for_jobs_to_join_its_batch_and_ends_once_it_is_full(pipe):
    """Jobs posted one after another to an idle worker start together: its claim of the first
    waits up to `fill_s` for more, and ends as soon as the batch is full."""

    async def scenario():
        board, _ = _board()
        ids = [(await board.submit(_resolved(pipe), "wav", "a"))["id"]]
        claim = asyncio.create_task(board.claim("w", max_rows=3, wait_s=0, fill_s=60))
        for _ in range(2):
            await asyncio.sleep(0.02)
            ids.append((await board.submit(_resolved(pipe), "wav", "a"))["id"])
        return ids, await asyncio.wait_for(claim, 5)

    ids, group = asyncio.run(scenario())
    assert [c.id for c in group] == ids


@pytest.mark.parametrize("behind", ["b", None])
def test_a_claims_wait_for_batch_mates_ends_when_a_job_that_cannot_join_is_queued(pipe, behind):
    async def scenario():
        board, _ = _board()
        first = (await board.submit(_resolved(pipe), "wav", "a"))["id"]
        claim = asyncio.create_task(board.claim("w", max_rows=3, wait_s=0, fill_s=60))
        await asyncio.sleep(0.02)
        await board.submit(_resolved(pipe), "wav", behind)  # FIFO: nothing queued later may pass it
        return first, await asyncio.wait_for(claim, 5)

    first, group = asyncio.run(scenario())
    assert [c.id for c in group] == [first]


def test_a_claims_wait_for_batch_mates_ends_after_fill_s(pipe):
    async def scenario():
        board, _ = _board()
        first = (await board.submit(_resolved(pipe), "wav", "a"))["id"]
        began = time.monotonic()
        group = await asyncio.wait_for(board.claim("w", max_rows=3, wait_s=0, fill_s=0.2), 5)
        return first, group, time.monotonic() - began

    first, group, waited = asyncio.run(scenario())
    assert [c.id for c in group] == [first] and waited >= 0.2


def test_a_status_read_ships_no_audio_and_only_a_download_counts_as_fetched(pipe):
    """A status poll through a shared board must not carry the clip's bytes with it."""

    async def scenario():
        board, _ = _board()
        job = (await board.submit(_resolved(pipe, outputs=2), "wav", None))["id"]
        (claim,) = await board.claim("w", 2, 0)
        await board.finish(job, claim.attempt, 2, [b"clip 0", b"clip 1"], None)
        status = await board.read(job, index=None)
        peek = await board.read(job, 1)
        fetched = await board.read(job, 0, download=True)
        return status, peek, fetched, board.jobs[job].fetched

    status, peek, fetched, downloaded = asyncio.run(scenario())
    assert status.clip is None and status.clips == 2 and status.view["status"] == "done"
    assert peek.clip == b"clip 1" and fetched.clip == b"clip 0" and downloaded == {0}


def test_a_job_submitted_once_a_stop_began_is_refused_by_the_board_itself(pipe):
    """Under Ray a replica's own check and the board's submit are two calls: a stop between them
    must not queue a job that no worker will claim."""

    async def scenario():
        board, _ = _board()
        board.refuse_new()
        refused = await board.submit(_resolved(pipe), "wav", None)
        progress = await board.report("w", {})
        return refused, progress, board.jobs

    refused, progress, jobs = asyncio.run(scenario())
    assert refused == "stopping" and jobs == {} and progress.taking is False
