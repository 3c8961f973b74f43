"""A periodic step runs again and again until closed, and close stops one under way."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from broker.periodic import Periodic


class _Step:
    """A periodic step that counts its runs, sets ``third`` on the third, and raises on the
    first ``failing`` ones."""

    def __init__(self, failing: int = 0) -> None:
        self.runs = 0
        self.failing = failing
        self.third = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs == 3:
            self.third.set()
        if self.runs <= self.failing:
            raise RuntimeError("a bug, or a failure nobody caught")


def test_a_step_runs_every_interval_until_closed() -> None:
    async def scenario() -> tuple[int, int]:
        step = _Step()
        periodic = Periodic("test", 0.01, step)
        periodic.start()
        await asyncio.wait_for(step.third.wait(), 5.0)
        await periodic.close()
        closed_at = step.runs
        await asyncio.sleep(0.05)
        return closed_at, step.runs

    closed_at, later = asyncio.run(scenario())
    assert closed_at >= 3
    assert later == closed_at


def test_close_cancels_a_step_under_way_and_may_be_called_twice() -> None:
    async def scenario() -> bool:
        started = asyncio.Event()
        finished = False

        async def step() -> None:
            nonlocal finished
            started.set()
            await asyncio.sleep(60)
            finished = True

        periodic = Periodic("test", 0.0, step)
        periodic.start()
        await started.wait()
        await asyncio.wait_for(periodic.close(), 1.0)
        await periodic.close()
        return finished

    assert asyncio.run(scenario()) is False


def test_a_step_that_raises_is_logged_and_the_next_one_runs() -> None:
    # It ended the task: retention stopped for the life of the process after one run whose
    # record the disk could not take.
    async def scenario() -> int:
        step = _Step(failing=2)
        periodic = Periodic("test-job", 0.01, step)
        periodic.start()
        await asyncio.wait_for(step.third.wait(), 5.0)
        await periodic.close()
        return step.runs

    with capture_logs() as logs:
        assert asyncio.run(scenario()) >= 3
    failed = [entry for entry in logs if entry["event"] == "periodic_step_failed"]
    assert [(entry["job"], entry["error_type"]) for entry in failed] == [
        ("test-job", "RuntimeError")
    ] * 2
