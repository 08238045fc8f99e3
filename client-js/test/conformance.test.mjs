// The JavaScript client against the language-neutral cases of tests/conformance/client.json, through a
// scripted socket (the Python SDK runs the same file: tests/test_client_conformance.py). Pure client
// logic: no gateway, no network.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { GatewayClient, SERVER_TYPES } from "../dist/index.js";
import { ScriptedSocket } from "./support.mjs";

const CASES = JSON.parse(readFileSync(new URL("../../tests/conformance/client.json", import.meta.url), "utf8")).cases;
const DEADLINE_MS = 5000;
// The client's own events besides one per server frame; `frame`, `connecting` and `closed` have no
// Python counterpart (closed: the Python event stream ends) and are not compared.
const OWN_EVENTS = ["connected", "disconnected", "recovery", "members_changed", "refresh_failed"];

const turn = () => new Promise((resolve) => setImmediate(resolve));
async function drain() {
  for (let i = 0; i < 20; i += 1) await turn();
}
async function until(condition, what) {
  const deadline = Date.now() + DEADLINE_MS;
  while (!condition()) {
    if (Date.now() > deadline) throw new assert.AssertionError({ message: `timed out waiting for ${what}` });
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  await drain();
}

class Runner {
  events = [];
  seenEvents = 0;
  seenSent = new Map();
  bound = new Map();
  calls = new Map();
  tokens = 0;

  constructor() {
    ScriptedSocket.made = [];
    this.client = new GatewayClient("ws://gateway.test/ws", {
      getToken: () => `token-${(this.tokens += 1)}`,
      WebSocket: ScriptedSocket,
      backoff: { initialMs: 1, maxMs: 5, jitter: 0 },
      pingIntervalMs: 0,
    });
    for (const name of [...SERVER_TYPES, ...OWN_EVENTS]) {
      this.client.on(name, (payload) => this.events.push({ name, payload }));
    }
  }

  get sockets() {
    return ScriptedSocket.made;
  }

  match(expected, actual, where) {
    if (typeof expected === "string" && expected.startsWith("$")) {
      if (!this.bound.has(expected)) this.bound.set(expected, actual);
      assert.equal(actual, this.bound.get(expected), `${where}: ${expected}`);
    } else if (expected !== null && typeof expected === "object" && !Array.isArray(expected)) {
      assert.ok(actual !== null && typeof actual === "object", `${where}: expected an object, got ${JSON.stringify(actual)}`);
      for (const [key, value] of Object.entries(expected)) {
        assert.ok(key in actual, `${where}: no ${key} in ${JSON.stringify(actual)}`);
        this.match(value, actual[key], `${where}.${key}`);
      }
    } else {
      assert.deepEqual(actual, expected, `${where}`);
    }
  }

  async step(step) {
    const client = this.client;
    if ("do" in step) {
      if (step.do === "connect") {
        await client.connect();
      } else {
        const work =
          step.do === "join"
            ? client.join(step.room)
            : step.do === "leave"
              ? client.leave(step.room)
              : client.send(step.room, step.content, { dedupeKey: step.dedupeKey });
        work.catch(() => {}); // asserted by a `resolved` step, if any
        this.calls.set(step.as, work);
      }
      await drain();
    } else if ("server" in step) {
      const frame = structuredClone(step.server);
      if (typeof frame.requestId === "string" && frame.requestId.startsWith("$")) {
        assert.ok(this.bound.has(frame.requestId), `${frame.requestId} is not bound yet`);
        frame.requestId = this.bound.get(frame.requestId);
      }
      this.sockets.at(-1).reply(frame);
      await drain();
    } else if ("close" in step) {
      this.sockets.at(-1).serverClose(step.close.code, step.close.reason);
      await drain();
    } else if ("sockets" in step) {
      await until(() => this.sockets.length >= step.sockets, `socket ${step.sockets}`);
      assert.equal(this.sockets.length, step.sockets);
    } else if ("sent" in step) {
      const index = this.sockets.length - 1;
      const socket = this.sockets[index];
      const start = this.seenSent.get(index) ?? 0;
      await until(() => socket.sent.length >= start + step.sent.length, `${step.sent.length} sent`);
      const got = socket.sent.slice(start);
      assert.equal(got.length, step.sent.length, `sent ${JSON.stringify(got)}`);
      step.sent.forEach((want, n) => this.match(want, got[n], `sent[${n}]`));
      this.seenSent.set(index, start + got.length);
    } else if ("events" in step) {
      const start = this.seenEvents;
      await until(() => this.events.length >= start + step.events.length, `${step.events.length} events`);
      const got = this.events.slice(start);
      assert.deepEqual(got.map((e) => e.name), step.events.map((e) => e.event));
      step.events.forEach((want, n) => {
        for (const [key, value] of Object.entries(want)) {
          if (key !== "event") this.match(value, got[n].payload[key], `events[${n}].${key}`);
        }
      });
      this.seenEvents = start + got.length;
    } else if ("resolved" in step) {
      const value = await Promise.race([
        this.calls.get(step.resolved),
        new Promise((_, reject) => setTimeout(() => reject(new Error(`${step.resolved} did not resolve`)), DEADLINE_MS)),
      ]);
      this.match(step.value, value, step.resolved);
    } else if ("members" in step) {
      const { room, users, count } = step.members;
      assert.deepEqual([client.members(room).map((m) => m.userId).sort(), client.memberCount(room)], [users, count]);
    } else if ("position" in step) {
      const { room, offset, epoch } = step.position;
      assert.deepEqual(client.position(room), { offset, epoch });
    } else if ("state" in step) {
      await until(() => client.state === step.state, `state ${step.state}`);
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }
}

for (const c of CASES) {
  test(`conformance: ${c.name}`, async (t) => {
    const runner = new Runner();
    t.after(() => runner.client.close());
    for (const [n, step] of c.steps.entries()) {
      try {
        await runner.step(step);
      } catch (error) {
        error.message = `step ${n} ${JSON.stringify(step).slice(0, 160)}: ${error.message}`;
        throw error;
      }
    }
    await drain();
    const unchecked = runner.sockets.map((s, i) => s.sent.slice(runner.seenSent.get(i) ?? 0)).filter((x) => x.length);
    assert.deepEqual(unchecked, [], "frames sent but never checked");
    assert.deepEqual(runner.events.slice(runner.seenEvents).map((e) => e.name), [], "events never checked");
  });
}
