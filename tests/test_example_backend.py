"""The reference backend (examples/chat_backend.py) with a gateway, as the README's "Your backend"
runs them: membership and the word filter from its SQLite file, a session cookie for a user, rpc,
and its check of the gateway's signature."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator

import pytest

from services.hooks.client import sign
from tests.example_backend import SECRET, ExampleBackend, example_backend
from tests.helpers import Client, RunningGateway, refused_status

Factory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
def backend(tmp_path: str) -> Iterator[ExampleBackend]:
    with example_backend(str(tmp_path)) as started:
        yield started


async def gateway_for(make_gateway: Factory, backend: ExampleBackend) -> RunningGateway:
    return await make_gateway(
        hook_secret=SECRET,
        room_access="hook",
        **{f"{hook}_hook_url": backend.url(hook) for hook in ("connect", "join", "publish", "rpc")},
    )


@pytest.mark.gen_test(timeout=30)
async def test_the_example_backend_decides_who_joins_what_is_said_and_answers_rpc(
    make_gateway: Factory, backend: ExampleBackend
) -> None:
    assert os.path.isfile(backend.db)  # created on first start
    gw = await gateway_for(make_gateway, backend)
    alice = await Client.connect(gw.url, headers={"Cookie": "session=alice-session"})
    bob = await Client.connect(gw.url, headers={"Cookie": "theme=dark; session=bob-session"})
    assert await refused_status(gw.url, {"Cookie": "session=nobody"}) == (401, {"error": "not signed in"})
    await alice.join("staff")
    await bob.join("general")
    bob.send("join", {"roomId": "staff"}, request_id="j")
    refused = await bob.reply_to("j")
    assert refused["payload"]["code"] == "forbidden_room"
    assert refused["payload"]["details"] == {"reason": "staff is for its members only"}
    await alice.join("general")
    alice.send("message", {"roomId": "general", "content": "what the Darn"}, request_id="m1")
    assert (await bob.expect("message"))["payload"]["content"] == "what the ****"
    alice.send("message", {"roomId": "general", "content": "buy spam now"}, request_id="m2")
    assert (await alice.reply_to("m2"))["payload"]["details"] == {"reason": "the word 'spam' is not allowed here"}
    bob.send("rpc", {"method": "rooms.mine"}, request_id="r1")
    assert (await bob.reply_to("r1"))["payload"]["data"] == ["general", "random"]
    bob.send("rpc", {"method": "room.join_requests", "data": {"roomId": "staff"}}, request_id="r2")
    assert (await bob.reply_to("r2"))["payload"]["data"] == {"requested": "staff"}
    bob.send("rpc", {"method": "nope"}, request_id="r3")
    assert (await bob.reply_to("r3"))["payload"]["details"] == {"status": 404, "code": "no_method"}
    alice.close()
    bob.close()


@pytest.mark.parametrize("how", ["unsigned", "wrong key", "stale timestamp"])
def test_the_example_backend_refuses_calls_it_cannot_verify(backend: ExampleBackend, how: str) -> None:
    body = b'{"hook": "join", "userId": "mallory", "roomId": "staff"}'
    headers = {"Content-Type": "application/json"}
    if how != "unsigned":
        stamp = str(int(time.time()) - (3600 if how == "stale timestamp" else 0))
        headers["X-Gateway-Timestamp"] = stamp
        headers["X-Gateway-Signature"] = sign("wrong-key" if how == "wrong key" else SECRET, stamp, body)
    request = urllib.request.Request(backend.url("join"), data=body, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


def test_the_example_backend_answers_a_signed_call(backend: ExampleBackend) -> None:
    body = b'{"hook": "join", "userId": "alice", "roomId": "staff"}'
    stamp = str(int(time.time()))
    headers = {"X-Gateway-Timestamp": stamp, "X-Gateway-Signature": sign(SECRET, stamp, body)}
    request = urllib.request.Request(backend.url("join"), data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.loads(answer.read()) == {"allow": True}
