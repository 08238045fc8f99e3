"""The Python SDK against the language-neutral cases of tests/conformance/client.json, through a
scripted socket (the JavaScript client runs the same file: client-js/test/conformance.test.mjs).
Pure client logic: no gateway, no network."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from realtime_gateway_client import Backoff, ErrorEvent, Event, GatewayClient
from tornado.websocket import WebSocketClosedError

from schemas.server import validate_server_frame

CASES = json.loads((Path(__file__).parent / "conformance" / "client.json").read_text())["cases"]
DEADLINE = 5.0


class ScriptedSocket:
    """The server's end of one connection, driven by the case."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def read_message(self) -> asyncio.Future[str | bytes | None]:
        return asyncio.ensure_future(self.inbox.get())

    def write_message(self, message: str) -> asyncio.Future[None]:
        if self.close_code is not None:
            raise WebSocketClosedError()
        self.sent.append(json.loads(message))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.server_close(code or 1000, reason or "")

    def server_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.inbox.put_nowait(None)


def event_name(event: Event) -> str:
    """The JavaScript client's name for the event: its class in snake_case (ErrorEvent: error)."""
    if isinstance(event, ErrorEvent):
        return "error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


class Runner:
    def __init__(self) -> None:
        self.sockets: list[ScriptedSocket] = []
        self.events: list[Event] = []
        self.seen_events = 0
        self.seen_sent: dict[int, int] = {}
        self.bound: dict[str, str] = {}
        self.calls: dict[str, asyncio.Future[Any]] = {}
        self.tokens = 0

        async def token() -> str:
            self.tokens += 1
            return f"token-{self.tokens}"

        async def connector(url: str, headers: dict[str, str]) -> ScriptedSocket:
            socket = ScriptedSocket()
            self.sockets.append(socket)
            return socket

        self.client = GatewayClient(
            "ws://gateway.test/ws",
            token_provider=token,
            backoff=Backoff(initial=0.001, maximum=0.005, jitter=0.0),
            connector=connector,
            ping_interval=0,
        )
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        async for event in self.client.events():
            self.events.append(event)

    async def drain(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def until(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.001)
        await self.drain()

    def match(self, expected: Any, actual: Any, where: str) -> None:
        if isinstance(expected, str) and expected.startswith("$"):
            bound = self.bound.setdefault(expected, actual)
            assert actual == bound, f"{where}: {expected} is {bound!r}, got {actual!r}"
        elif isinstance(expected, dict):
            assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
            for key, value in expected.items():
                assert key in actual, f"{where}: no {key!r} in {actual!r}"
                self.match(value, actual[key], f"{where}.{key}")
        else:
            assert plain(actual) == expected, f"{where}: expected {expected!r}, got {actual!r}"

    def field(self, event: object, name: str) -> Any:
        """A camelCase field of the case, read from the event's snake_case attribute (or property:
        Disconnected.will_reconnect)."""
        attr = snake(name)
        assert hasattr(event, attr), f"{event!r} has no {attr}"
        return getattr(event, attr)

    async def step(self, step: dict[str, Any]) -> None:
        client = self.client
        if "do" in step:
            action = step["do"]
            if action == "connect":
                await client.connect()
                self.reader = asyncio.ensure_future(self.read())
            else:
                work: Coroutine[Any, Any, Any]
                if action == "join":
                    work = client.join(step["room"])
                elif action == "leave":
                    work = client.leave(step["room"])
                else:
                    work = client.send(step["room"], step["content"], dedupe_key=step.get("dedupeKey"))
                self.calls[step["as"]] = asyncio.ensure_future(work)
            await self.drain()
        elif "server" in step:
            frame = json.loads(json.dumps(step["server"]))
            validate_server_frame(frame)  # the cases speak the protocol as the gateway does
            if isinstance(frame.get("requestId"), str) and frame["requestId"].startswith("$"):
                assert frame["requestId"] in self.bound, f"{frame['requestId']} is not bound yet"
                frame["requestId"] = self.bound[frame["requestId"]]
            self.sockets[-1].inbox.put_nowait(json.dumps(frame))
            await self.drain()
        elif "close" in step:
            self.sockets[-1].server_close(step["close"]["code"], step["close"]["reason"])
            await self.drain()
        elif "sockets" in step:
            await self.until(lambda: len(self.sockets) >= step["sockets"], f"socket {step['sockets']}")
            assert len(self.sockets) == step["sockets"]
        elif "sent" in step:
            socket = len(self.sockets) - 1
            start = self.seen_sent.get(socket, 0)
            want = step["sent"]
            await self.until(lambda: len(self.sockets[socket].sent) >= start + len(want), f"{len(want)} sent")
            frames = self.sockets[socket].sent[start:]
            assert len(frames) == len(want), f"sent {frames!r}, expected {want!r}"
            for n, (w, f) in enumerate(zip(want, frames, strict=True)):
                self.match(w, f, f"sent[{n}]")
            self.seen_sent[socket] = start + len(frames)
        elif "events" in step:
            want = step["events"]
            start = self.seen_events
            await self.until(lambda: len(self.events) >= start + len(want), f"{len(want)} events")
            got = self.events[start:]
            names = [event_name(e) for e in got]
            assert names == [w["event"] for w in want], f"events {names}, expected {[w['event'] for w in want]}"
            for n, (w, g) in enumerate(zip(want, got, strict=True)):
                for key, value in w.items():
                    if key != "event":
                        self.match(value, self.field(g, key), f"events[{n}].{key}")
            self.seen_events = start + len(got)
        elif "resolved" in step:
            result = await asyncio.wait_for(self.calls[step["resolved"]], DEADLINE)
            for key, value in step["value"].items():
                self.match(value, self.field(result, key), f"{step['resolved']}.{key}")
        elif "members" in step:
            want = step["members"]
            users = sorted(m.user_id for m in client.members(want["room"]))
            assert (users, client.member_count(want["room"])) == (want["users"], want["count"])
        elif "position" in step:
            want = step["position"]
            assert client.position(want["room"]) == (want["offset"], want["epoch"])
        elif "state" in step:
            want = {"closed": lambda: client.closed, "open": lambda: client.connected and not client.closed}
            await self.until(want[step["state"]], f"state {step['state']}")
        else:
            raise AssertionError(f"unknown step {step!r}")

    def nothing_unchecked(self) -> None:
        """After a case: every frame any socket got and every event was checked by some step."""
        unchecked = [s.sent[self.seen_sent.get(n, 0) :] for n, s in enumerate(self.sockets)]
        assert [frames for frames in unchecked if frames] == [], "frames sent but never checked"
        assert [event_name(e) for e in self.events[self.seen_events :]] == [], "events never checked"

    async def close(self) -> None:
        await self.client.close()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, DEADLINE)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.gen_test(timeout=20)
async def test_the_python_sdk_behaves_as_the_cases_say(case: dict[str, Any]) -> None:
    runner = Runner()
    try:
        for n, step in enumerate(case["steps"]):
            try:
                await runner.step(step)
            except AssertionError as exc:
                raise AssertionError(f"step {n} {json.dumps(step)[:160]}: {exc}") from None
        await runner.drain()
        runner.nothing_unchecked()
    finally:
        await runner.close()


def test_every_step_kind_is_known_and_every_case_asserts() -> None:
    inputs = {"do", "server", "close"}
    checks = {"sockets", "sent", "events", "resolved", "members", "position", "state"}
    assert len(CASES) >= 8
    for case in CASES:
        kinds = [kind for step in case["steps"] for kind in step if kind in inputs | checks]
        assert all(len([k for k in step if k in inputs | checks]) == 1 for step in case["steps"]), case["name"]
        assert set(kinds) & checks, case["name"]
