"""Hooks: the moments the gateway asks the application's backend over HTTP (docs/hooks.md).

    connect   who a handshake without a token is (its cookie and headers), and until when
    join      with ROOM_ACCESS=hook, whether this user may join this room (every join)
    publish   whether a client message goes out, as it is or rewritten
    rpc       the answer to a client's `rpc {method, data}`

    client.py      the one pooled HTTP client, the signature, the outcome mapping
    join_cache.py  the join hook's positive answers, JOIN_HOOK_CACHE_TTL seconds

Each hook is off unless its URL is set. Every call's body holds `{hook, instance, connId, remoteAddr,
transport}` plus the hook's own fields. A call answers the loaded answer or a `Refusal`, or raises
HookUnavailable; what the client is told is decided by the caller (docs/protocol.md, "Errors").
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.hooks import ConnectAnswer, JoinAnswer, PublishAnswer, RpcAnswer
from services.auth import Identity
from services.hooks.client import HookClient, Refusal
from services.hooks.join_cache import JoinDecisions
from services.session import Session
from services.settings import Settings

__all__ = ["Caller", "Hooks", "Refusal"]

PER_CONNECTION = 16  # hook calls one connection may have in flight (an rpc's own limit is the same)
CONNECT = "connect"  # the share of HOOK_CONCURRENCY all connect calls together take: half


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a call is about, before there is a Session (the connect hook)."""

    conn_id: str
    remote: str
    transport: str


class Hooks:
    def __init__(self, settings: Settings, instance_id: str) -> None:
        self._instance = instance_id
        self.client = HookClient(settings)
        self.connect_url = settings.connect_hook_url
        self.join_url = settings.join_hook_url if settings.room_access == "hook" else None
        self.publish_url = settings.publish_hook_url
        self.rpc_url = settings.rpc_hook_url
        self.forward = tuple(name.lower() for name in settings.hook_forward_headers)
        self.decisions = JoinDecisions(settings.join_hook_cache_ttl)
        self._connect = ConnectAnswer()
        self._join = JoinAnswer()
        self._publish = PublishAnswer(max_content=settings.max_content)
        self._rpc = RpcAnswer()
        self._connect_share = max(1, settings.hook_concurrency // 2)

    async def close(self) -> None:
        await self.client.close()

    def _body(self, hook: str, caller: Caller | Session, **fields: Any) -> dict[str, Any]:
        if isinstance(caller, Session):
            caller = Caller(caller.conn_id, caller.remote, caller.transport_kind)
        body = {
            "hook": hook,
            "instance": self._instance,
            "connId": caller.conn_id,
            "remoteAddr": caller.remote,
            "transport": caller.transport,
        }
        body.update(fields)
        return body

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The HOOK_FORWARD_HEADERS present in a handshake, names lower-cased."""
        return {name: value for name in self.forward if (value := headers.get(name)) is not None}

    async def connect(self, caller: Caller, headers: dict[str, str], query: dict[str, str]) -> Identity | Refusal:
        """The identity the backend vouches for; `issued_at` is now (revocations compare with it),
        and without `expiresAt` it does not expire."""
        assert self.connect_url is not None
        body = self._body("connect", caller, headers=headers, query=query)
        answer = await self.client.ask("connect", self.connect_url, body, self._connect, CONNECT, self._connect_share)
        if isinstance(answer, Refusal):
            return answer
        rooms, expires = answer.get("rooms"), answer.get("expiresAt")
        return Identity(
            user_id=answer["userId"],
            expires_at=math.inf if expires is None else expires.timestamp(),
            rooms=tuple(rooms) if rooms is not None else None,
            issued_at=time.time(),
        )

    def join_is_asked(self, session: Session, room: str) -> bool:
        """True when a join of `room` waits for the backend (not a member yet, no cached answer)."""
        return (
            self.join_url is not None
            and room not in session.rooms
            and not self.decisions.allowed(session.user_id, room)
        )

    async def join(self, session: Session, room: str) -> str | None:
        """None when the user may join; else the reason to give (HookUnavailable: no answer)."""
        assert self.join_url is not None
        user = session.user_id
        if self.decisions.allowed(user, room):
            return None
        body = self._body("join", session, userId=user, roomId=room)
        asked_at = self.decisions.mark(user)
        answer = await self.client.ask("join", self.join_url, body, self._join, session, PER_CONNECTION)
        if isinstance(answer, Refusal):
            return answer.error
        if not answer["allow"]:
            return answer.get("reason") or "the backend refused the join"
        self.decisions.allow(user, room, asked_at)
        return None

    async def publish(self, session: Session, room: str, message: dict[str, Any]) -> dict[str, Any] | Refusal:
        """The loaded answer (`allow`, maybe `content`, `attachments`, `reason`) or a refusal."""
        assert self.publish_url is not None
        body = self._body("publish", session, userId=session.user_id, roomId=room, message=message)
        return await self.client.ask("publish", self.publish_url, body, self._publish, session, PER_CONNECTION)

    async def rpc(self, session: Session, method: str, data: Any) -> Any | Refusal:
        """The answer's `data` (None when absent), or a refusal."""
        assert self.rpc_url is not None
        body = self._body("rpc", session, userId=session.user_id, method=method, data=data)
        answer = await self.client.ask("rpc", self.rpc_url, body, self._rpc, session, PER_CONNECTION)
        return answer if isinstance(answer, Refusal) else answer.get("data")
