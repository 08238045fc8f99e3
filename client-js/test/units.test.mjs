// Pure logic: backoff, the close-code table, and the client's reaction to closes and refreshes,
// driven through a scripted WebSocket (no network in this file).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff, CLOSE_CODES, GatewayClient, closeAction, tokenSubject } from "../dist/index.js";
import { ScriptedSocket, mint, nextEvent, waitFor } from "./support.mjs";

test("backoff grows, caps and jitters downwards only", () => {
  const high = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 }, () => 0);
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((n) => high.delay(n)), [100, 200, 400, 800, 1000, 1000]);
  const low = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 }, () => 0.999999);
  assert.deepEqual([0, 4].map((n) => low.delay(n)), [50, 500]);
  assert.throws(() => new Backoff({ initialMs: 10, maxMs: 5 }), RangeError);
  assert.throws(() => new Backoff({ jitter: 2 }), RangeError);
});

test("close codes map to retry, refresh then retry, or give up", () => {
  assert.equal(closeAction(1012), "retry");
  assert.equal(closeAction(4008), "retry");
  assert.equal(closeAction(1006), "retry", "a dropped network comes back");
  assert.equal(closeAction(4001), "refresh");
  for (const code of [1002, 1007, 1008, 1009, 4003, 4029]) assert.equal(closeAction(code), "give_up", String(code));
  assert.ok(Object.values(CLOSE_CODES).every((c) => c.reason.length > 0));
});

test("the token's subject is read without verifying", () => {
  assert.equal(tokenSubject(mint("zoë")), "zoë");
  assert.equal(tokenSubject("not-a-token"), undefined);
});

test("4001 with getToken: a new token, then a new socket that joins again with `since`", async (t) => {
  ScriptedSocket.made = [];
  let calls = 0;
  const client = new GatewayClient("ws://gateway.test/ws", {
    getToken: () => mint(`u`, { n: (calls += 1) }),
    WebSocket: ScriptedSocket,
    backoff: { initialMs: 1, maxMs: 5 },
    pingIntervalMs: 0,
  });
  t.after(() => client.close());
  await client.connect();
  const join = client.join("room");
  const first = ScriptedSocket.made[0];
  const sentJoin = first.sent.at(-1);
  first.reply({ type: "room_update", payload: { roomId: "room", action: "joined", offset: 7, epoch: "e1" }, requestId: sentJoin.requestId });
  await join;
  first.reply({ type: "message", payload: { id: "m8", roomId: "room", senderType: "human", senderId: "x", content: "hi", attachments: [], createdAt: "2026-01-01T00:00:00.000Z", offset: 8, epoch: "e1" } });

  const drop = nextEvent(client, "disconnected");
  first.serverClose(4001, "token expired");
  assert.deepEqual(await drop.then((d) => [d.code, d.action, d.willReconnect]), [4001, "refresh", true]);
  await waitFor(() => ScriptedSocket.made.length === 2 && ScriptedSocket.made[1].sent.length === 1, "a new socket with the re-join");
  const second = ScriptedSocket.made[1];
  assert.equal(calls, 2, "a new token for the new socket");
  assert.notEqual(second.url.searchParams.get("token"), first.url.searchParams.get("token"));
  const rejoin = second.sent[0];
  assert.deepEqual(rejoin.payload, { roomId: "room", since: { offset: 8, epoch: "e1" } });

  // A replay that overlaps what was seen is not delivered twice.
  const messages = [];
  client.on("message", (m) => messages.push(m.id));
  second.reply({ type: "room_update", payload: { roomId: "room", action: "joined", offset: 9, epoch: "e1", recovered: true }, requestId: rejoin.requestId });
  for (const [id, offset] of [["m8", 8], ["m9", 9], ["m9", 9]]) {
    second.reply({ type: "message", payload: { id, roomId: "room", senderType: "human", senderId: "x", content: "hi", attachments: [], createdAt: "2026-01-01T00:00:00.000Z", offset, epoch: "e1" } });
  }
  assert.deepEqual(messages, ["m9"]);
});

test("a send in flight when the socket drops goes out again with the same dedupeKey; a ping does not", async (t) => {
  ScriptedSocket.made = [];
  const client = new GatewayClient("ws://gateway.test/ws", { token: mint("u"), WebSocket: ScriptedSocket, backoff: { initialMs: 1, maxMs: 5 }, pingIntervalMs: 0 });
  t.after(() => client.close());
  await client.connect();
  const first = ScriptedSocket.made[0];
  const send = client.send("room", "hello");
  const ping = client.ping();
  const [message] = first.sent;
  first.serverClose(1012, "restart");
  await assert.rejects(ping, { name: "ConnectionLost" });
  await waitFor(() => ScriptedSocket.made.length === 2 && ScriptedSocket.made[1].sent.length === 1, "the resend");
  const again = ScriptedSocket.made[1].sent[0];
  assert.equal(again.type, "message");
  assert.equal(again.payload.dedupeKey, message.payload.dedupeKey);
  ScriptedSocket.made[1].reply({ type: "ack", payload: { id: "m1", roomId: "room", createdAt: "2026-01-01T00:00:00.000Z", dedupeKey: again.payload.dedupeKey }, requestId: again.requestId });
  assert.equal((await send).id, "m1");
});

test("maxAttempts ends the retries with a closed event", async (t) => {
  class Refused {
    readyState = 0;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    constructor() {
      setTimeout(() => this.onerror?.({}), 0); // as Node 20 does: an error, and no close
    }
    send() {}
    close() {}
  }
  const client = new GatewayClient("ws://gateway.test/ws", { token: mint("u"), WebSocket: Refused, backoff: { initialMs: 1, maxMs: 2 }, maxAttempts: 3 });
  t.after(() => client.close());
  const drops = [];
  client.on("disconnected", (d) => drops.push([d.willReconnect, d.attempt]));
  await assert.rejects(client.connect(), (err) => /gave up after 3 attempts/.test(err.message));
  assert.deepEqual(drops, [[true, 1], [true, 2], [true, 3], [false, 3]]);
  assert.equal(client.connections, 0);
});

/** Resolves after every timer due within `ms` has fired: a marker that proves a shorter timer did not. */
const marker = (ms) => new Promise((ok) => setTimeout(ok, ms));

function scripted(t, options = {}) {
  ScriptedSocket.made = [];
  const client = new GatewayClient("ws://gateway.test/ws", {
    token: mint("u"),
    WebSocket: ScriptedSocket,
    backoff: { initialMs: 1, maxMs: 5 },
    pingIntervalMs: 0,
    ...options,
  });
  t.after(() => client.close());
  return client;
}

const joinedReply = (sent, offset, epoch, extra = {}) => ({
  type: "room_update",
  payload: { roomId: sent.payload.roomId, action: "joined", offset, epoch, ...extra },
  requestId: sent.requestId,
});

/** A scripted client in `roomId` at position (offset, epoch), and its socket. */
async function inRoom(t, roomId, offset, epoch) {
  const client = scripted(t);
  await client.connect();
  const ws = ScriptedSocket.made[0];
  const join = client.join(roomId);
  ws.reply(joinedReply(ws.sent[0], offset, epoch));
  await join;
  return { client, ws };
}

const entry = (roomId, id, offset, epoch) => ({
  type: "message",
  payload: { id, roomId, senderType: "human", senderId: "x", content: id, attachments: [], createdAt: "2026-01-01T00:00:00.000Z", offset, epoch },
});

test("close() while getToken is pending stops the client for good", async (t) => {
  ScriptedSocket.made = [];
  let fail;
  let calls = 0;
  const client = new GatewayClient("ws://gateway.test/ws", {
    getToken: () => ((calls += 1) === 1 ? mint("u") : new Promise((_, reject) => (fail = reject))),
    WebSocket: ScriptedSocket,
    backoff: { initialMs: 1, maxMs: 1 },
    pingIntervalMs: 0,
  });
  await client.connect();
  ScriptedSocket.made[0].serverClose(1012);
  await waitFor(() => fail !== undefined, "the second getToken call");
  client.close();
  fail(new Error("token service down"));
  await marker(20);
  assert.equal(client.state, "closed");
  assert.equal(ScriptedSocket.made.length, 1, "no socket after close()");
});

test("a listener that closes on `disconnected` leaves no retry timer behind", async (t) => {
  const client = scripted(t, { backoff: { initialMs: 5, maxMs: 5, jitter: 0 } });
  await client.connect();
  client.on("disconnected", () => client.close());
  ScriptedSocket.made[0].serverClose(1012);
  await marker(30);
  assert.equal(ScriptedSocket.made.length, 1);
  assert.equal(client.state, "closed");
});

test("a room left while disconnected is not joined by the next socket", async (t) => {
  const client = scripted(t);
  await client.connect();
  const first = ScriptedSocket.made[0];
  first.serverClose(1012);
  const join = assert.rejects(client.join("secret"), /left secret before the join was answered/); // buffered
  const left = await client.leave("secret");
  assert.equal(left.action, "left");
  await join;
  await waitFor(() => client.state === "open", "the next socket");
  assert.deepEqual(ScriptedSocket.made[1].sent, [], "nothing about the room went out");
  assert.deepEqual(client.roomIds, []);
});

test("a join in flight at a drop, then a leave, is not sent again", async (t) => {
  const client = scripted(t);
  await client.connect();
  const join = assert.rejects(client.join("secret"), /left secret/);
  assert.equal(ScriptedSocket.made[0].sent[0].type, "join");
  ScriptedSocket.made[0].serverClose(1012);
  await client.leave("secret");
  await waitFor(() => client.state === "open", "the next socket");
  await join;
  assert.deepEqual(ScriptedSocket.made[1].sent, []);
});

test("a join and a leave both in flight at a drop: neither goes out again", async (t) => {
  const client = scripted(t);
  await client.connect();
  const first = ScriptedSocket.made[0];
  const join = assert.rejects(client.join("secret"), /left secret/);
  const leave = client.leave("secret");
  assert.deepEqual(first.sent.map((f) => f.type), ["join", "leave"]);
  first.serverClose(1012);
  await join;
  assert.equal((await leave).action, "left");
  await waitFor(() => client.state === "open", "the next socket");
  assert.deepEqual(ScriptedSocket.made[1].sent, []);
});

test("an entry that skips an offset, or a new epoch, is reported as a loss", async (t) => {
  const { client, ws } = await inRoom(t, "r", 5, "e1");
  const recoveries = [];
  client.on("recovery", (r) => recoveries.push(r));
  ws.reply(entry("r", "m6", 6, "e1"));
  ws.reply(entry("r", "m9", 9, "e1"));
  ws.reply(entry("r", "n1", 1, "e2"));
  assert.deepEqual(recoveries, [
    { roomId: "r", recovered: false, offset: 8, epoch: "e1" },
    { roomId: "r", recovered: false, offset: 0, epoch: "e2" },
  ]);
  assert.deepEqual(client.position("r"), { offset: 1, epoch: "e2" });
});

test("a join asked while disconnected carries `since` for a room already seen", async (t) => {
  const { client, ws } = await inRoom(t, "r", 5, "e1");
  ws.serverClose(1012);
  const again = client.join("r"); // the application asks again while offline
  await waitFor(() => ScriptedSocket.made.length === 2 && ScriptedSocket.made[1].sent.length === 1, "the re-join");
  const sent = ScriptedSocket.made[1].sent[0];
  assert.deepEqual(sent.payload, { roomId: "r", since: { offset: 5, epoch: "e1" } });
  ScriptedSocket.made[1].reply(joinedReply(sent, 5, "e1", { recovered: true }));
  assert.equal((await again).recovered, true);
});

test("a closed client does not connect again", async (t) => {
  const client = scripted(t);
  client.close();
  await assert.rejects(client.connect(), { name: "ClientClosed" });
  assert.equal(ScriptedSocket.made.length, 0);
});

test("an expired fixed token is not tried: it would be refused every time", async (t) => {
  const client = scripted(t, { token: mint("u", { iat: Math.floor(Date.now() / 1000) - 100, ttl: 10 }) });
  await assert.rejects(client.connect(), (err) => err.code === 4001);
  assert.equal(ScriptedSocket.made.length, 0);
  await assert.rejects(client.leave("r"), { name: "ClientClosed" });
});

test("a refused repeat join keeps the room; a refused first join drops it", async (t) => {
  const { client, ws } = await inRoom(t, "r", 0, "e1");
  const refuse = (sent, code) => ws.reply({ type: "error", payload: { code, message: code, roomId: sent.payload.roomId }, requestId: sent.requestId });
  const repeat = client.join("r");
  refuse(ws.sent[1], "rate_limited");
  await assert.rejects(repeat, { code: "rate_limited" });
  const other = client.join("closed-room");
  refuse(ws.sent[2], "forbidden_room");
  await assert.rejects(other, { code: "forbidden_room" });
  assert.deepEqual(client.roomIds, ["r"]);
});

test("messages refused as unavailable go out again, in their order, with their dedupeKeys", async (t) => {
  ScriptedSocket.made = [];
  const client = new GatewayClient("ws://gateway.test/ws", { token: mint("u"), WebSocket: ScriptedSocket, backoff: { initialMs: 1, maxMs: 5 }, pingIntervalMs: 0 });
  t.after(() => client.close());
  await client.connect();
  const ws = ScriptedSocket.made[0];
  const sends = [client.send("room", "one"), client.send("room", "two")];
  const [one, two] = ws.sent;
  for (const sent of [one, two]) {
    ws.reply({ type: "error", payload: { code: "unavailable", message: "not stored", roomId: "room", dedupeKey: sent.payload.dedupeKey }, requestId: sent.requestId });
  }
  await waitFor(() => ws.sent.length === 4, "both sent again");
  assert.deepEqual(ws.sent.slice(2).map((f) => [f.payload.content, f.payload.dedupeKey]), [["one", one.payload.dedupeKey], ["two", two.payload.dedupeKey]]);
  for (const [i, sent] of ws.sent.slice(2).entries()) {
    ws.reply({ type: "ack", payload: { id: `m${i}`, roomId: "room", createdAt: "2026-01-01T00:00:00.000Z", dedupeKey: sent.payload.dedupeKey }, requestId: sent.requestId });
  }
  assert.deepEqual((await Promise.all(sends)).map((a) => a.id), ["m0", "m1"]);
  const refused = client.send("room", "three");
  ws.reply({ type: "error", payload: { code: "ingest_failed", message: "no", roomId: "room" }, requestId: ws.sent[4].requestId });
  await assert.rejects(refused, { code: "ingest_failed" }, "any other refusal is the caller's to handle");
});

test("a Node.js without a WebSocket and without the ws package: one clear error, or the HTTP transport", async (t) => {
  if (globalThis.WebSocket !== undefined) return t.skip("this Node.js has a global WebSocket");
  // A copy of the build where `ws` cannot be resolved (no node_modules above a temp folder).
  const { mkdtemp, cp, rm } = await import("node:fs/promises");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const dir = await mkdtemp(join(tmpdir(), "rtg-client-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await cp(new URL("../dist/", import.meta.url), dir, { recursive: true });
  const copy = await import(join(dir, "index.js"));
  const client = new copy.GatewayClient("ws://127.0.0.1:9/ws", { token: mint("u"), transports: ["websocket"] });
  await assert.rejects(client.connect(), (error) => error.name === "ClientClosed" && /npm install ws/.test(error.message));
  // With the HTTP transport allowed (the default), it is used at once (nothing listens on port 9).
  const streamed = new copy.GatewayClient("ws://127.0.0.1:9/ws", { token: mint("u"), maxAttempts: 1 });
  await assert.rejects(streamed.connect(), (error) => error.name === "ClientClosed" && /gave up/.test(error.message));
  assert.equal(streamed.transport, "sse");
});
