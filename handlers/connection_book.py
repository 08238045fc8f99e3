"""ConnectionBook: every accepted TCP connection counted until its descriptor is closed.

    ConnectionBook   the count against the descriptor budget, the connections waiting for a
                     request (sheddable), and the per-address counts (MAX_CONNECTIONS_PER_IP)
    CountedStream    an IOStream that tells the book when its descriptor is gone
    refuse_and_close a status for a connection's request, then its close (bounded linger)

handlers/http_server.py accepts, sheds and pauses against it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from http.client import responses

import orjson
from tornado import gen
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.util import TimeoutError

from services.admission import AddressCounts
from services.metrics import METRICS

SHED_AFTER = 1.0  # seconds a connection may wait without sending its headers before it can be shed


class ConnectionBook:
    """Open TCP connections of the process, shared by its listeners; the public connections waiting
    for a request's headers (their first, or the next on a kept-alive connection), oldest first;
    and the public connections by client address."""

    def __init__(self, budget: int, per_address: AddressCounts | None = None) -> None:
        self.budget = budget
        self.open = 0
        self.waiting: dict[IOStream, float] = {}  # stream -> waiting since (monotonic), oldest first
        self.per_address = per_address
        self._address: dict[IOStream, str] = {}  # stream -> the address it is counted under
        self._on_free: list[Callable[[], None]] = []

    def full(self) -> bool:
        return self.open >= self.budget

    def closed(self, stream: IOStream) -> None:
        self.open -= 1
        self.waiting.pop(stream, None)
        address = self._address.pop(stream, None)
        if address is not None and self.per_address is not None:
            self.per_address.remove(address)
        for callback in self._on_free:
            callback()

    def count_address(self, stream: IOStream, address: str) -> bool:
        """Count the connection under its client address (moved there when a kept-alive connection
        from a proxy now serves another client); False when that address has no room left."""
        if self.per_address is None or self._address.get(stream) == address:
            return True
        old = self._address.pop(stream, None)
        if old is not None:
            self.per_address.remove(old)
        if not self.per_address.add(address):
            return False
        self._address[stream] = address
        return True

    def waits(self, stream: IOStream) -> None:
        """The connection waits for a request's headers (kept alive after one): sheddable."""
        self.waiting[stream] = time.monotonic()

    def notify_on_free(self, callback: Callable[[], None]) -> None:
        self._on_free.append(callback)

    def shed_oldest_waiting(self) -> bool:
        """Close the oldest connection that has waited SHED_AFTER without sending its headers: it
        is idle (a probe or a real client sends its request at once). False when there is none."""
        for stream, since in self.waiting.items():
            if time.monotonic() - since < SHED_AFTER:
                return False
            del self.waiting[stream]
            stream.close()  # closes its descriptor: `closed` runs and frees the slot
            METRICS.connections_shed.inc()
            return True
        return False


class CountedStream(IOStream):
    """An IOStream that tells the book when its descriptor is gone, however it was closed
    (HTTP handling, an upgraded WebSocket, shedding)."""

    book: ConnectionBook
    served = False  # a request came in on it (on a capped listener): it may be kept alive

    def close_fd(self) -> None:
        try:
            super().close_fd()
        finally:
            self.book.closed(self)


LINGER = 2.0  # seconds a refused connection's unread request is read and dropped before the close
LINGER_BYTES = 4 * 1024 * 1024  # and at most this much of it


def refuse_and_close(stream: IOStream, status: int, message: str) -> None:
    """Answer `status` with a JSON error and close. The unread request is drained a moment first
    (bounded in time and bytes, nothing kept): closing a socket with unread data resets it, and
    the client could lose the answer."""
    body = orjson.dumps({"error": message})
    head = (
        f"HTTP/1.1 {status} {responses[status]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    if isinstance(stream, CountedStream):  # idle from now on: shed first when descriptors run short
        stream.book.waits(stream)
    IOLoop.current().add_callback(_linger_close, stream, head.encode() + body)


async def _linger_close(stream: IOStream, response: bytes) -> None:
    try:
        await stream.write(response)
        stream.socket.shutdown(socket.SHUT_WR)
        deadline = IOLoop.current().time() + LINGER
        drained = 0
        while drained < LINGER_BYTES:
            read = stream.read_bytes(65536, partial=True)
            drained += len(await gen.with_timeout(deadline, read, quiet_exceptions=(StreamClosedError,)))
    except (StreamClosedError, OSError, TimeoutError):
        pass
    finally:
        stream.close()
