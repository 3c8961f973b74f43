"""The store's and the writer's thread pool: it runs work as an Executor does, within its
bound, and a call that never returns does not hold the process's exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from broker.daemon_executor import DaemonThreadExecutor


def test_results_and_exceptions_reach_the_caller_through_the_loop() -> None:
    executor = DaemonThreadExecutor(2, "t")

    def fail() -> None:
        raise ValueError("from the thread")

    async def scenario() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(executor, sum, [1, 2, 3])
        with pytest.raises(ValueError, match="from the thread") as raised:
            await loop.run_in_executor(executor, fail)
        return result, str(raised.value)

    assert asyncio.run(scenario()) == (6, "from the thread")
    executor.shutdown()


def test_no_more_threads_than_the_bound_and_idle_ones_are_used_again() -> None:
    executor = DaemonThreadExecutor(3, "bounded")
    release = threading.Event()
    names: set[str] = set()

    def hold() -> None:
        names.add(threading.current_thread().name)
        release.wait(5)

    held = [executor.submit(hold) for _ in range(6)]
    time.sleep(0.2)
    assert len(names) == 3  # three run; three wait their turn
    release.set()
    for future in held:
        future.result(timeout=5)
    for _ in range(10):
        executor.submit(names.add, "x").result(timeout=5)
    assert {name for name in names if name != "x"} == {"bounded_0", "bounded_1", "bounded_2"}
    assert all(
        thread.daemon for thread in threading.enumerate() if thread.name.startswith("bounded_")
    )
    executor.shutdown()


def test_shutdown_cancels_what_waits_and_refuses_more() -> None:
    executor = DaemonThreadExecutor(1, "shut")
    release = threading.Event()
    running = executor.submit(release.wait, 5)
    waiting = executor.submit(sum, [1])
    executor.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(sum, [2])
    release.set()
    assert running.result(timeout=5) is True


def test_a_call_that_never_returns_does_not_hold_the_exit() -> None:
    # With concurrent.futures' pool this process waits for the call for ever.
    program = (
        "import threading, time\n"
        "from broker.daemon_executor import DaemonThreadExecutor\n"
        "executor = DaemonThreadExecutor(1, 'stuck')\n"
        "executor.submit(threading.Event().wait)\n"
        "time.sleep(0.2)\n"
        "executor.shutdown(wait=False, cancel_futures=True)\n"
        "print('done')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=20, check=False
    )
    assert (done.returncode, done.stdout) == (0, "done\n")


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DaemonThreadExecutor(0, "none")
