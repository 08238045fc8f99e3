"""python-socketio peer: the same chat semantics as the gateway's hot path, for the fan-out benchmark.

    BENCH_SECRET=... uvicorn bench.peers.socketio_app:app --host 127.0.0.1 --port PORT --loop asyncio

Connect verifies an HS256 JWT from the Socket.IO auth payload (as the gateway does at the upgrade);
`join` enters a room and acks; `message` builds the same message object the gateway builds (id,
senderType, senderId, createdAt), emits it to the room (sender included) and acks with
{id, roomId, createdAt}. BENCH_REDIS_URL switches to AsyncRedisManager (multi-process mode).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import jwt
import socketio  # type: ignore[import-untyped]

SECRET = os.environ["BENCH_SECRET"]
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "")

manager = socketio.AsyncRedisManager(REDIS_URL) if REDIS_URL else None
sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=manager,
    cors_allowed_origins=[],
    logger=False,
    engineio_logger=False,
    transports=["websocket"],
)
app = socketio.ASGIApp(sio)


def iso_now() -> str:
    now = time.time()
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(now * 1000) % 1000:03d}Z"


async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
    token = (auth or {}).get("token", "")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.PyJWTError as exc:
        raise socketio.exceptions.ConnectionRefusedError("invalid token") from exc
    await sio.save_session(sid, {"user": claims["sub"]})


async def join(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    room = data["roomId"]
    await sio.enter_room(sid, room)
    return {"roomId": room, "action": "joined"}


async def message(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    session = await sio.get_session(sid)
    room = data["roomId"]
    msg = {
        "id": str(uuid.uuid4()),
        "roomId": room,
        "senderType": "human",
        "senderId": session["user"],
        "content": data["content"],
        "attachments": [],
        "createdAt": iso_now(),
    }
    await sio.emit("message", msg, to=room)
    return {"id": msg["id"], "roomId": room, "createdAt": msg["createdAt"]}


for _handler in (connect, join, message):
    sio.on(_handler.__name__, _handler)
