// Test support: real gateways (`python server.py`) and a real Redis, started by the tests.
//
// The gateway runs from the repository this package lives in, with the Python of its .venv
// (RTG_PYTHON overrides). Redis: the one `make test` started (RTG_TEST_REDIS_PORT), else a
// redis-server started here; without either, the Redis tests are skipped, or fail when
// RTG_REQUIRE_SERVICES=1 (as in `make test`).
import { spawn, spawnSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const SECRET = "client-js-tests-secret-0123456789abcdef0123456789";
const PYTHON = process.env.RTG_PYTHON ?? (existsSync(join(ROOT, ".venv/bin/python")) ? join(ROOT, ".venv/bin/python") : "python3");
export const WAIT_MS = 15_000;

const b64url = (value) => Buffer.from(value).toString("base64url");

/** An HS256 JWT for `sub`, valid `ttl` seconds. */
export function mint(sub, { ttl = 3600, secret = SECRET, iat = Math.floor(Date.now() / 1000), ...claims } = {}) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, iat, exp: iat + ttl, ...claims }));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

export function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/** Starts a gateway; resolves once it logged `listening`. `t.after` stops it. */
export async function startGateway(t, { port = 0, args = [], env = {} } = {}) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(JWT_|REDIS_|KAFKA_)/.test(k)));
  const child = spawn(
    PYTHON,
    ["server.py", "--port", String(port), "--host", "127.0.0.1", "--drain-delay", "0", "--drain-window", "0", ...args],
    { cwd: ROOT, env: { ...clean, PYTHONUNBUFFERED: "1", JWT_SECRET: SECRET, ...env }, stdio: ["ignore", "ignore", "pipe"] },
  );
  const lines = [];
  const exited = new Promise((ok) => child.once("exit", (code) => ok(code)));
  const listening = new Promise((ok, fail) => {
    let rest = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      rest += chunk;
      const parts = rest.split("\n");
      rest = parts.pop();
      for (const line of parts) {
        lines.push(line);
        if (line.includes('"listening"')) ok(JSON.parse(line).port);
      }
    });
    exited.then((code) => fail(new Error(`gateway exited (${code}):\n${lines.slice(-20).join("\n")}`)));
    setTimeout(() => fail(new Error(`gateway did not start:\n${lines.slice(-20).join("\n")}`)), WAIT_MS);
  });
  t.after(() => child.kill("SIGKILL"));
  const bound = await listening;
  return {
    port: bound,
    url: `ws://127.0.0.1:${bound}/ws`,
    http: `http://127.0.0.1:${bound}`,
    /** SIGTERM (drain: sockets closed with 1012); resolves with the exit code. */
    stop() {
      child.kill("SIGTERM");
      return exited;
    },
  };
}

let redis;

/** {port, prefix} of a Redis for one test, or null (the test is skipped, or fails under `make test`). */
export async function redisFor(t) {
  if (redis === undefined) redis = await findRedis();
  if (redis === null) {
    if (process.env.RTG_REQUIRE_SERVICES === "1") throw new Error("no Redis: set RTG_TEST_REDIS_PORT (make test does)");
    t.skip("no Redis: set RTG_TEST_REDIS_PORT or put redis-server on PATH");
    return null;
  }
  return { port: redis, prefix: `js${randomBytes(5).toString("hex")}:` };
}

async function findRedis() {
  if (process.env.RTG_TEST_REDIS_PORT) return Number(process.env.RTG_TEST_REDIS_PORT);
  if (spawnSync("redis-server", ["--version"]).status !== 0) return null;
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "rtg-js-redis-"));
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], { stdio: "ignore" });
  child.unref(); // the test process ends when its tests do; the exit hook stops the server
  process.on("exit", () => {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });
  await waitFor(() => spawnSync("redis-cli", ["-p", String(port), "ping"]).stdout?.toString().trim() === "PONG", "redis-server to answer");
  return port;
}

/** Polls `check` until it is truthy, or fails after `ms`. */
export async function waitFor(check, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 20));
  }
}

/** Resolves with the next `type` event of `client` that passes `test`, or fails after `ms`. */
export function nextEvent(client, type, test = () => true, ms = WAIT_MS) {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => {
      off();
      fail(new Error(`no ${type} event within ${ms} ms`));
    }, ms);
    const off = client.on(type, (event) => {
      if (!test(event)) return;
      clearTimeout(timer);
      off();
      ok(event);
    });
  });
}

/** Every `type` event of `client` from now on. */
export function record(client, type) {
  const seen = [];
  client.on(type, (event) => seen.push(event));
  return seen;
}

/** A WebSocket that opens on the next turn and records what is sent; the test plays the server
 * (`reply`, `serverClose`). No network: for the client's logic (units.test.mjs, conformance.test.mjs). */
export class ScriptedSocket {
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
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }
  send(data) {
    // As a browser's: sending before the open throws, after the close is dropped.
    if (this.readyState === 0) throw new Error("InvalidStateError: still connecting");
    if (this.readyState === 1) this.sent.push(JSON.parse(data));
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

/** nginx from Debian in front of `gw`, passing no WebSocket upgrades (scripts/nginx.sh); `t.after`
 * stops it. Without nginx the test is skipped, or fails under `make test` (which installs it). */
export function proxyWithoutUpgrades(t, gw) {
  const script = join(ROOT, "scripts", "nginx.sh");
  const nginx = process.env.RTG_NGINX ?? "/usr/sbin/nginx";
  if (!existsSync(nginx)) {
    if (process.env.RTG_REQUIRE_SERVICES === "1") throw new Error(`no nginx at ${nginx}: scripts/nginx.sh ensure`);
    t.skip("no nginx: scripts/nginx.sh ensure installs it");
    return null;
  }
  const dir = mkdtempSync(join(tmpdir(), "rtg-js-nginx-"));
  const started = spawnSync(script, ["start", dir, String(gw.port)], { encoding: "utf8" });
  if (started.status !== 0) throw new Error(`nginx did not start: ${started.stderr}`);
  t.after(() => {
    spawnSync(script, ["stop", dir]);
    rmSync(dir, { recursive: true, force: true });
  });
  const port = Number(started.stdout.trim().split("\n").pop());
  return { port, url: `ws://127.0.0.1:${port}/ws`, http: `http://127.0.0.1:${port}` };
}

/** The control API's disconnect of `userId` (the gateway started with API_KEY=js-test-key): 4003. */
export async function disconnectUser(gw, userId, reason = "banned") {
  const response = await fetch(`${gw.http}/api/disconnect`, {
    method: "POST",
    headers: { Authorization: "apikey js-test-key", "Content-Type": "application/json" },
    body: JSON.stringify({ userId, reason }),
  });
  return response.status;
}
