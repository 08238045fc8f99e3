"""Command line on top of the SDK, for people and for scripts.

    python -m realtime_gateway_client chat --url ws://127.0.0.1:3000/ --token "$TOKEN" --room general
    python -m realtime_gateway_client tail --url ws://127.0.0.1:3000/ --name bot --room general --count 1

`chat` is interactive like wscat, but speaks the gateway's protocol: typed lines are sent as
messages to the current room, incoming ones print as `[time] sender: text`; commands start with `/`.
`tail` prints one JSON object per message on stdout (status on stderr), for piping into jq & co.

A token comes from --token or $RTG_TOKEN; against a dev gateway, --name NAME fetches one from
/dev/token before every connection attempt (so the CLI survives a dev restart with a new secret).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NoReturn, TextIO

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from realtime_gateway_client.events import (
    Connected,
    Disconnected,
    ErrorEvent,
    Message,
    Presence,
    PresenceState,
    Recovery,
)
from realtime_gateway_client.sdk import (
    AuthError,
    ClientError,
    ConnectError,
    GatewayClient,
    GatewayError,
    TokenSource,
)

HELP = """commands:
  /join ROOM    join ROOM and make it the current room
  /leave ROOM   leave ROOM (default: the current one)
  /room ROOM    send to ROOM from now on (must be joined)
  /typing       tell the current room you are typing
  /idle         set yourself idle in the current room
  /who          members of the current room and their status
  /help         this text
  /quit         leave (Ctrl-D works too)
anything else is sent as a message to the current room"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _program() -> str:
    """`realtime-gateway-client` when installed, `python -m realtime_gateway_client` from a clone: as typed."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and not name.endswith(".py") and name != "-c" else "python -m realtime_gateway_client"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_program(), description="Realtime Gateway command-line client.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("chat", "interactive chat: typed lines are messages, /help lists commands"),
        ("tail", "print one JSON line per message (for scripts)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--url", default="ws://127.0.0.1:3000/", help="gateway WebSocket URL")
        auth = cmd.add_mutually_exclusive_group()
        auth.add_argument("--token", help="JWT (default: $RTG_TOKEN)")
        auth.add_argument("--name", help="dev gateways only: get a token for NAME from /dev/token")
        cmd.add_argument("--room", action="append", required=True, help="room to join (repeat for several)")
        cmd.add_argument(
            "--no-reconnect", action="store_true", help="exit when the connection drops instead of retrying"
        )
        if name == "tail":
            cmd.add_argument("--count", type=int, default=0, help="exit after COUNT messages (0: never)")
    return parser


def dev_token_url(ws_url: str, name: str) -> str:
    """The /dev/token address on the same host as the WebSocket URL."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    query = urllib.parse.urlencode({"sub": name})
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/dev/token", query, ""))


def dev_token_source(ws_url: str, name: str) -> Callable[[], Awaitable[str]]:
    url = dev_token_url(ws_url, name)

    async def fetch() -> str:
        try:
            response = await AsyncHTTPClient().fetch(url, request_timeout=10)
        except HTTPClientError as exc:
            if exc.code == 404:
                raise AuthError(
                    "this gateway serves no /dev/token (it has a configured JWT secret): pass --token"
                ) from None
            raise ConnectError(f"GET /dev/token failed: HTTP {exc.code}") from None
        except OSError as exc:
            raise ConnectError(f"cannot reach {url}: {exc}") from None
        body = json.loads(response.body)
        return str(body["token"])

    return fetch


def resolve_token(args: argparse.Namespace, environ: dict[str, str]) -> TokenSource | None:
    if args.name:
        return dev_token_source(args.url, args.name)
    return args.token or environ.get("RTG_TOKEN") or None


def clock(value: datetime) -> str:
    return value.astimezone().strftime("%H:%M:%S")


class Terminal:
    """Line-oriented output; one place decides how each event reads."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(f"* {text}", file=self.out, flush=True)

    def problem(self, text: str) -> None:
        print(f"! {text}", file=self.err, flush=True)


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Blocking reads in a daemon thread (it must not keep the process alive at exit)."""

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="stdin", daemon=True).start()


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def explain(event: ErrorEvent) -> str:
    """The error as a person reads it: message, code, and which field was wrong and why (a bare
    "invalid join payload (validation_failed)" does not say what to fix)."""
    text = f"{event.message} ({event.code})"
    problems = list(_field_errors(event.details))
    return f"{text}: {'; '.join(problems)}" if problems else text


def _field_errors(details: Any, path: str = "") -> Iterator[str]:
    """Flatten marshmallow's {field: [messages]} (nested for nested fields) into "field: message"."""
    if isinstance(details, dict):
        for key, value in details.items():
            yield from _field_errors(value, f"{path}.{key}" if path else str(key))
    elif isinstance(details, list):
        for item in details:
            yield from _field_errors(item, path)
    elif details is not None:
        yield f"{path}: {details}" if path else str(details)


async def chat(client: GatewayClient, rooms: Sequence[str], term: Terminal) -> int:
    return await Chat(client, term).run(rooms)


class Chat:
    """The interactive chat: lines typed become messages or slash commands; events become lines."""

    def __init__(self, client: GatewayClient, term: Terminal) -> None:
        self.client = client
        self.term = term
        self.current = ""
        self.stop = asyncio.Event()
        self.sends: set[asyncio.Task[None]] = set()
        self.typing_seen: set[tuple[str, str]] = set()
        self.typing_sent: set[str] = set()  # rooms we said `typing` in: a message ends it
        self.present: dict[str, set[str]] = {}  # room -> users we know are there (to announce joins)
        self.exit_code = 0

    async def run(self, rooms: Sequence[str]) -> int:
        self.current = rooms[-1]
        _install_stop(self.stop)
        for room in rooms:
            await self.client.join(room)
        joined = ", ".join("#" + r for r in rooms)
        self.term.note(f"joined {joined}; sending to #{self.current}. /help for commands")
        tasks = [asyncio.ensure_future(self.read_input()), asyncio.ensure_future(self.show_events())]
        await self.stop.wait()
        if self.sends:  # let messages typed just before /quit get their ack
            await asyncio.wait(self.sends, timeout=10)
        for task in tasks:
            task.cancel()
        return self.exit_code

    def label(self, room: str) -> str:
        return f"#{room} " if len(self.client.rooms) > 1 else ""

    async def send(self, room: str, text: str) -> None:
        try:
            await self.client.send(room, text)
            if room in self.typing_sent:
                self.typing_sent.discard(room)
                self.client.online(room)
        except GatewayError as exc:
            self.term.problem(f"not sent: {explain(exc.event)}")
        except ClientError as exc:
            self.term.problem(f"not sent: {exc}")

    async def command(self, line: str) -> bool:
        """Run one slash command; False means quit."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        try:
            if name in ("quit", "exit", "q"):
                return False
            await self._command(name, arg)
        except GatewayError as exc:
            self.term.problem(explain(exc.event))
        except ClientError as exc:
            self.term.problem(str(exc))
        return True

    async def _command(self, name: str, arg: str) -> None:
        client, term = self.client, self.term
        if name == "join" and arg:
            await client.join(arg)
            self.current = arg
            term.note(f"joined #{arg}; sending to #{arg}")
        elif name == "leave":
            room = arg or self.current
            await client.leave(room)
            term.note(f"left #{room}")
            if room == self.current and client.rooms:
                self.current = client.rooms[-1]
                term.note(f"sending to #{self.current}")
        elif name == "room" and arg:
            if arg not in client.rooms:
                term.problem(f"not in #{arg}: /join {arg} first")
            else:
                self.current = arg
                term.note(f"sending to #{self.current}")
        elif name == "typing":
            if client.typing(self.current):
                self.typing_sent.add(self.current)
        elif name == "idle":
            client.idle(self.current)
        elif name == "who":
            members = ", ".join(f"{m.user_id} ({m.status})" for m in client.members(self.current))
            term.note(f"#{self.current}: {members or 'nobody'}")
        else:
            term.line(HELP)

    async def read_input(self) -> None:
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        _stdin_lines(asyncio.get_running_loop(), lines)
        while True:
            line = await lines.get()
            if line is None:
                break
            if not line.strip():
                continue
            if line.startswith("/") and not line.startswith("//"):
                if not await self.command(line):
                    break
                continue
            if not self.client.rooms:
                self.term.problem("not in any room: /join ROOM first")
                continue
            text = line[1:] if line.startswith("//") else line  # `//x` sends a literal `/x`
            task = asyncio.ensure_future(self.send(self.current, text))
            self.sends.add(task)
            task.add_done_callback(self.sends.discard)
        self.stop.set()

    async def show_events(self) -> None:
        offline = False
        term = self.term
        async for event in self.client:
            if isinstance(event, Message):
                self.typing_seen.discard((event.room_id, event.sender_id))
                term.line(f"[{clock(event.created_at)}] {self.label(event.room_id)}{event.sender_id}: {event.content}")
            elif isinstance(event, PresenceState):
                self.present[event.room_id] = {m.user_id for m in event.members}
            elif isinstance(event, Presence):
                self.show_presence(event)
            elif isinstance(event, ErrorEvent) and event.request_id is None:
                term.problem(explain(event))
            elif isinstance(event, Recovery) and not event.recovered:
                term.note(f"#{event.room_id}: messages sent while you were away could not be recovered")
            elif isinstance(event, Disconnected):
                if event.will_reconnect:
                    what = "reconnect failed" if offline else "disconnected"
                    term.note(f"{what} ({event.reason}); retrying in {event.retry_in:.1f}s")
                elif not self.stop.is_set():
                    term.problem(f"disconnected: {event.reason}")
                    self.exit_code = 1
                offline = True
            elif isinstance(event, Connected) and event.reconnected:
                offline = False
                term.note(f"reconnected; back in {', '.join('#' + r for r in event.rooms) or 'no room'}")
        self.stop.set()

    def show_presence(self, event: Presence) -> None:
        if event.user_id == self.client.user_id:
            return  # our own typing/idle echoed back
        key = (event.room_id, event.user_id)
        where = f" in #{event.room_id}" if len(self.client.rooms) > 1 else ""
        here = self.present.setdefault(event.room_id, set())
        if event.status == "offline":
            here.discard(event.user_id)
            self.typing_seen.discard(key)
            self.term.note(f"{event.user_id} left{where}")
            return
        if event.user_id not in here:
            here.add(event.user_id)
            self.term.note(f"{event.user_id} joined{where}")
        if event.status == "typing":
            if key not in self.typing_seen:
                self.typing_seen.add(key)
                self.term.note(f"{event.user_id} is typing{where}")
            return
        self.typing_seen.discard(key)
        if event.status == "idle":
            self.term.note(f"{event.user_id} is idle{where}")
        # online: also what typing lapses to; not worth a line


async def tail(client: GatewayClient, rooms: Sequence[str], count: int, term: Terminal) -> int:
    stop = asyncio.Event()
    _install_stop(stop)
    for room in rooms:
        await client.join(room)
        print(f"tail: joined {room}", file=term.err, flush=True)
    seen = 0
    exit_code = 0

    async def pump() -> None:
        nonlocal seen, exit_code
        async for event in client:
            if isinstance(event, Message):
                term.line(json.dumps(event.raw, ensure_ascii=False, separators=(",", ":")))
                seen += 1
                if count and seen >= count:
                    break
            elif isinstance(event, Disconnected):
                print(f"tail: disconnected: {event.reason}", file=term.err, flush=True)
                if not event.will_reconnect:
                    exit_code = 1
            elif isinstance(event, ErrorEvent):
                print(f"tail: error: {explain(event)}", file=term.err, flush=True)
        stop.set()

    task = asyncio.ensure_future(pump())
    await stop.wait()
    task.cancel()
    return exit_code


async def run(args: argparse.Namespace, environ: dict[str, str], term: Terminal) -> int:
    token = resolve_token(args, environ)
    if token is None:
        term.problem("no token: pass --token, set RTG_TOKEN, or use --name NAME against a dev gateway")
        return 2
    client = GatewayClient(args.url, token, reconnect=not args.no_reconnect)
    try:
        await client.connect()
    except ClientError as exc:
        term.problem(str(exc))
        return 2
    try:
        if args.command == "chat":
            return await chat(client, args.room, term)
        return await tail(client, args.room, args.count, term)
    except GatewayError as exc:  # e.g. joining a room the token does not allow
        term.problem(explain(exc.event))
        return 1
    except ClientError as exc:
        term.problem(str(exc))
        return 1
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return asyncio.run(run(args, dict(os.environ), Terminal(sys.stdout, sys.stderr)))
