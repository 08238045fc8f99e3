// What the JavaScript client (client-js) costs on the receiving side, next to a bare WebSocket
// that only parses each frame: CPU time of this Node process per received message, in alternating
// runs against one gateway (memory mode) fed by a publisher in its own process.
//
//     node --experimental-websocket bench/client_js.mjs [--messages 20000] [--runs 3]
//
// Needs the gateway's .venv and a built client (scripts/node.sh ensure). Prints one JSON object.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";

import { GatewayClient } from "../client-js/dist/index.js";
import { mint, startGateway } from "../client-js/test/support.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({ options: { messages: { type: "string", default: "20000" }, runs: { type: "string", default: "3" }, publish: { type: "string" } } });
const MESSAGES = Number(values.messages);
const ROOM = "bench";

if (values.publish) {
  // The publisher: acks pace it, 64 messages in flight.
  const ws = new WebSocket(`${values.publish}?token=${mint("publisher")}`);
  let sent = 0;
  let acked = 0;
  const next = () => {
    while (sent < MESSAGES && sent - acked < 64) {
      sent += 1;
      ws.send(JSON.stringify({ type: "message", payload: { roomId: ROOM, content: `m${sent}`.padEnd(128, ".") } }));
    }
    if (acked === MESSAGES) ws.close();
  };
  ws.onopen = () => ws.send(JSON.stringify({ type: "join", payload: { roomId: ROOM }, requestId: "j" }));
  ws.onmessage = (ev) => {
    const frame = JSON.parse(ev.data);
    if (frame.requestId === "j") next();
    else if (frame.type === "ack") {
      acked += 1;
      next();
    }
  };
} else {
  await main();
}

async function receiveWith(mode, url) {
  let got = 0;
  let started;
  let done;
  const finished = new Promise((ok) => (done = ok));
  const onMessage = () => {
    got += 1;
    if (got === 1) started = process.cpuUsage();
    if (got === MESSAGES) done(process.cpuUsage(started));
  };
  let stop;
  if (mode === "client") {
    const client = new GatewayClient(url, { token: mint(`reader-${mode}`), pingIntervalMs: 0 });
    client.on("message", onMessage);
    await client.connect();
    await client.join(ROOM);
    stop = () => client.close();
  } else {
    const ws = new WebSocket(`${url}?token=${mint(`reader-${mode}`)}`);
    await new Promise((ok) => {
      ws.onmessage = (ev) => {
        const frame = JSON.parse(ev.data);
        if (frame.type === "message") onMessage(frame.payload);
        else if (frame.requestId === "j") ok();
      };
      ws.onopen = () => ws.send(JSON.stringify({ type: "join", payload: { roomId: ROOM }, requestId: "j" }));
    });
    stop = () => ws.close();
  }
  const publisher = spawn(process.execPath, ["--experimental-websocket", fileURLToPath(import.meta.url), "--publish", url, "--messages", String(MESSAGES)], { stdio: "inherit", cwd: ROOT });
  const cpu = await finished;
  stop();
  await new Promise((ok) => publisher.once("exit", ok));
  return (cpu.user + cpu.system) / (MESSAGES - 1);
}

async function main() {
  const cleanups = [];
  const t = { after: (fn) => cleanups.push(fn) };
  const gw = await startGateway(t, { args: ["--rate-limit", "100000", "--rate-burst", "100000"] });
  const results = { bare: [], client: [] };
  for (let run = 0; run < Number(values.runs); run += 1) {
    for (const mode of ["bare", "client"]) results[mode].push(await receiveWith(mode, gw.url));
  }
  for (const fn of cleanups) fn();
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const bare = median(results.bare);
  const client = median(results.client);
  console.log(JSON.stringify({
    messages: MESSAGES,
    node: process.version,
    cpu_us_per_message: { bare: Number(bare.toFixed(2)), client: Number(client.toFixed(2)) },
    ratio_client_to_bare: Number((client / bare).toFixed(2)),
    runs: results,
  }, null, 2));
}
