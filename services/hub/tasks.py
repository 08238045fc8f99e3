"""TaskGroup: background work of the hub (disconnect clean-up, announcements) that must not be
garbage-collected half-way, must log its failure once, and can be awaited or cancelled at shutdown."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("gateway.hub")


class TaskGroup:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, aw: Awaitable[Any]) -> asyncio.Task[Any] | None:
        """Run in the background, keeping a reference and logging a failure (not a cancellation).
        After `cancel` nothing starts: a socket whose close comes after the gateway stopped has no
        store left to clean (its Redis client is closed), and the process is exiting."""
        if self._closed:
            if inspect.iscoroutine(aw):
                aw.close()
            return None
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def settle(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, for what is running now."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def cancel(self, timeout: float = 1.0) -> None:
        """Cancel what is running and give it `timeout` to unwind (a Redis call mid-connect must
        close its socket while the loop still runs)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())
