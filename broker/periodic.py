"""A step run every so many seconds on a task of its own, until closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("broker.periodic")


class Periodic:
    def __init__(self, name: str, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        self._name = name
        self._seconds = seconds
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        """Stop; a step under way is cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._seconds)
            try:
                await self._step()
            except Exception as exc:
                # A step that raised ended the task, and with it the job for the life of the
                # process, unseen: retention stopped for good after one run whose record the
                # disk could not take. The next step runs at its time.
                log.error(
                    "periodic_step_failed",
                    job=self._name,
                    error_type=type(exc).__name__,
                    exc_info=exc,
                )
