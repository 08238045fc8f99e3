import pytest

from tests.helpers import Client, token


@pytest.mark.gen_test(timeout=10)
async def test_two_clients_chat(gw):
    alice = await gw.client("alice")
    bob = await gw.client("bob")
    await alice.join("general")
    await bob.join("general")
    alice.send("message", {"roomId": "general", "content": "hello bob"}, request_id="m1")
    got = await bob.expect("message")
    assert got["payload"]["content"] == "hello bob"
    assert got["payload"]["senderId"] == "alice"
    ack = await alice.expect("ack")
    assert ack["requestId"] == "m1" and ack["payload"]["id"] == got["payload"]["id"]
    other = await Client.connect(gw.url, token("carol"))
    other.close()
