// GatewayClient over the gateway's HTTP transport (docs/protocol.md, "HTTP transport"), against
// real gateways: the stream alone, the fallback through a real nginx that refuses WebSocket
// upgrades, and the WebSocket tried again after a stream ends.
import assert from "node:assert/strict";
import { connect, createServer } from "node:net";
import { test } from "node:test";

import { WebSocket as NodeWebSocket } from "ws";

import { GatewayClient, SseSocket, streamUrl } from "../dist/index.js";
import { disconnectUser, mint, nextEvent, proxyWithoutUpgrades, record, startGateway, waitFor } from "./support.mjs";

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

test("on the stream: 4003 from the gateway is final, even with a send racing it", async (t) => {
  const gw = await startGateway(t, { env: { API_KEY: "js-test-key" } });
  const client = connectAs(t, gw.url, "mallory", { transports: ["sse"] });
  await client.connect();
  await client.join("r");
  const disconnected = nextEvent(client, "disconnected");
  assert.equal(await disconnectUser(gw, "mallory"), 200);
  client.send("r", "too late").catch(() => {}); // its POST may meet the ended session: 404
  const drop = await disconnected;
  assert.deepEqual([drop.code, drop.action, drop.willReconnect], [4003, "give_up", false]);
});

test("on the stream: 429 is waited out, 413 halves the batch; everything arrives once, in order", async (t) => {
  const gw = await startGateway(t, {
    args: ["--rate-limit", "20", "--rate-burst", "8", "--max-message-bytes", "2048", "--sse-send-bytes", "2048"],
  });
  const alice = connectAs(t, gw.url, "alice", { transports: ["sse"] });
  const bob = connectAs(t, gw.url, "bob");
  await alice.connect();
  await bob.connect();
  await alice.join("r");
  await bob.join("r");
  const got = record(bob, "message");
  // 12 messages of 600 characters in one turn: 20 frames would be over RATE_BURST (8) and the
  // body over SSE_SEND_BYTES (2048): halved to what fits, and the rate limit waited out.
  const acks = await Promise.all(Array.from({ length: 12 }, (_, i) => alice.send("r", `${i}:${"x".repeat(600)}`)));
  assert.equal(new Set(acks.map((a) => a.id)).size, 12);
  await waitFor(() => got.length === 12, "the 12 messages at bob");
  assert.deepEqual(got.map((m) => Number(m.content.split(":")[0])), Array.from({ length: 12 }, (_, i) => i));
  assert.equal(alice.connections, 1); // never dropped for it
});

test("while on the stream a WebSocket is tried in the background, and used once it opens", async (t) => {
  const gw = await startGateway(t);
  let refusing = true;
  class Flaky {
    constructor(url) {
      if (!refusing) return new NodeWebSocket(url);
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      setTimeout(() => this.onerror?.({}), 0);
    }
    send() {}
    close() {
      this.readyState = 3;
    }
  }
  const alice = connectAs(t, gw.url, "alice", { WebSocket: Flaky, upgradeAfterMs: 200 });
  await alice.connect();
  assert.equal(alice.transport, "sse");
  await alice.join("general");
  const back = nextEvent(alice, "connected");
  refusing = false; // the proxy lets WebSockets through again (or the gateway was only restarting)
  assert.deepEqual(await back, { reconnected: true, rooms: ["general"], transport: "websocket" });
});

test("the stream's parser takes CRLF line ends and comments, as proxies may send them", async () => {
  const body = [
    'data: {"type":"session","payload":{"sessionId":"r.s","sendUrl":"/sse/send"}}\r\n\r\n',
    ":\r\n\r",
    '\ndata: {"type":"pong","payload":{}}\r',
    "\n\r\n",
  ];
  const seen = [];
  const fetcher = async (url, init) => {
    seen.push([url, init.headers]);
    const stream = new ReadableStream({
      start(controller) {
        for (const part of body) controller.enqueue(new TextEncoder().encode(part));
      },
    });
    return new Response(stream, { status: 200, headers: { "Content-Type": "text/event-stream" } });
  };
  const socket = new SseSocket("wss://chat.example/chat/ws?token=t0k", fetcher);
  const frames = [];
  const opened = new Promise((ok) => (socket.onopen = ok));
  socket.onmessage = (event) => frames.push(JSON.parse(event.data).type);
  await opened;
  await waitFor(() => frames.length === 1, "the pong");
  assert.deepEqual(frames, ["pong"]);
  assert.deepEqual(seen[0], ["https://chat.example/chat/sse", { Accept: "text/event-stream", Authorization: "Bearer t0k" }]);
  socket.close();
});
