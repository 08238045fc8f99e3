"""What both transports do with the bytes of server frames: wrap each once, write at once.

Wrapped      a frame's bytes wrapped for the wire (a WebSocket frame, an SSE event), the
             wrapping of a payload seen lately reused: a broadcast is wrapped once for every
             recipient, not once each
write_now    bytes straight to the socket when nothing waits before them
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tornado.iostream import IOStream

_CACHE_SIZE = 64
_CACHED_BYTES = 64 * 1024  # larger payloads are wrapped each time, not kept (at most 64 x 2 x 64 KiB held)


class Wrapped:
    """`wrap(payload)`, remembered by the payload's identity (the cache holds the payload, so an id is
    never taken for another object while its entry lives)."""

    __slots__ = ("_cache", "_wrap")

    def __init__(self, wrap: Callable[[bytes], bytes]) -> None:
        self._wrap = wrap
        self._cache: dict[int, tuple[bytes, bytes]] = {}

    def __call__(self, payload: bytes) -> bytes:
        if len(payload) > _CACHED_BYTES:
            return self._wrap(payload)  # a history reply or replay: one recipient, and large to keep
        cached = self._cache.get(id(payload))
        if cached is not None and cached[0] is payload:
            return cached[1]
        wrapped = self._wrap(payload)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[id(payload)] = (payload, wrapped)
        return wrapped


def write_now(stream: IOStream, data: bytes) -> Awaitable[None] | None:
    """Tornado's write makes a future per call and waits for the next turn of the loop; when the
    stream holds nothing unsent the bytes go straight to the socket, and a write the kernel takes
    whole is done (None), with no future made and resolved for it (a fifth of the CPU per delivery,
    BENCHMARKS.md). What the kernel does not take goes to the stream, whose future resolves once
    the OS has it all, and the stream is then `writing()`, which is what a session's bound counts
    from. Raises StreamClosedError."""
    if stream.writing() or stream.closed():
        return stream.write(data)
    try:
        sent = stream.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:  # reset, broken pipe: the stream's own write fails and closes as it does
        return stream.write(data)
    if sent == len(data):
        return None
    return stream.write(memoryview(data)[sent:])
