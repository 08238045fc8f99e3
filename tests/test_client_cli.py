"""`python -m realtime_gateway_client` as a real subprocess against a real gateway."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import pytest

from tests.helpers import ROOT, token


class Cli:
    """A running `python -m realtime_gateway_client ...` whose output lines are read with deadlines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []

    @classmethod
    async def start(cls, *args: str, stdin: bool = False, env: dict[str, str] | None = None) -> Cli:
        base = {k: v for k, v in os.environ.items() if k != "RTG_TOKEN"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "realtime_gateway_client",
            *args,
            cwd=ROOT,
            env={**base, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line(self, pattern: str, stream: str = "out", timeout: float = 10.0) -> str:
        """The next line on stdout (or stderr) matching `pattern`; earlier ones are kept in out/err."""
        reader = self.proc.stdout if stream == "out" else self.proc.stderr
        seen = self.out if stream == "out" else self.err
        assert reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                raw = await asyncio.wait_for(reader.readline(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise AssertionError(f"no line matching {pattern!r} on std{stream}; got {seen!r}") from None
            if not raw:
                rest = await self.proc.stderr.read() if self.proc.stderr and stream == "out" else b""
                raise AssertionError(f"std{stream} ended before {pattern!r}; got {seen!r}; stderr {rest.decode()!r}")
            text = raw.decode().rstrip("\n")
            seen.append(text)
            if re.search(pattern, text):
                return text

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")

    async def exit_code(self, timeout: float = 10.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.mark.gen_test(timeout=20)
async def test_tail_prints_one_json_line_per_message(gw):
    tail = await Cli.start("tail", "--url", gw.url, "--token", token("tailer"), "--room", "general", "--count", "2")
    try:
        await tail.line(r"^tail: joined general$", stream="err")
        alice = await gw.client("alice")
        await alice.join("general")
        alice.send("message", {"roomId": "general", "content": "first"})
        alice.send("message", {"roomId": "general", "content": "héllo ✓ <b>"})
        lines = [json.loads(await tail.line(r"^\{")), json.loads(await tail.line(r"^\{"))]
        assert [m["content"] for m in lines] == ["first", "héllo ✓ <b>"]
        assert {m["senderId"] for m in lines} == {"alice"} and {m["roomId"] for m in lines} == {"general"}
        assert lines[0]["id"] < lines[1]["id"] and lines[0]["createdAt"].endswith("Z")
        assert await tail.exit_code() == 0, "--count 2 exits after the second message"
        alice.close()
    finally:
        tail.kill()


@pytest.mark.gen_test(timeout=20)
async def test_chat_sends_typed_lines_and_shows_incoming(gw):
    chat = await Cli.start("chat", "--url", gw.url, "--token", token("carol"), "--room", "general", stdin=True)
    bob = await gw.client("bob")
    try:
        await chat.line(r"^\* joined #general")
        await bob.join("general")
        await chat.line(r"^\* bob joined$")
        chat.type("hello from the terminal")
        got = await bob.expect("message")
        assert (got["payload"]["senderId"], got["payload"]["content"]) == ("carol", "hello from the terminal")
        await chat.line(r"^\[\d\d:\d\d:\d\d\] carol: hello from the terminal$")

        bob.send("presence", {"roomId": "general", "status": "typing"})
        await chat.line(r"^\* bob is typing$")
        bob.send("message", {"roomId": "general", "content": "hi carol"})
        await chat.line(r"^\[\d\d:\d\d:\d\d\] bob: hi carol$")

        chat.type("/typing")
        await bob.expect(
            "presence",
            match=lambda f: f["payload"] == {**f["payload"], "userId": "carol", "status": "typing"},
        )

        chat.type("/join side")
        await chat.line(r"^\* joined #side; sending to #side$")
        chat.type("/leave general")
        await chat.line(r"^\* left #general$")
        gone = await bob.expect("presence", match=lambda f: f["payload"]["status"] == "offline")
        assert gone["payload"]["userId"] == "carol"
        chat.type("/quit")
        assert await chat.exit_code() == 0
    finally:
        bob.close()
        chat.kill()


@pytest.mark.gen_test(timeout=20)
async def test_name_fetches_a_dev_token(make_gateway):
    gw = await make_gateway(dev=True)
    tail = await Cli.start("tail", "--url", gw.url, "--name", "dana", "--room", "general", "--count", "1")
    try:
        await tail.line(r"^tail: joined general$", stream="err")
        dana = await gw.client("erin")
        await dana.join("general")
        dana.send("message", {"roomId": "general", "content": "for dana"})
        assert json.loads(await tail.line(r"^\{"))["content"] == "for dana"
        assert await tail.exit_code() == 0
        dana.close()
    finally:
        tail.kill()


@pytest.mark.gen_test(timeout=20)
async def test_name_and_missing_token_are_reported_in_one_line(gw):
    # gw has a configured secret: no /dev/token, so --name cannot work.
    named = await Cli.start("tail", "--url", gw.url, "--name", "dana", "--room", "general")
    assert await named.exit_code() == 2
    assert "pass --token" in (await named.line(r"dev/token", stream="err"))
    bare = await Cli.start("chat", "--url", gw.url, "--room", "general")
    assert await bare.exit_code() == 2
    await bare.line(r"^! no token: pass --token, set RTG_TOKEN", stream="err")
    refused = await Cli.start("chat", "--url", gw.url, "--token", "not-a-jwt", "--room", "general")
    assert await refused.exit_code() == 2
    await refused.line(r"^! token refused", stream="err")


@pytest.mark.gen_test(timeout=20)
async def test_a_refused_join_says_which_field_is_wrong_and_why(gw):
    chat = await Cli.start("chat", "--url", gw.url, "--token", token("typo"), "--room", "bad room")
    try:
        line = await chat.line(r"validation_failed", stream="err")
        assert "roomId:" in line, line  # the field and marshmallow's reason, not just the code
        assert await chat.exit_code() == 1
    finally:
        chat.kill()
