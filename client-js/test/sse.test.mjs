// GatewayClient over the gateway's HTTP transport (docs/protocol.md, "HTTP transport"), against
// real gateways: the stream alone, the fallback through a real nginx that refuses WebSocket
// upgrades, and the WebSocket tried again after a stream ends.
import assert from "node:assert/strict";
import { connect, createServer } from "node:net";
import { test } from "node:test";

import { WebSocket as NodeWebSocket } from "ws";

import { GatewayClient, streamUrl } from "../dist/index.js";
import { mint, nextEvent, proxyWithoutUpgrades, record, startGateway, waitFor } from "./support.mjs";

function connectAs(t, url, user, options = {}) {
  const client = new GatewayClient(url, { token: mint(user), backoff: { initialMs: 50, maxMs: 300 }, ...options });
  t.after(() => client.close());
  return client;
}

test("the stream's URL is the WebSocket's with /sse in place of /ws", () => {
  assert.equal(streamUrl("wss://chat.example/ws?token=t"), "https://chat.example/sse?token=t");
  assert.equal(streamUrl("ws://127.0.0.1:3000/"), "http://127.0.0.1:3000/sse");
  assert.equal(streamUrl("ws://h/chat/ws"), "http://h/chat/sse");
});

test("over the HTTP transport alone the same API works, with a WebSocket member in the room", async (t) => {
  const gw = await startGateway(t);
  const alice = connectAs(t, gw.url, "alice", { transports: ["sse"] });
  const bob = connectAs(t, gw.url, "bob");
  const connected = nextEvent(alice, "connected");
  await alice.connect();
  assert.deepEqual(await connected, { reconnected: false, rooms: [], transport: "sse" });
  assert.equal(alice.transport, "sse");
  await bob.connect();
  assert.equal(bob.transport, "websocket");
  const joined = await alice.join("r");
  assert.equal(joined.action, "joined");
  await bob.join("r");
  await waitFor(() => alice.members("r").some((m) => m.userId === "bob"), "bob online for alice");
  const toBob = nextEvent(bob, "message", (m) => m.senderId === "alice");
  const ack = await alice.send("r", "from the stream");
  assert.equal((await toBob).id, ack.id);
  const toAlice = nextEvent(alice, "message", (m) => m.senderId === "bob");
  await bob.send("r", "from the socket");
  assert.equal((await toAlice).content, "from the socket");
  const history = await alice.history("r", 10);
  assert.deepEqual(history.entries.map((e) => e.payload.content), ["from the stream", "from the socket"]);
  // Many sends in one turn: one POST carries them, in order.
  const got = record(bob, "message");
  await Promise.all(Array.from({ length: 30 }, (_, i) => alice.send("r", `burst ${i}`)));
  await waitFor(() => got.length === 30, "the burst at bob");
  assert.deepEqual(got.map((m) => m.content), Array.from({ length: 30 }, (_, i) => `burst ${i}`));
});

test("through a proxy that refuses upgrades it falls back to the stream after two failed opens", async (t) => {
  const gw = await startGateway(t);
  const proxy = proxyWithoutUpgrades(t, gw);
  if (proxy === null) return;
  const alice = connectAs(t, proxy.url, "alice");
  const drops = record(alice, "disconnected");
  const connected = nextEvent(alice, "connected");
  await alice.connect();
  assert.equal((await connected).transport, "sse");
  assert.deepEqual(drops.map((d) => [d.code, d.willReconnect]), [[1006, true], [1006, true]]); // the two WebSocket opens
  const bob = connectAs(t, gw.url, "bob"); // directly on the gateway, over a WebSocket
  await bob.connect();
  await alice.join("r");
  await bob.join("r");
  const toAlice = nextEvent(alice, "message", (m) => m.senderId === "bob");
  await bob.send("r", "through the proxy");
  assert.equal((await toAlice).content, "through the proxy");
  const toBob = nextEvent(bob, "message", (m) => m.senderId === "alice");
  await alice.send("r", "back through it");
  assert.equal((await toBob).content, "back through it");
});

test("after a stream ends the WebSocket is tried again; one that does not open in time counts as failed", async (t) => {
  const gw = await startGateway(t);
  const network = await forwarder(t, gw.port); // a path to the gateway that the test can cut
  let refusing = true; // WebSockets that never open, until the network is fixed
  class Flaky {
    constructor(url) {
      if (!refusing) return new NodeWebSocket(url);
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
    }
    send() {}
    close() {
      this.readyState = 3;
    }
  }
  const alice = connectAs(t, network.url, "alice", { WebSocket: Flaky, openTimeoutMs: 300 });
  const drops = record(alice, "disconnected");
  await alice.connect();
  assert.equal(alice.transport, "sse");
  assert.deepEqual(drops.map((d) => [d.code, d.reason]), [[1006, "did not open in time"], [1006, "did not open in time"]]);
  await alice.join("general");
  refusing = false;
  const back = nextEvent(alice, "connected");
  network.cut(); // the stream ends without a `closed` event, as when a proxy cuts it
  assert.deepEqual(await back, { reconnected: true, rooms: ["general"], transport: "websocket" });
  assert.equal(drops.at(-1).code, 1006);
});

/** A TCP forwarder on 127.0.0.1 to `port`; `cut()` drops every connection through it. */
async function forwarder(t, port) {
  const sockets = new Set();
  const server = createServer((client) => {
    const upstream = connect(port, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
  };
}
