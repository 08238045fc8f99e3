"""The HTTP transport's sessions: streams held here, and frames posted for any stream, held here or
not (docs/protocol.md, "HTTP transport").

    Streams     session ids -> the Inbox of each stream held here; `post` answers a POST /sse/send
    body.py     a POST body -> frames, or 400 / 413
    inbox.py    one stream's posted frames, handled in order by the one path every transport shares
    relay.py    frames for a stream held by another instance, over the bus (no sticky sessions)

A session id is `<route>.<secret>`: the route names the instance holding the stream (64 random
bits drawn at start, the name of its relay channel), the secret is 128 random bits. The id is the
only credential of a POST, so it is never logged, and streams are held by its digest (`key`), which
is also all that travels over the bus.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from schemas.protocol import ChannelKind
from services.metrics import METRICS
from services.sse.body import BadBody, Posted, read_body
from services.sse.inbox import GONE, Answer, Inbox
from services.sse.relay import Relay

if TYPE_CHECKING:
    from services.connection.inbound import Inbound
    from services.hub import RoomHub
    from services.session import Session
    from services.settings import Settings

__all__ = ["Answer", "Streams"]

ROUTE_CHARS = 16  # hex: 64 random bits naming the instance
SECRET_BYTES = 16  # 128 random bits, 22 characters of base64url
SESSION_ID = re.compile(r"[0-9a-f]{16}\.[A-Za-z0-9_-]{22}")


def key(session_id: str) -> str:
    """What a stream is held by, here and in the relay's messages: a digest of its id."""
    return hashlib.blake2b(session_id.encode(), digest_size=16).hexdigest()


class Streams:
    def __init__(self, settings: Settings, inbound: Inbound, hub: RoomHub) -> None:
        self.settings = settings
        self._inbound = inbound
        self._tasks = hub.tasks
        self._held: dict[str, Inbox] = {}
        self.route = secrets.token_hex(ROUTE_CHARS // 2)
        self.relay = Relay(hub.bus, hub.channels, self.route, self.accept, hub.tasks)
        hub.listeners[ChannelKind.RELAY] = self.relay.on_event

    async def start(self) -> None:
        await self.relay.start()

    def new_id(self) -> str:
        return f"{self.route}.{secrets.token_urlsafe(SECRET_BYTES)}"

    def hold(self, session_id: str, session: Session) -> None:
        """Frames posted with `session_id` go to `session` from now until `release`."""
        inbound, bound = self._inbound, self.settings.sse_send_bytes
        self._held[key(session_id)] = Inbox(session, inbound.frame, inbound.refused, bound, self._tasks)

    def release(self, session_id: str) -> None:
        inbox = self._held.pop(key(session_id), None)
        if inbox is not None:
            inbox.clear()

    async def post(self, session_id: str, body: bytes) -> Answer:
        """A POST /sse/send: its frames into the stream's inbox, here or on the instance holding it.
        An id that cannot be one of ours costs nothing more (no publish): 404."""
        route = session_id[:ROUTE_CHARS]
        forwarded = route != self.route
        s = self.settings

        def read() -> list[Posted]:
            return read_body(body, s.max_message_bytes, s.rate_burst)

        try:
            if not SESSION_ID.fullmatch(session_id):
                answer = GONE  # nothing read, nothing published
            elif forwarded:
                answer = await self.relay.forward(route, key(session_id), read())
            else:
                answer = self.accept(key(session_id), read)
        except BadBody as exc:
            answer = Answer(exc.status, exc.message)
        METRICS.sse_sends.labels(str(answer.status), "forwarded" if forwarded else "local").inc()
        return answer

    def accept(self, session: str, posted: Callable[[], list[Posted]]) -> Answer:
        """Frames for a stream this instance holds (posted here, or forwarded by another): read by
        `posted` only when `session` (a key) is one of them."""
        inbox = self._held.get(session)
        return GONE if inbox is None else inbox.put(posted())
