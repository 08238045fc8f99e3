"""One client connection as the services see it: identity, rooms, limits and the outbound queue.

Frames for a connection produced in one turn of the event loop leave in one write (one syscall),
at the end of the turn, or of a few turns while the loop is busy (services/flusher.py). While the
socket is backed up they wait instead in a queue bounded in frames and bytes, drained by a single
writer that waits for each write to reach the socket. A client that does not read fills its own
queue and is closed with 4008; nobody else waits for it (centrifuge's per-client queue with a
"slow" disconnect). Pongs share that queue and its bound: a client that floods pings and never
reads is a slow consumer like any other (issue: pongs written straight to the stream grew memory
without limit).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from schemas.protocol import CLOSE_NORMAL, CLOSE_SLOW
from services.auth import Identity
from services.flusher import flusher
from services.metrics import METRICS
from services.ratelimit import TokenBucket, ViolationWindow
from services.settings import Settings

log = logging.getLogger("gateway.session")

DRAIN_BATCH = 64  # queued frames written together once a backed-up socket takes data again
FLUSH_GRACE = 2.0  # seconds queued frames may take to leave before a close goes ahead anyway
REPLAY_STALL = 30.0  # seconds a paced replay waits for the socket to take a frame before closing 4008


class Transport(Protocol):
    def write(self, items: Sequence[bytes | Pong]) -> Awaitable[None] | None:
        """Send text frames (bytes) and pongs in one write: None when the OS took them at once, else
        an awaitable that resolves once it has them all."""

    def close(self, code: int, reason: str) -> None: ...

    def backed_up(self) -> bool:
        """True while earlier frames are still waiting for the OS to take them."""


class Probed(Transport, Protocol):
    """A transport whose peer can be asked for a sign of life (keepalive, services/connection)."""

    def probe(self) -> bool:
        """Ask the peer for a sign of life (a WebSocket ping); False when the transport is closing."""

    def probe_answered(self) -> bool:
        """Whether the peer answered since the last probe."""


class Pong:
    """A pong waiting in the outbound queue (the queue holds text frames as plain bytes)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data) + 2  # what it costs on the wire: header and payload


class Session:
    __slots__ = (
        "_batch",
        "_closed_cb",
        "_last_write",
        "_low_mark",
        "_low_waiter",
        "_queue",
        "_queued_bytes",
        "_reason",
        "_transport_closed",
        "_writer",
        "_writing",
        "close_code",
        "closed",
        "conn_id",
        "identity",
        "rate",
        "remote",
        "rooms",
        "settings",
        "transport",
        "transport_kind",
        "violations",
    )

    def __init__(
        self,
        conn_id: str,
        identity: Identity,
        transport: Transport,
        settings: Settings,
        on_close: Callable[[Session, int], None] | None = None,
        remote: str = "",
        transport_kind: str = "websocket",
    ) -> None:
        self.conn_id = conn_id
        self.remote = remote  # the client's address (what the backend's hooks are told)
        self.transport_kind = transport_kind
        self.identity = identity
        self.transport = transport
        self.settings = settings
        self.rooms: set[str] = set()
        self.rate = TokenBucket(settings.rate_limit, settings.rate_burst)
        self.violations = ViolationWindow(settings.invalid_frame_limit)
        self.closed = False
        self.close_code: int | None = None
        self._batch: list[bytes | Pong] = []  # this turn's frames, written at its end
        self._queue: collections.deque[bytes | Pong] | None = None  # made when first needed
        self._queued_bytes = 0
        self._writing = False
        self._writer: asyncio.Task[None] | None = None
        self._last_write: Awaitable[None] | None = None
        self._closed_cb = on_close
        self._reason = ""
        self._transport_closed = False
        self._low_waiter: asyncio.Future[None] | None = None
        self._low_mark = 0

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    def send(self, frame: bytes | Pong) -> bool:
        """Queue a frame (a text frame's bytes, or a Pong); never blocks. False if the connection is
        closed or was just closed as slow.

        While the socket keeps up, frames go to it at the end of this turn of the loop, together;
        only when it is backed up do they wait in the bounded queue (so a burst that the kernel
        absorbs is not mistaken for slowness)."""
        if self.closed:
            return False
        if not self._writing:
            if not self.transport.backed_up():
                if not self._batch:
                    flusher().add(self)
                self._batch.append(frame)
                if len(self._batch) >= self.settings.outbound_queue_frames:
                    self.flush()  # a turn that makes this many frames does not wait for its end
                return True
            self._start_drain()
        return self._enqueue(frame)

    def flush(self) -> None:
        """Write this turn's frames now (the flusher calls it at the end of the turn)."""
        batch, self._batch = self._batch, []
        if batch and not self._transport_closed:
            self._write(batch)

    async def room_for(self, frames: int, nbytes: int) -> None:
        """Return once the queue holds at most a quarter of its bound, so `frames` (of `nbytes`, at
        most a quarter each) may follow: a long replay paced to the socket instead of closed 4008.
        Returns at once when closed (send() then refuses). A socket that takes nothing for
        REPLAY_STALL seconds meanwhile is a slow consumer: closed 4008."""
        bound_frames = self.settings.outbound_queue_frames
        bound_bytes = self.settings.outbound_queue_bytes
        if frames > bound_frames // 4 + 1 or nbytes > bound_bytes // 4 + 1:
            raise ValueError("ask for at most a quarter of the bound at a time")
        while (
            not self.closed
            and self._writing
            and (len(self._queue or ()) > bound_frames // 4 or self._queued_bytes > bound_bytes // 4)
        ):
            self._low_mark = bound_frames // 4
            self._low_waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(waiter, REPLAY_STALL)
            except TimeoutError:
                METRICS.queue_overflows.inc()
                self.close(CLOSE_SLOW, "slow consumer", flush=False)

    def send_pong(self, data: bytes) -> bool:
        """Answer a ping through the same bounded path as every other frame."""
        return self.send(Pong(data))

    def _start_drain(self) -> None:
        self._writing = True
        self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _enqueue(self, item: bytes | Pong) -> bool:
        size = len(item)
        queue = self._queue
        if queue is None:
            queue = self._queue = collections.deque()
        if (
            len(queue) >= self.settings.outbound_queue_frames
            or self._queued_bytes + size > self.settings.outbound_queue_bytes
        ):
            log.warning(
                "slow consumer closed", extra={"conn": self.conn_id, "user": self.user_id, "queued": len(queue)}
            )
            METRICS.queue_overflows.inc()
            self.close(CLOSE_SLOW, "slow consumer", flush=False)
            return False
        queue.append(item)
        self._queued_bytes += size
        return True

    def _write(self, items: Sequence[bytes | Pong]) -> None:
        METRICS.socket_writes.inc()
        try:
            self._last_write = self.transport.write(items)
        except Exception:  # closed under us; on_close does the clean-up
            self._last_write = None

    async def _drain(self) -> None:
        """Wait for the socket to take what it has, then feed it the queue one frame at a time."""
        try:
            while True:
                pending = self._last_write
                if pending is not None:
                    await pending
                queue = self._queue
                if not queue or (self.closed and self.close_code == CLOSE_SLOW):
                    break
                items = [queue.popleft() for _ in range(min(len(queue), DRAIN_BATCH))]
                self._queued_bytes -= sum(map(len, items))
                self._write(items)
                if self._low_waiter is not None and len(queue) <= self._low_mark:
                    self._wake_low()
        except Exception:  # the socket went away under us; on_close does the rest
            self._queue = None
            self._queued_bytes = 0
        finally:
            self._writing = False
            self._wake_low()
            if self.closed and self.close_code is not None:
                self._finish_close()

    def _wake_low(self) -> None:
        waiter, self._low_waiter = self._low_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, code: int, reason: str, flush: bool = True) -> None:
        """Stop accepting frames and close. With `flush`, frames already queued (say, the error that
        explains the close) go out first; a slow consumer's queue is dropped instead."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._reason = reason
        self._wake_low()
        if flush:
            self.flush()  # this turn's frames (say, the error that explains the close) go first
        else:
            self._batch.clear()
        if self._closed_cb is not None:
            self._closed_cb(self, code)
        if not flush or not self._writing:
            self._finish_close()
        else:
            # Never wait on a client that stopped reading for longer than the flush grace.
            asyncio.get_running_loop().call_later(FLUSH_GRACE, self._finish_close)

    def _finish_close(self) -> None:
        if self._transport_closed:
            return
        self._transport_closed = True
        self._queue = None
        self._queued_bytes = 0
        self.transport.close(self.close_code or CLOSE_NORMAL, self._reason)
