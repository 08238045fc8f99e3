// Pure logic: backoff, the close-code table, and the client's reaction to closes and refreshes,
// driven through a scripted WebSocket (no network in this file).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff, CLOSE_CODES, GatewayClient, closeAction, tokenSubject } from "../dist/index.js";
import { mint, nextEvent, waitFor } from "./support.mjs";

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

/** A WebSocket that opens on the next turn and records what is sent; the test closes it. */
class ScriptedSocket {
  static made = [];
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  sent = [];
  constructor(url) {
    this.url = new URL(url);
    ScriptedSocket.made.push(this);
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000, reason = "") {
    this.serverClose(code, reason);
  }
  serverClose(code, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  reply(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

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
  client.on("disconnected", (d) => drops.push(d.willReconnect));
  await assert.rejects(client.connect(), (err) => /gave up after 3 attempts/.test(err.message));
  assert.deepEqual(drops, [true, true, true, false]);
  assert.equal(client.connections, 0);
});
