// GatewayClient against real gateways over real sockets (docs/client.md).
import assert from "node:assert/strict";
import { test } from "node:test";

import { BufferFull, ClientClosed, GatewayClient, RequestError } from "../dist/index.js";
import { disconnectUser, freePort, mint, nextEvent, record, redisFor, startGateway, waitFor } from "./support.mjs";

function connectAs(t, gw, user, options = {}) {
  const client = new GatewayClient(gw.url, { token: mint(user), backoff: { initialMs: 50, maxMs: 300 }, ...options });
  t.after(() => client.close());
  return client;
}

test("requests resolve with their replies and every frame arrives as a typed event", async (t) => {
  const gw = await startGateway(t);
  const alice = connectAs(t, gw, "alice");
  const bob = connectAs(t, gw, "bob");
  await Promise.all([alice.connect(), bob.connect()]);
  assert.equal(alice.userId, "alice");
  assert.equal(alice.state, "open");

  const joined = await alice.join("general");
  assert.deepEqual([joined.roomId, joined.action, joined.offset], ["general", "joined", 0]);
  const seenByAlice = nextEvent(alice, "presence", (p) => p.userId === "bob" && p.status === "online");
  const state = nextEvent(bob, "presence_state", (s) => s.roomId === "general");
  await bob.join("general");
  assert.equal((await state).count, 2);
  await seenByAlice;

  const frames = record(bob, "frame");
  const delivered = nextEvent(bob, "message", (m) => m.content === "hello");
  const ack = await alice.send("general", "hello", { dedupeKey: "k-1" });
  assert.equal(ack.dedupeKey, "k-1");
  const message = await delivered;
  assert.deepEqual([message.id, message.senderId, message.offset, message.epoch], [ack.id, "alice", 1, joined.epoch]);
  assert.ok(frames.some((f) => f.type === "message" && f.payload.id === ack.id), "the raw frame is an event too");

  const history = await bob.history("general", 10);
  assert.deepEqual(history.entries.map((e) => e.payload.content), ["hello"]);
  const page = await bob.presenceQuery("general");
  assert.deepEqual(page.members.map((m) => m.userId), ["alice", "bob"]);
  assert.ok((await alice.ping()) >= 0);
  assert.deepEqual(bob.position("general"), { offset: 1, epoch: joined.epoch });

  // The gateway's refusal rejects the request's own promise, with its code and details.
  await assert.rejects(alice.history("elsewhere"), (err) => err instanceof RequestError && err.code === "not_in_room");
  await assert.rejects(alice.send("general", ""), (err) => err instanceof RequestError && err.code === "validation_failed" && "content" in err.details);
  const left = await bob.leave("general");
  assert.equal(left.action, "left");
  assert.deepEqual(bob.roomIds, []);
});

test("a send repeated with its dedupeKey is acked with the same id and delivered once", async (t) => {
  const gw = await startGateway(t);
  const alice = connectAs(t, gw, "alice");
  const bob = connectAs(t, gw, "bob");
  await Promise.all([alice.connect(), bob.connect()]);
  await alice.join("r");
  await bob.join("r");
  const got = record(bob, "message");
  const first = await alice.send("r", "once", { dedupeKey: "same" });
  const again = await alice.send("r", "once", { dedupeKey: "same" });
  assert.equal(again.id, first.id);
  await alice.send("r", "marker");
  await waitFor(() => got.some((m) => m.content === "marker"), "the marker");
  assert.deepEqual(got.map((m) => m.content), ["once", "marker"]);
});

test("after a restart it reconnects with backoff, joins again and sends what waited", async (t) => {
  const port = await freePort();
  const first = await startGateway(t, { port });
  // WebSocket only: two refused opens while the gateway restarts would otherwise move it to the
  // HTTP transport (sse.test.mjs tests that), and this test is about the WebSocket coming back.
  const alice = connectAs(t, first, "alice", { transports: ["websocket"] });
  await alice.connect();
  await alice.join("general");
  const dropped = nextEvent(alice, "disconnected");
  assert.equal(await first.stop(), 0);
  const drop = await dropped;
  assert.deepEqual([drop.code, drop.action, drop.willReconnect, drop.attempt], [1012, "retry", true, 1]);
  assert.ok(drop.delayMs >= 0 && drop.delayMs <= 300);

  const recovery = nextEvent(alice, "recovery");
  const back = nextEvent(alice, "connected");
  const echo = nextEvent(alice, "message", (m) => m.content === "typed while down");
  const ack = alice.send("general", "typed while down"); // buffered until the room is joined again
  await startGateway(t, { port });
  assert.deepEqual(await back, { reconnected: true, rooms: ["general"], transport: "websocket" });
  // A new process has a new history: the client says what it could not recover.
  const lost = await recovery;
  assert.equal(lost.recovered, false);
  assert.equal((await ack).id, (await echo).id);
  assert.equal(alice.connections, 2);
});

test("a client in 60 rooms is joined to every one again after a restart, within the rate limit", async (t) => {
  const port = await freePort();
  const first = await startGateway(t, { port });
  const alice = connectAs(t, first, "alice");
  await alice.connect();
  const rooms = Array.from({ length: 60 }, (_, i) => `room-${i}`);
  for (const room of rooms) {
    await alice.join(room);
    await new Promise((ok) => setTimeout(ok, 70)); // a caller's own joins, within 20 frames/s
  }
  const dropped = nextEvent(alice, "disconnected");
  assert.equal(await first.stop(), 0);
  await dropped;
  const back = nextEvent(alice, "connected");
  const second = await startGateway(t, { port });
  const again = await back;
  assert.equal(again.rooms.length, 60);
  const bob = connectAs(t, second, "bob");
  await bob.connect();
  await bob.join("room-59");
  const got = nextEvent(alice, "message", (m) => m.content === "last room");
  await bob.send("room-59", "last room");
  assert.equal((await got).roomId, "room-59");
});

test("while disconnected the outgoing buffer is bounded; close() rejects what waited", async (t) => {
  const port = await freePort();
  const gw = await startGateway(t, { port });
  const alice = connectAs(t, gw, "alice", { maxBuffered: 2 });
  await alice.connect();
  await alice.join("r");
  const dropped = nextEvent(alice, "disconnected");
  await gw.stop();
  await dropped;
  const waiting = [alice.send("r", "one"), alice.send("r", "two")];
  await assert.rejects(alice.send("r", "three"), BufferFull);
  alice.close();
  for (const send of waiting) await assert.rejects(send, (err) => err instanceof ClientClosed && err.message === "client closed");
  assert.equal(alice.state, "closed");
});

test("on another instance over Redis it re-joins with `since` and gets exactly what it missed", async (t) => {
  const redis = await redisFor(t);
  if (redis === null) return;
  const env = { REDIS_HOST: "127.0.0.1", REDIS_PORT: String(redis.port), REDIS_PREFIX: redis.prefix };
  const port = await freePort();
  const first = await startGateway(t, { port, env });
  const other = await startGateway(t, { env });
  const alice = connectAs(t, first, "alice");
  const bob = connectAs(t, other, "bob");
  await Promise.all([alice.connect(), bob.connect()]);
  await alice.join("general");
  await bob.join("general");
  const got = record(alice, "message");
  await bob.send("general", "before");
  await waitFor(() => got.length === 1, "the first message");

  const dropped = nextEvent(alice, "disconnected");
  await first.stop();
  await dropped;
  await bob.send("general", "missed one");
  await bob.send("general", "missed two");
  const recovery = nextEvent(alice, "recovery");
  await startGateway(t, { port, env }); // a new process: another instance, the same Redis
  const recovered = await recovery;
  assert.equal(recovered.recovered, true);
  await waitFor(() => got.length === 3, "the missed messages");
  await bob.send("general", "after");
  await waitFor(() => got.length === 4, "the live message");
  assert.deepEqual(got.map((m) => m.content), ["before", "missed one", "missed two", "after"]);
  assert.deepEqual(got.map((m) => m.offset), [1, 2, 3, 4]);
});

test("token_expiring asks getToken for a new token and refreshes in band", async (t) => {
  const gw = await startGateway(t, { args: ["--token-refresh-notice", "1000000"] });
  let calls = 0;
  const client = new GatewayClient(gw.url, { getToken: async () => (calls += 1, mint("rita")) });
  t.after(() => client.close());
  const refreshed = nextEvent(client, "refreshed");
  await client.connect();
  const { expiresAt } = await refreshed;
  assert.match(expiresAt, /^\d{4}-\d\d-\d\dT/);
  assert.equal(calls, 2, "one token to connect, one to refresh");
  assert.equal(client.state, "open");
});

test("a refused refresh is reported, and the socket stays", async (t) => {
  const gw = await startGateway(t, { args: ["--token-refresh-notice", "1000000"] });
  let calls = 0;
  const client = new GatewayClient(gw.url, { getToken: () => (calls += 1) === 1 ? mint("rita") : mint("somebody-else") });
  t.after(() => client.close());
  const failed = nextEvent(client, "refresh_failed");
  await client.connect();
  const { error } = await failed;
  assert.ok(error instanceof RequestError && error.code === "invalid_token", String(error));
  assert.equal(await client.ping().then(() => client.state), "open");
});

test("close 4001 with a fixed token is final: nobody can hand over a new one", async (t) => {
  const gw = await startGateway(t, { env: { JWT_LEEWAY: "0" }, args: ["--token-refresh-notice", "0"] });
  const client = new GatewayClient(gw.url, { token: mint("tom", { ttl: 2 }) });
  t.after(() => client.close());
  const closed = nextEvent(client, "closed");
  await client.connect();
  const end = await closed;
  assert.equal(end.code, 4001);
  assert.equal(client.state, "closed");
  await assert.rejects(client.join("r"), ClientClosed);
});

test("close 4003 (the control plane disconnected the user) is not retried", async (t) => {
  const gw = await startGateway(t, { env: { API_KEY: "js-test-key" } });
  const client = connectAs(t, gw, "mallory");
  await client.connect();
  await client.join("r");
  const closed = nextEvent(client, "closed");
  const disconnected = nextEvent(client, "disconnected");
  assert.equal(await disconnectUser(gw, "mallory"), 200);
  const drop = await disconnected;
  assert.deepEqual([drop.code, drop.action, drop.willReconnect], [4003, "give_up", false]);
  assert.equal((await closed).code, 4003);
  assert.equal(client.connections, 1);
});

test("a socket that goes silent is replaced after the pong timeout", async (t) => {
  // A server that completes the upgrade and then never answers anything: a dead link without a close.
  const { createServer } = await import("node:http");
  const { createHash } = await import("node:crypto");
  const sockets = new Set();
  const silent = createServer();
  silent.on("upgrade", (req, socket) => {
    sockets.add(socket);
    const accept = createHash("sha1").update(`${req.headers["sec-websocket-key"]}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  });
  await new Promise((ok) => silent.listen(0, "127.0.0.1", ok));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    silent.close();
  });
  const client = new GatewayClient(`ws://127.0.0.1:${silent.address().port}/ws`, {
    token: mint("u"),
    pingIntervalMs: 200,
    pongTimeoutMs: 200,
    backoff: { initialMs: 50, maxMs: 50 },
  });
  t.after(() => client.close());
  await client.connect();
  const drop = await nextEvent(client, "disconnected");
  assert.deepEqual([drop.code, drop.reason, drop.willReconnect], [1006, "no pong", true]);
  await waitFor(() => client.connections === 2, "a new socket");
});

test("rpc() resolves with the backend's answer; refusals are RequestErrors that say whether to retry", async (t) => {
  const { createServer } = await import("node:http");
  const backend = createServer((req, res) => {
    let raw = "";
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => {
      const body = JSON.parse(raw);
      const reply = (status, answer) => res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(answer));
      if (req.url === "/publish") return reply(200, body.message.content.includes("spam") ? { allow: false, reason: "spam" } : {});
      if (body.method === "fail") return reply(409, { error: "already read", code: "conflict" });
      if (body.method === "down") return reply(503, { error: "maintenance" });
      return reply(200, { data: { echo: body.data, user: body.userId } });
    });
  });
  await new Promise((ok) => backend.listen(0, "127.0.0.1", ok));
  t.after(() => backend.close());
  const base = `http://127.0.0.1:${backend.address().port}`;
  const gw = await startGateway(t, { env: { RPC_HOOK_URL: `${base}/rpc`, PUBLISH_HOOK_URL: `${base}/publish` } });
  const alice = connectAs(t, gw, "alice");
  await alice.connect();
  assert.deepEqual(await alice.rpc("mark.read", { upTo: 7 }), { echo: { upTo: 7 }, user: "alice" });
  await assert.rejects(alice.rpc("fail"), (error) => {
    assert.ok(error instanceof RequestError);
    assert.deepEqual([error.code, error.message, error.retryable], ["rpc_failed", "rpc_failed: already read", false]);
    assert.deepEqual(error.details, { status: 409, code: "conflict" });
    return true;
  });
  await assert.rejects(alice.rpc("down"), (error) => error.code === "unavailable" && error.retryable === true);
  await alice.join("r");
  await assert.rejects(alice.send("r", "buy spam"), (error) => {
    assert.deepEqual([error.code, error.retryable, error.details], ["rejected", false, { reason: "spam" }]);
    return true;
  });
  assert.equal((await alice.send("r", "hello")).roomId, "r");
});
