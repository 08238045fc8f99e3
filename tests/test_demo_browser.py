"""The /demo page end to end in real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright's sync API) against `python server.py` processes. Screenshots go to artifacts/."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import unavailable
from tests.example_backend import example_backend
from tests.helpers import ROOT, SECRET, GatewayProcess, free_port, spawn_server, token
from tests.proxy_support import proxy_without_upgrades

CHROMIUM = os.environ.get("RTG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = os.path.join(ROOT, "artifacts")
LOCAL = ("--host", "127.0.0.1", "--drain-delay", "0", "--drain-window", "0")
WAIT_MS = 10_000  # every expectation below polls up to this long, then fails
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PENDING = re.compile(r"\bpending\b")
NON_EMPTY = re.compile(r".+")

playwright_api: Any
try:
    from playwright import sync_api as playwright_api
except ImportError:  # pragma: no cover - the venv has it; reported by the fixture below
    playwright_api = None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if playwright_api is None:
        unavailable("playwright is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"Chromium not found at {CHROMIUM} (scripts/chromium.sh installs it)")
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        playwright_api.expect.set_options(timeout=WAIT_MS)
        yield instance
        instance.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """New pages, each in its own context (own storage, like two people); all closed afterwards.
    Script errors on any page fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def factory(url: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 760})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        return page

    yield factory
    for context in contexts:
        context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def servers() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.kill()


def sign_in(page: Any, name: str, room: str = "general") -> None:
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Room", exact=True).fill(room)
    page.get_by_role("button", name="Join", exact=True).click()
    expect = playwright_api.expect
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    expect(page.get_by_text(f"You joined #{room}")).to_be_visible()


def member(page: Any, user: str) -> Any:
    return page.locator(f'#member-list li[data-user="{user}"]')


def screenshot(page: Any, name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path)
    return path


def test_two_pages_chat_with_typing_and_presence(browser, open_page, servers):
    expect = playwright_api.expect
    servers.append(srv := spawn_server("--port", "0", *LOCAL))  # no JWT_DEV: /dev/token exists
    alice = open_page(f"{srv.http}/demo")
    bob = open_page(f"{srv.http}/demo/?idle=3")  # idle after 3 s without input instead of a minute
    sign_in(alice, "alice")
    sign_in(bob, "bob")
    expect(member(alice, "bob")).to_have_attribute("data-status", "online")
    expect(member(bob, "alice")).to_have_attribute("data-status", "online")
    expect(member(alice, "alice")).to_contain_text("alice (you)")

    box = bob.get_by_label("Message", exact=True)
    box.press_sequentially("hello")
    expect(alice.locator("#typing")).to_have_text("bob is typing…")
    expect(member(alice, "bob")).to_have_attribute("data-status", "typing")
    expect(member(alice, "bob").locator(".status")).to_have_text("typing")

    hostile = 'hello alice <img src=x onerror="window.__pwned=1"><b>bold</b>'
    box.fill(hostile)
    box.press("Enter")
    shown = alice.locator('.msg[data-sender="bob"]')
    expect(shown.locator(".body")).to_have_text(hostile)  # the markup is shown as text
    expect(shown.locator(".sender")).to_have_text("bob")
    expect(shown.locator("time")).to_have_attribute("datetime", ISO_MS)
    assert shown.locator("img, b").count() == 0, "user text must never become elements"
    assert alice.evaluate("window.__pwned") is None
    expect(alice.locator("#typing")).to_have_text("")  # sending says online: typing stops
    expect(bob.locator('.msg.mine[data-sender="bob"]')).not_to_have_class(PENDING)

    alice.get_by_label("Message", exact=True).fill("hi bob")
    alice.get_by_label("Message", exact=True).press("Enter")
    expect(bob.locator('.msg[data-sender="alice"] .body')).to_have_text("hi bob")
    screenshot(alice, "demo-chat.png")

    expect(member(alice, "bob")).to_have_attribute("data-status", "idle")
    expect(member(alice, "bob").locator(".status")).to_have_text("idle")
    bob.close()
    expect(member(alice, "bob")).to_have_attribute("data-status", "offline")
    expect(alice.locator("#messages-panes, .messages").get_by_text("bob left")).to_be_visible()
    screenshot(alice, "demo-offline.png")


def test_page_reconnects_and_rejoins_after_a_restart(browser, open_page, servers):
    """An in-memory gateway restarts under two tabs: both come back to the same room, the message
    typed while it was down is sent once, and nothing false is said: no "left"/"joined" notes, no
    phantom "more online", no "could not be recovered" (nothing was missed), a countdown that ticks."""
    expect = playwright_api.expect
    port = free_port()
    args = ("--port", str(port), *LOCAL)
    servers.append(first := spawn_server(*args))
    alice = open_page(f"{first.http}/demo/")
    bob = open_page(f"{first.http}/demo/")
    sign_in(alice, "alice")
    sign_in(bob, "bob")
    expect(member(alice, "bob")).to_have_attribute("data-status", "online")
    expect(member(bob, "alice")).to_have_attribute("data-status", "online")
    notes = {page: page.locator(".note").all_text_contents() for page in (alice, bob)}
    assert "bob joined" in notes[alice]  # true then: bob came after alice

    first.signal(signal.SIGINT)
    assert first.wait(15) == 0
    expect(alice.locator("#conn")).to_have_attribute("data-state", "waiting")
    box = alice.get_by_label("Message", exact=True)
    box.fill("typed while the gateway was down")
    box.press("Enter")
    expect(alice.locator(".msg.pending")).to_have_count(1)
    screenshot(alice, "demo-reconnecting.png")
    # The countdown ticks: once a wait of 3 s or more is shown, the same attempt shows less.
    waiting = re.compile(r"Reconnecting in ([3-9]|1\d) s \(attempt (\d+)\)")
    expect(alice.locator("#conn-text")).to_have_text(waiting, timeout=30_000)
    found = waiting.search(alice.locator("#conn-text").text_content() or "")
    assert found is not None
    seconds, attempt = int(found[1]), found[2]
    less = "|".join(str(n) for n in range(1, seconds))
    expect(alice.locator("#conn-text")).to_have_text(re.compile(rf"Reconnecting in ({less}) s \(attempt {attempt}\)"))

    # A new process on the same port, with a new generated secret: the pages fetch new tokens.
    servers.append(spawn_server(*args))
    for page in (alice, bob):
        expect(page.locator("#conn")).to_have_attribute("data-state", "open", timeout=20_000)
    queued = alice.locator('.msg[data-sender="alice"]', has_text="typed while the gateway was down")
    expect(queued).to_have_attribute("data-id", NON_EMPTY)  # the gateway's echo replaced the draft
    expect(alice.locator(".msg.pending")).to_have_count(0)
    expect(bob.locator('.msg[data-sender="alice"] .body')).to_have_text(["typed while the gateway was down"])
    say = bob.get_by_label("Message", exact=True)
    say.fill("welcome back")
    say.press("Enter")
    expect(alice.locator('.msg[data-sender="bob"] .body')).to_have_text("welcome back")  # the marker
    for page, other in ((alice, "bob"), (bob, "alice")):
        expect(member(page, other)).to_have_attribute("data-status", "online")
        expect(page.locator("#member-list .more")).to_have_count(0)
        assert page.locator(".note").all_text_contents() == notes[page], "a restart is not news"
    screenshot(alice, "demo-reconnected.png")


def test_page_says_what_it_cannot_know_after_a_crash(browser, open_page, servers):
    """A gateway killed without a drain (no 1012): what reached it just before may be lost, so the
    page says that it could not recover, and carries on."""
    expect = playwright_api.expect
    port = free_port()
    args = ("--port", str(port), *LOCAL)
    servers.append(first := spawn_server(*args))
    alice = open_page(f"{first.http}/demo/")
    sign_in(alice, "alice")
    first.kill()
    expect(alice.locator("#conn")).to_have_attribute("data-state", "waiting")
    servers.append(spawn_server(*args))
    expect(alice.locator("#conn")).to_have_attribute("data-state", "open", timeout=20_000)
    expect(alice.get_by_text("Messages sent while you were away could not be recovered.")).to_be_visible()


def test_member_list_counts_only_who_is_there(browser, open_page, servers):
    """erin joins, frank joins, erin closes her tab: frank sees erin offline and, after the grace,
    "erin left"; nobody is counted as "more online"."""
    expect = playwright_api.expect
    servers.append(srv := spawn_server("--port", "0", *LOCAL))
    erin = open_page(f"{srv.http}/demo/")
    sign_in(erin, "erin")
    frank = open_page(f"{srv.http}/demo/?grace=1")
    sign_in(frank, "frank")
    expect(member(frank, "erin")).to_have_attribute("data-status", "online")
    erin.close()
    expect(member(frank, "erin")).to_have_attribute("data-status", "offline")
    expect(frank.get_by_text("erin left", exact=True)).to_be_visible()
    expect(frank.locator("#member-list .more")).to_have_count(0)
    expect(frank.get_by_text("erin joined", exact=True)).to_have_count(0)


def test_page_recovers_what_it_missed_while_its_gateway_restarted(browser, open_page, servers):
    """Two gateways on one Redis: alice's restarts while bob (on the other) keeps talking; her
    page re-joins with its last position and shows exactly what she missed."""
    from tests.redis_support import shared_redis_port, unique_prefix

    expect = playwright_api.expect
    redis = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(shared_redis_port()), "REDIS_PREFIX": unique_prefix()}
    env = {"JWT_SECRET": SECRET, **redis}
    port = free_port()
    args = ("--port", str(port), "--dev", *LOCAL)
    servers.append(first := spawn_server(*args, env=env))
    servers.append(other := spawn_server("--port", "0", "--dev", *LOCAL, env=env))
    alice = open_page(f"{first.http}/demo/")
    bob = open_page(f"{other.http}/demo/")
    sign_in(alice, "alice")
    sign_in(bob, "bob")
    say = bob.get_by_label("Message", exact=True)
    say.fill("before")
    say.press("Enter")
    expect(alice.locator('.msg[data-sender="bob"] .body')).to_have_text("before")

    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0
    expect(alice.locator("#conn")).to_have_attribute("data-state", "waiting")
    for text in ("missed one", "missed two"):
        say.fill(text)
        say.press("Enter")
        expect(bob.locator(".msg.pending")).to_have_count(0)
    servers.append(spawn_server(*args, env=env))
    expect(alice.locator("#conn")).to_have_attribute("data-state", "open", timeout=20_000)
    expect(alice.locator('.msg[data-sender="bob"] .body')).to_have_text(["before", "missed one", "missed two"])
    expect(alice.get_by_text("could not be recovered")).to_have_count(0)


def test_page_refreshes_its_dev_token_in_band(browser, open_page, servers):
    """A notice longer than a dev token lives: token_expiring comes at once, and the page hands the
    gateway a fresh /dev/token on the same socket (the gateway counts the accepted refresh)."""
    expect = playwright_api.expect
    servers.append(srv := spawn_server("--port", "0", "--token-refresh-notice", "1000000", *LOCAL))
    page = open_page(f"{srv.http}/demo")
    sign_in(page, "rita")

    def refreshed() -> float:
        text = urllib.request.urlopen(f"{srv.http}/metrics", timeout=5).read().decode()
        found = re.search(r'^gateway_token_refreshes_total\{outcome="ok"\} (\S+)$', text, re.M)
        return float(found[1]) if found else 0.0

    deadline = time.monotonic() + WAIT_MS / 1000
    while refreshed() < 1 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert refreshed() >= 1, "the page never refreshed its token"
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")  # and the socket is still open


def test_page_asks_for_a_token_when_dev_tokens_are_off(browser, open_page, servers):
    expect = playwright_api.expect
    env = {"JWT_DEV": SECRET, "ROOM_ACCESS": "token"}
    servers.append(srv := spawn_server("--port", "0", *LOCAL, env=env))
    page = open_page(f"{srv.http}/demo")
    page.get_by_label("Your name").fill("carol")
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.locator("#login-error")).to_contain_text("does not hand out dev tokens")
    field = page.get_by_label("Token")
    expect(field).to_be_visible()

    field.fill(token("carol", secret="some-other-secret-that-is-long-enough-0123456789"))
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.locator("#login-error")).to_contain_text("refused the connection")

    field.fill(token("carol", rooms=["general", "team-*"]))
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    expect(page.locator("#me-name")).to_have_text("carol")
    expect(member(page, "carol")).to_have_attribute("data-status", "online")

    page.get_by_label("Join a room").fill("not a room!")
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.locator("#alert")).to_contain_text("Room names use")

    # The gateway's own refusal, shown readably; the room is marked as not joined.
    page.get_by_label("Join a room").fill("secret")
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.locator("#alert-text")).to_have_text(
        "You may not join that room: this token does not allow joining the room"
    )
    expect(page.locator('#room-list li[data-room="secret"]')).to_have_class("gone")
    page.get_by_label("Join a room").fill("team-blue")
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.get_by_text("You joined #team-blue")).to_be_visible()
    screenshot(page, "demo-token.png")


def test_the_demo_page_against_the_example_backend(browser, open_page, servers, tmp_path):
    """README, "Your backend": the reference backend's membership and word filter, through the page."""
    expect = playwright_api.expect
    with example_backend(str(tmp_path)) as backend:
        servers.append(srv := spawn_server("--port", "0", *LOCAL, env=backend.gateway_env()))
        bob = open_page(f"{srv.http}/demo")
        sign_in(bob, "bob", "general")
        bob.get_by_label("Join a room").fill("staff")
        bob.get_by_role("button", name="Join", exact=True).click()
        expect(bob.locator("#alert-text")).to_have_text("You may not join that room: staff is for its members only")
        expect(bob.locator('#room-list li[data-room="staff"]')).to_have_class("gone")
        bob.get_by_role("button", name="Open #general").click()
        box = bob.get_by_label("Message", exact=True)
        box.fill("well darn it")
        box.press("Enter")
        expect(bob.locator('.msg[data-sender="bob"] .body')).to_have_text("well **** it")
        box.fill("cheap spam here")
        box.press("Enter")
        expect(bob.locator("#alert-text")).to_have_text(
            "The chat service did not accept the message: the word 'spam' is not allowed here"
        )
        screenshot(bob, "demo-example-backend.png")


def test_the_demo_page_chats_over_the_stream_behind_a_proxy_that_refuses_upgrades(browser, open_page, servers):
    """docs/protocol.md, "HTTP transport": the page is served through nginx (no upgrades passed,
    default buffering); its client gives up on the WebSocket after two failed opens and chats over
    SSE with a page connected directly over a WebSocket."""
    expect = playwright_api.expect
    servers.append(srv := spawn_server("--port", "0", *LOCAL))
    with proxy_without_upgrades(srv.port) as port:
        alice = open_page(f"http://127.0.0.1:{port}/demo")
        bob = open_page(f"{srv.http}/demo")
        sign_in(alice, "alice")
        sign_in(bob, "bob")
        expect(alice.locator("#conn")).to_have_attribute("data-transport", "sse")
        expect(alice.locator("#conn-text")).to_have_text("Connected (HTTP streaming)")
        expect(bob.locator("#conn")).to_have_attribute("data-transport", "websocket")
        expect(member(alice, "bob")).to_have_attribute("data-status", "online")

        alice.get_by_label("Message", exact=True).fill("from behind the proxy")
        alice.get_by_label("Message", exact=True).press("Enter")
        expect(bob.locator('.msg[data-sender="alice"] .body')).to_have_text("from behind the proxy")
        expect(alice.locator('.msg.mine[data-sender="alice"]')).not_to_have_class(PENDING)  # acked over the stream
        bob.get_by_label("Message", exact=True).fill("and back")
        bob.get_by_label("Message", exact=True).press("Enter")
        expect(alice.locator('.msg[data-sender="bob"] .body')).to_have_text("and back")
        bob.get_by_label("Message", exact=True).press_sequentially("typing")
        expect(member(alice, "bob")).to_have_attribute("data-status", "typing")
        screenshot(alice, "demo-sse.png")
