"""GatewayProtocol: the server side of RFC 6455 frame reading, with the gateway's policies.

Tornado's reader drops the TCP connection on every protocol error and leaves control frames
outside the handler's reach. The gateway promises more (README.md, "Close codes"):

- every protocol error is a close frame the client can read: 1002 (unmasked frame, reserved bits,
  bad control frame or fragment, unknown opcode), 1007 (invalid UTF-8 in a text frame), 1009 (a
  frame over MAX_MESSAGE_BYTES). After the close frame the connection lingers: input is read and
  thrown away (payloads skipped in chunks, never buffered) until the client's close frame or
  Tornado's 5 s close timeout, so the client reads the code instead of a TCP reset;
- ping and pong frames go to the handler (`on_control`), which charges them to the rate limit
  and the abuse limit and queues pongs in the session's bounded outbound queue;
- after every frame the reader yields to the loop once: a connection whose frames are already
  buffered cannot hold the loop for a whole burst while other clients wait.

Limits: a frame's payload is read whole before dispatch (at most MAX_MESSAGE_BYTES, and a
fragmented message at most that in total); a closing connection costs at most the linger time.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable
from typing import Protocol, cast

from tornado.util import _websocket_mask
from tornado.websocket import WebSocketHandler, WebSocketProtocol13, _WebSocketParams

from handlers.writes import Wrapped, write_now
from schemas.protocol import CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_KNOWN_OPCODES = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG})

_SKIP_CHUNK = 64 * 1024


class FrameSink(Protocol):
    """What the protocol needs of its handler besides Tornado's own hooks."""

    def on_control(self, opcode: int, data: bytes) -> None:
        """A ping or pong arrived: charge it to the limits; answer a ping."""

    def fail(self, code: int, reason: str) -> None:
        """A protocol error: close with `code` (the session records why)."""


# What this module uses of Tornado that is not public API is listed in handlers/tornado_private.py.


def _frame(opcode: int, data: bytes) -> bytes:
    """A final, unmasked server frame."""
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + data


# A text frame of a payload seen lately is reused: a broadcast's frame is built once and the same
# bytes go to every recipient.
text_frame = Wrapped(lambda data: _frame(OP_TEXT, data))


def wire_frame(opcode: int, data: bytes) -> bytes:
    """A final, unmasked server frame (text frames: `text_frame`, which reuses them)."""
    return text_frame(data) if opcode == OP_TEXT else _frame(opcode, data)


class GatewayProtocol(WebSocketProtocol13):
    """WebSocketProtocol13 with the frame reader replaced; closing stays Tornado's, keepalive timing
    is the gateway's (one timer wheel for all connections)."""

    @classmethod
    def for_handler(cls, handler: WebSocketHandler) -> GatewayProtocol:
        """The server side of `handler`'s connection (no compression: chat frames do not pay for it)."""
        params = _WebSocketParams(
            ping_interval=handler.ping_interval,
            ping_timeout=handler.ping_timeout,
            max_message_size=handler.max_message_size,
            compression_options=None,
        )
        return cls(handler, params)

    def __init__(self, handler: WebSocketHandler, params: _WebSocketParams) -> None:
        super().__init__(handler, False, params)
        self._fragments: bytearray | None = None  # a fragmented message being read
        self._fragments_opcode = OP_TEXT

    def send_wire(self, data: bytes) -> Awaitable[None] | None:
        """Write frames already built (`wire_frame`, joined) in one write. Tornado's write_message
        wraps every frame in a Task only to rename its exception (a third of the gateway's CPU once,
        BENCHMARKS.md) and writes each frame on its own (handlers/writes.py). Raises StreamClosedError."""
        return write_now(self.stream, data)

    def expect_pong(self) -> None:
        """Send a keepalive ping (services/connection/lifetime.py keeps time); pong_received() says if
        a pong came after it."""
        self._received_pong = False
        self.write_ping(b"")

    def pong_received(self) -> bool:
        return self._received_pong

    async def _receive_frame(self) -> None:
        await self._next_frame()
        await asyncio.sleep(0)  # one frame per turn of the loop: see the module docstring

    async def _next_frame(self) -> None:
        head = await self._read_bytes(2)
        first, second = head[0], head[1]
        final = bool(first & 0x80)
        reserved = first & 0x70
        opcode = first & 0x0F
        masked = bool(second & 0x80)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self._read_bytes(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self._read_bytes(8))[0]
        control = bool(opcode & 0x8)

        if self.server_terminated:
            await self._while_closing(opcode, masked, length, control)
            return
        problem = self._check(final, reserved, opcode, masked, length, control)
        if problem is not None:
            self._fragments = None
            self._sink.fail(*problem)
            await self._skip(length + (4 if masked else 0))
            return

        mask = await self._read_bytes(4)
        data = _websocket_mask(mask, await self._read_bytes(length)) if length else b""
        if control:
            self._on_control_frame(opcode, data)
        elif opcode == OP_CONTINUATION:
            assert self._fragments is not None
            self._fragments.extend(data)
            if final:
                opcode = self._fragments_opcode
                data = bytes(self._fragments)
                self._fragments = None
                await self._on_data(opcode, data)
        elif not final:
            self._fragments_opcode = opcode
            self._fragments = bytearray(data)
        else:
            await self._on_data(opcode, data)

    @property
    def _sink(self) -> FrameSink:
        return cast(FrameSink, self.handler)

    def _check(
        self, final: bool, reserved: int, opcode: int, masked: bool, length: int, control: bool
    ) -> tuple[int, str] | None:
        """Why this frame header breaks the protocol or a limit, as (close code, reason)."""
        if reserved:
            return CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)"
        if not masked:
            return CLOSE_PROTOCOL_ERROR, "client frames must be masked"
        if opcode not in _KNOWN_OPCODES:
            return CLOSE_PROTOCOL_ERROR, "unknown opcode"
        if control and (length > 125 or not final):
            return CLOSE_PROTOCOL_ERROR, "control frames must be unfragmented and at most 125 bytes"
        buffered = self._fragments
        if opcode == OP_CONTINUATION and buffered is None:
            return CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue"
        if opcode in (OP_TEXT, OP_BINARY) and buffered is not None:
            return CLOSE_PROTOCOL_ERROR, "new message before the fragmented one ended"
        if not control and length + (len(buffered) if buffered is not None else 0) > self.params.max_message_size:
            return CLOSE_TOO_BIG, "message too big"
        return None

    async def _on_data(self, opcode: int, data: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self._sink.fail(CLOSE_INVALID_DATA, "text frame is not valid UTF-8")
                return
            self._message_bytes_in += len(data)
            result: Awaitable[None] | None = self._run_callback(self.handler.on_message, text)
        else:
            self._message_bytes_in += len(data)
            result = self._run_callback(self.handler.on_message, data)
        if result is not None:
            await result

    def _on_control_frame(self, opcode: int, data: bytes) -> None:
        if opcode == OP_CLOSE:
            self._client_closed(data)
        elif opcode == OP_PING:
            self._sink.on_control(opcode, data)
        else:  # pong: also what the keepalive waits for
            self._received_pong = True
            self._sink.on_control(opcode, data)

    def _client_closed(self, data: bytes) -> None:
        """The client's close frame: echo its code (RFC 6455 §5.5.1) and close the stream; a
        malformed one (1 byte, a code no endpoint may send, a reason that is not UTF-8) is
        answered 1002 or 1007 instead."""
        self.client_terminated = True
        problem: tuple[int, str] | None = None
        if len(data) == 1:
            problem = CLOSE_PROTOCOL_ERROR, "close frame payload of one byte"
        elif len(data) >= 2:
            code = struct.unpack(">H", data[:2])[0]
            try:
                reason = data[2:].decode("utf-8")
            except UnicodeDecodeError:
                problem = CLOSE_INVALID_DATA, "close reason is not valid UTF-8"
            else:
                if not _sendable_close_code(code):
                    problem = CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent"
                self.close_code, self.close_reason = code, reason or None
        if problem is not None and not self.server_terminated:
            self._sink.fail(*problem)
        else:  # our close frame went first (or it is valid): nothing more to say
            self.close(None if problem is not None else self.close_code)

    async def _while_closing(self, opcode: int, masked: bool, length: int, control: bool) -> None:
        """We sent our close frame: wait for the client's, throwing everything else away."""
        if opcode == OP_CLOSE and control and length <= 125:
            mask = await self._read_bytes(4) if masked else None
            data = await self._read_bytes(length) if length else b""
            self._client_closed(_websocket_mask(mask, data) if mask is not None and data else data)
            return
        await self._skip(length + (4 if masked else 0))

    async def _skip(self, count: int) -> None:
        """Read and drop `count` bytes in bounded chunks (a 1009 frame may claim exabytes),
        yielding to the loop after each chunk like after each frame."""
        while count > 0:
            chunk = await self.stream.read_bytes(min(count, _SKIP_CHUNK), partial=True)
            self._wire_bytes_in += len(chunk)
            count -= len(chunk)
            await asyncio.sleep(0)


def _sendable_close_code(code: int) -> bool:
    """RFC 6455 §7.4: the codes an endpoint may put in a close frame (1005, 1006 and 1015 only
    ever describe a connection; 1004 and 1016-2999 are reserved)."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999
