"""A reference chat backend for the gateway's hooks (docs/hooks.md), in one file of standard library.

    python examples/chat_backend.py --secret dev-hook-secret          # http://127.0.0.1:8080

and start the gateway next to it (README, "Your backend"):

    HOOK_SECRET=dev-hook-secret ROOM_ACCESS=hook \\
    CONNECT_HOOK_URL=http://127.0.0.1:8080/hooks/connect JOIN_HOOK_URL=http://127.0.0.1:8080/hooks/join \\
    PUBLISH_HOOK_URL=http://127.0.0.1:8080/hooks/publish RPC_HOOK_URL=http://127.0.0.1:8080/hooks/rpc make run

What it keeps, in SQLite (a file, `chat_backend.db` next to this script unless --db says otherwise,
created with a few rows on first start):

    rooms(id, open)         an open room anyone may join; the others only their members
    members(room, user)     who belongs to a closed room
    sessions(id, user)      browser sessions: the connect hook turns a `session` cookie into a user
    words(word, action)     the word filter: `mask` rewrites the word as ****, `reject` refuses the message

What it answers:
    connect   a `session` cookie found in sessions -> that user (an hour, asked again before); else 401
    join      an open room, or a member of a closed one -> allowed; else `allow: false` with the reason
    publish   a `reject` word -> refused with the reason; `mask` words -> the content rewritten; else as is
    rpc       `rooms.mine` (the rooms the user may join), `room.join_requests` (ask to join a closed room,
              recorded), anything else 404

Every call's signature is checked (X-Gateway-Signature, X-Gateway-Timestamp within five minutes); a call
that fails the check gets 401. Without --secret it refuses to start, unless --insecure says to accept
unsigned calls (anyone who can reach the port could then act as any user).

Add a member by hand: `sqlite3 examples/chat_backend.db "insert into members values ('staff', 'bob')"`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import sqlite3
import sys
import threading
import time
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1024 * 1024
SKEW = 300  # seconds a signature's timestamp may be off
SESSION_SECONDS = 3600

SCHEMA = """
create table if not exists rooms (id text primary key, open integer not null);
create table if not exists members (room text not null, user text not null, primary key (room, user));
create table if not exists sessions (id text primary key, user text not null);
create table if not exists words (word text primary key, action text not null check (action in ('mask', 'reject')));
create table if not exists join_requests (room text not null, user text not null, at real not null);
"""
SEED = """
insert or ignore into rooms values ('general', 1), ('random', 1), ('staff', 0);
insert or ignore into members values ('staff', 'alice');
insert or ignore into sessions values ('alice-session', 'alice'), ('bob-session', 'bob');
insert or ignore into words values ('darn', 'mask'), ('heck', 'mask'), ('spam', 'reject');
"""


class Store:
    """The database, one connection shared by the server's threads under a lock (SQLite serialises
    writes anyway; this keeps the example free of connection juggling)."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.executescript(SCHEMA + SEED)

    def one(self, sql: str, *args: Any) -> Any:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def all(self, sql: str, *args: Any) -> list[Any]:
        return [row[0] for row in self.rows(sql, *args)]

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def write(self, sql: str, *args: Any) -> None:
        with self._lock, self._db:
            self._db.execute(sql, args)


def verify(secret: str | None, timestamp: str, signature: str, body: bytes) -> bool:
    """The gateway signs `"<timestamp>.<raw body>"` with HMAC-SHA256 (docs/hooks.md, "Signature")."""
    if secret is None:
        return True
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > SKEW:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + expected, signature)


class Backend:
    def __init__(self, store: Store) -> None:
        self.store = store

    def connect(self, call: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        cookie = SimpleCookie()
        try:
            cookie.load(call.get("headers", {}).get("cookie", ""))
        except CookieError:
            return 401, {"error": "unreadable cookie"}
        session = cookie.get("session")
        user = self.store.one("select user from sessions where id = ?", session.value) if session else None
        if user is None:
            return 401, {"error": "not signed in"}
        return 200, {"userId": user, "expiresAt": int(time.time()) + SESSION_SECONDS}

    def may_join(self, user: str, room: str) -> bool:
        is_open = self.store.one("select open from rooms where id = ?", room)
        member = self.store.one("select 1 from members where room = ? and user = ?", room, user)
        return bool(is_open) or member is not None

    def join(self, call: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        user, room = call["userId"], call["roomId"]
        if self.may_join(user, room):
            return 200, {"allow": True}
        if self.store.one("select 1 from rooms where id = ?", room) is None:
            return 200, {"allow": False, "reason": f"there is no room {room!r}"}
        return 200, {"allow": False, "reason": f"{room} is for its members only"}

    def publish(self, call: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        content: str = call["message"]["content"]
        words = dict(self.store.rows("select word, action from words"))
        found = {w.lower() for w in re.findall(r"[^\W_]+", content)} & set(words)  # letters and digits
        rejected = sorted(w for w in found if words[w] == "reject")
        if rejected:
            return 200, {"allow": False, "reason": f"the word {rejected[0]!r} is not allowed here"}
        masked = [w for w in found if words[w] == "mask"]
        if not masked:
            return 200, {}
        for word in masked:
            content = re.sub(rf"\b{re.escape(word)}\b", "*" * len(word), content, flags=re.IGNORECASE)
        return 200, {"allow": True, "content": content}

    def rpc(self, call: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        user, method, data = call["userId"], call["method"], call.get("data")
        if method == "rooms.mine":
            rooms = self.store.all("select id from rooms order by id")
            return 200, {"data": [room for room in rooms if self.may_join(user, room)]}
        if method == "room.join_requests":
            room = data.get("roomId") if isinstance(data, dict) else None
            if not isinstance(room, str) or self.store.one("select 1 from rooms where id = ?", room) is None:
                return 422, {"error": "roomId names no room", "code": "no_room"}
            self.store.write("insert into join_requests values (?, ?, ?)", room, user, time.time())
            return 200, {"data": {"requested": room}}
        return 404, {"error": f"no method {method!r}", "code": "no_method"}


def make_handler(backend: Backend, secret: str | None) -> type[BaseHTTPRequestHandler]:
    hooks = {"connect": backend.connect, "join": backend.join, "publish": backend.publish, "rpc": backend.rpc}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the gateway reuses its connections

        def do_POST(self) -> None:
            hook = self.path.removeprefix("/hooks/")
            length = self.headers.get("Content-Length", "")
            # Not 404 for a wrong path: the gateway takes 401/403/404/409/422 as a refusal, and a typo
            # in a hook URL must show as `unavailable`, not as every user refused.
            if hook not in hooks:
                return self._answer(400, {"error": f"no hook at {self.path}"})
            if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY:
                return self._answer(413, {"error": "a body of at most 1 MiB, with its Content-Length"})
            body = self.rfile.read(int(length))
            stamp, signature = self.headers.get("X-Gateway-Timestamp", ""), self.headers.get("X-Gateway-Signature", "")
            if not verify(secret, stamp, signature, body):
                return self._answer(401, {"error": "bad signature"})
            try:
                status, answer = hooks[hook](json.loads(body))
            except (ValueError, KeyError, TypeError, AttributeError):
                return self._answer(400, {"error": "unexpected body"})
            self._answer(status, answer)

        def _answer(self, status: int, answer: dict[str, Any]) -> None:
            raw = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            request_id = self.headers.get("X-Request-Id", "-") if self.headers else "-"
            sys.stderr.write(f"{self.address_string()} {request_id} {format % args}\n")

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Reference chat backend for the gateway's hooks (docs/hooks.md)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--db", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_backend.db"))
    parser.add_argument("--secret", default=os.environ.get("HOOK_SECRET"), help="the gateway's HOOK_SECRET")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="accept unsigned calls (anyone who reaches the port may then act as any user)",
    )
    args = parser.parse_args(argv)
    if not args.secret and not args.insecure:
        parser.error("give --secret (the gateway's HOOK_SECRET), or --insecure to accept unsigned calls")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Backend(Store(args.db)), args.secret))
    signed = "checking signatures" if args.secret else "NOT checking signatures (no --secret)"
    print(f"chat backend on http://{args.host}:{server.server_port}/hooks/ ({args.db}, {signed})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
