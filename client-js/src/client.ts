/**
 * GatewayClient: one logical connection to a Realtime Gateway that survives drops (docs/client.md).
 *
 *     const client = new GatewayClient("wss://chat.example.com/ws", { getToken: fetchToken });
 *     client.on("message", (m) => console.log(m.senderId, m.content));
 *     await client.connect();
 *     await client.join("general");
 *     await client.send("general", "hello");
 *
 * What it does so that an application does not have to:
 * - replies are matched to requests by `requestId`: each request is a promise of its reply frame,
 *   rejected with RequestError when the gateway answers `error`;
 * - a dropped socket is reopened with exponential backoff and jitter; every room is joined again
 *   with `since` set to the last entry seen, so the gateway replays what was missed, and a
 *   `recovery` event says whether it could (`recovered: false`: fetch the gap elsewhere);
 * - sends made while disconnected wait in a bounded buffer (BufferFull past `maxBuffered`); every
 *   send carries a dedupeKey, and one that was in flight when the socket dropped, or that the
 *   gateway refused as `unavailable` (Redis could not store it), is sent again with the same key,
 *   so the gateway acks and delivers it once;
 * - `token_expiring` asks `getToken` for a new token and hands it over in band (`refresh`);
 * - close codes are honoured (protocol.ts): retry, get a new token then retry, or give up;
 * - where WebSockets do not get through (a proxy that refuses the upgrade), the same protocol over
 *   the gateway's HTTP transport (sse.ts): after two WebSocket opens in a row that failed or did not
 *   open within `openTimeoutMs`. A gateway that was only down meanwhile looks the same, so while on
 *   the stream a WebSocket is tried in the background (after `upgradeAfterMs`, doubling) and the
 *   client moves back to one once it opens; after a stream ends, the next attempt tries it first.
 *
 * Limits: one client is one connection; events are delivered synchronously to listeners, in order.
 */

import { Backoff, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { BufferFull, ClientClosed, ClientError, ConnectionLost, RequestError, RequestTimeout } from "./errors.js";
import type {
  Ack,
  Attachment,
  ErrorPayload,
  Frame,
  History,
  Member,
  Position,
  Presence,
  PresenceCount,
  PresenceState,
  PresenceStatus,
  Refreshed,
  RpcResult,
  RoomUpdate,
  ServerPayloads,
} from "./frames.js";
import { type MembersChanged, Roster } from "./members.js";
import { type CloseAction, closeAction, CLOSE_CODES, SERVER_TYPES } from "./protocol.js";
import { type FetchLike, SseSocket } from "./sse.js";

/** The part of the standard WebSocket the client uses, so a browser's, Node's (22+) or the `ws`
 * package's all fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // Handler parameters are `any` so that the DOM's own WebSocket (whose handlers take Event,
  // MessageEvent, CloseEvent) is assignable; the client reads only `data`, `code` and `reason`.
  /* eslint-disable @typescript-eslint/no-explicit-any */
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What carries the frames: a WebSocket, or the gateway's HTTP transport (Server-Sent Events and POST). */
export type Transport = "websocket" | "sse";

export type TokenProvider = () => string | Promise<string>;

/** Where tokens come from: exactly one of `token` and `getToken`. */
export type TokenOptions =
  | {
      /** A fixed token. With it, an expired token (4001) is final: prefer `getToken`. */
      token: string;
      getToken?: undefined;
    }
  | {
      /** Called before every connection attempt and on `token_expiring`; may fetch a fresh token. */
      getToken: TokenProvider;
      token?: undefined;
    };

export type ClientOptions = TokenOptions & {
  /** The WebSocket class (default: the global one). */
  WebSocket?: WebSocketConstructor | undefined;
  backoff?: BackoffOptions | undefined;
  /** Reconnect attempts in a row before giving up (default: never give up). */
  maxAttempts?: number | undefined;
  /** How long a request waits for its reply, in ms (default 30000). */
  timeoutMs?: number | undefined;
  /** Requests held while disconnected, at most (default 100); more reject with BufferFull. */
  maxBuffered?: number | undefined;
  /** An application ping every this many ms (default 25000; 0: never). */
  pingIntervalMs?: number | undefined;
  /** No frame at all within this long after a ping: the socket is dead, replace it (default 10000). */
  pongTimeoutMs?: number | undefined;
  /** A connection that lasted this long resets the backoff (default 5000). */
  stableAfterMs?: number | undefined;
  /** The transports it may use (default ["websocket", "sse"]): a WebSocket first, the HTTP transport
   * after two WebSocket opens in a row failed. One of them alone: only that one. */
  transports?: Transport[] | undefined;
  /** With both transports: an open (the WebSocket's, or the stream's first event) that takes longer
   * has failed (default 5000). */
  openTimeoutMs?: number | undefined;
  /** On the HTTP transport after WebSockets failed: a WebSocket is tried in the background after
   * this long, then twice as long each time up to 10 minutes, and the client moves to it once one
   * opens (default 30000). */
  upgradeAfterMs?: number | undefined;
  /** fetch for the HTTP transport (default: the global one). */
  fetch?: FetchLike | undefined;
};

/** Per request: how long to wait for the reply (default: the client's `timeoutMs`). */
export interface RequestOptions {
  timeoutMs?: number | undefined;
}

export type ClientState = "idle" | "connecting" | "open" | "waiting" | "closed";

export interface Disconnected {
  /** The close code (1006 when the connection dropped or the upgrade was refused). */
  code: number;
  reason: string;
  action: CloseAction;
  willReconnect: boolean;
  /** Attempts in a row since the last open, this one included when reconnecting. */
  attempt: number;
  /** When reconnecting: the wait before the next attempt. */
  delayMs?: number;
}

export interface Recovery {
  roomId: string;
  /** false: entries after the last one seen are lost to this socket; the position is the room's now. */
  recovered: boolean;
  offset?: number;
  epoch?: string;
}

/** Every event: one per server frame type (its payload), and the client's own. */
export interface ClientEvents extends ServerPayloads {
  /** Every server frame as received (with its requestId), before its typed event. */
  frame: Frame;
  connecting: { attempt: number };
  /** Open, with every room joined again (`reconnected`: not the first connection). */
  connected: { reconnected: boolean; rooms: string[]; transport: Transport };
  disconnected: Disconnected;
  /** A re-join with `since` was answered, or an entry revealed a gap (recovered: false). */
  recovery: Recovery;
  /** A room's list of online members changed (members(), memberCount()): after the frame that did it. */
  members_changed: MembersChanged;
  /** getToken failed, or the gateway refused the new token; the old one stands until its expiry. */
  refresh_failed: { error: unknown };
  /** The client stopped for good: close() was called or a close code said to give up. */
  closed: { code?: number; reason: string };
}

export interface SendOptions extends RequestOptions {
  attachments?: Attachment[] | undefined;
  /** Default: a new random key. Reuse a key to retry a send safely. */
  dedupeKey?: string | undefined;
}

type ReplyType = "room_update" | "ack" | "pong" | "history" | "presence_state" | "refreshed" | "rpc_result";

const REPLIES: Record<string, ReplyType> = {
  join: "room_update",
  leave: "room_update",
  message: "ack",
  ping: "pong",
  history: "history",
  presence_query: "presence_state",
  refresh: "refreshed",
  rpc: "rpc_result",
};

// Sent again on the next socket when the reply did not come: these are safe to repeat.
const RESENT = new Set(["join", "leave", "message"]);
// Re-joins after a reconnect: a join with `since` costs two frames of the gateway's rate limit (20/s,
// burst 40 by default), and a burst of refusals closes the socket (1008). So the first REJOIN_BURST
// go at once, then REJOIN_PER_SECOND a second; one refused as rate_limited anyway is asked again.
const REJOIN_BURST = 16;
const REJOIN_PER_SECOND = 8;
const REJOIN_ROUNDS = 10;
// Refusals that say "later", not "no": a re-join refused so is asked again in the next round.
const RETRIED: ReadonlySet<string> = new Set(["rate_limited", "unavailable"]);
// A message refused as `unavailable` (Redis could not store it; nobody got it) is sent again with
// its dedupeKey after about this long, until acked or its timeout passes (docs/protocol.md).
const UNAVAILABLE_RETRY_MS = 1000;
// The longest wait between two background WebSocket tries while on the HTTP transport.
const UPGRADE_MAX_MS = 10 * 60_000;
const OPEN = 1;

interface Pending {
  id: string;
  type: string;
  frame: Frame<Record<string, unknown>>;
  roomId: string | undefined;
  sentOn: WebSocketLike | null;
  reply: Promise<unknown>;
  resolve: (value: never) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

export class GatewayClient extends Emitter<ClientEvents> {
  readonly url: string;
  /** The token's subject (`sub`, else `userId`), read without verifying, once a token is known. */
  userId: string | undefined;
  /** Sockets opened so far (0: the gateway was never reached, or refused every attempt). */
  connections = 0;

  private readonly options: {
    timeoutMs: number;
    maxBuffered: number;
    pingIntervalMs: number;
    pongTimeoutMs: number;
    stableAfterMs: number;
    openTimeoutMs: number;
    upgradeAfterMs: number;
  };
  private readonly transports: Transport[];
  private readonly fetcher: FetchLike | undefined;
  private wsFailures = 0; // WebSocket opens in a row that failed: two, and the HTTP transport is used
  private using: Transport = "websocket";
  private openTimer: ReturnType<typeof setTimeout> | undefined;
  private upgradeTimer: ReturnType<typeof setTimeout> | undefined;
  private upgradeDelay = 0; // the next background WebSocket try, while on the HTTP transport
  private readonly maxAttempts: number;
  private readonly backoff: Backoff;
  private WebSocketClass: WebSocketConstructor | null;
  private readonly tokenSource: string | TokenProvider;
  private current: ClientState = "idle";
  private ws: WebSocketLike | null = null;
  private openedAt = 0; // when this.ws opened (0: not yet)
  private ready = false;
  private readonly rooms = new Map<string, Position | null>();
  private readonly roster = new Roster(); // who is online in each room (members.ts)
  private readonly pending = new Map<string, Pending>();
  private refused: Pending[] = [];
  private refusedTimer: ReturnType<typeof setTimeout> | null = null;
  private attempt = 0;
  private tries = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshing = false;
  private seq = 0;
  private readonly prefix = randomHex(6);
  private started: Promise<void> | null = null;
  private settleStart: { resolve: () => void; reject: (error: Error) => void } | null = null;

  constructor(url: string, options: ClientOptions) {
    super();
    if ((options.token === undefined) === (options.getToken === undefined)) {
      throw new TypeError("pass a token or getToken (one of them)");
    }
    this.transports = options.transports ?? ["websocket", "sse"];
    if (this.transports.length === 0 || this.transports.some((t) => t !== "websocket" && t !== "sse")) {
      throw new TypeError('transports: "websocket", "sse" or both');
    }
    this.fetcher = options.fetch;
    const WebSocketClass = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WebSocketClass === undefined && !isNode() && !this.transports.includes("sse")) {
      throw new TypeError("no WebSocket here: pass options.WebSocket");
    }
    this.url = url;
    this.WebSocketClass = WebSocketClass ?? null; // Node 20: the `ws` package, loaded at connect()
    this.tokenSource = options.token ?? (options.getToken as TokenProvider);
    this.backoff = new Backoff(options.backoff);
    this.maxAttempts = options.maxAttempts ?? Infinity;
    this.options = {
      timeoutMs: options.timeoutMs ?? 30_000,
      maxBuffered: options.maxBuffered ?? 100,
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      stableAfterMs: options.stableAfterMs ?? 5_000,
      openTimeoutMs: options.openTimeoutMs ?? 5_000,
      upgradeAfterMs: options.upgradeAfterMs ?? 30_000,
    };
    this.upgradeDelay = this.options.upgradeAfterMs;
  }

  // -- lifecycle ---------------------------------------------------------------------------

  /** "open" once a socket is up and every room joined again; "waiting" between attempts. */
  get state(): ClientState {
    return this.current;
  }

  /** What carries the frames now (or will, for the attempt under way). */
  get transport(): Transport {
    return this.using;
  }

  /** Rooms this client is in, or will be in again after a reconnect. */
  get roomIds(): string[] {
    return [...this.rooms.keys()];
  }

  /** Who is online in `roomId`, as last told (in a room of more than a page: the first page and who
   * announced themselves since; page through the rest with presenceQuery). */
  members(roomId: string): Member[] {
    return this.roster.members(roomId);
  }

  /** How many users are online in `roomId` on every instance, as last told. */
  memberCount(roomId: string): number {
    return this.roster.count(roomId);
  }

  /** The last history entry seen in `roomId` (what a re-join asks to follow), if any. */
  position(roomId: string): Position | undefined {
    return this.rooms.get(roomId) ?? undefined;
  }

  /** Opens the connection; resolves once it is open, rejects with ClientClosed if the client gives
   * up before that. Drops after it are retried in the background (watch `disconnected`). */
  connect(): Promise<void> {
    if (this.started !== null) return this.started;
    if (this.current === "closed") return Promise.reject(new ClientClosed("client closed"));
    this.started = new Promise<void>((resolve, reject) => {
      this.settleStart = { resolve, reject };
    });
    void this.open();
    return this.started;
  }

  /** Closes the socket (1000) and stops; pending requests reject with ClientClosed. */
  close(): void {
    if (this.current === "closed") return;
    const ws = this.ws;
    this.finish(new ClientClosed("client closed", 1000));
    ws?.close(1000, "client closed");
  }

  // -- requests ------------------------------------------------------------------------------

  /** Joins `roomId`; it is joined again after every reconnect until leave(). */
  async join(roomId: string, options: RequestOptions = {}): Promise<RoomUpdate> {
    const added = !this.rooms.has(roomId);
    if (added) this.rooms.set(roomId, null);
    try {
      return await this.request<RoomUpdate>("join", { roomId }, options.timeoutMs);
    } catch (err) {
      // Refused: not a room to join again. (A refused repeat, say rate_limited, keeps the room.)
      if (err instanceof RequestError && added) this.rooms.delete(roomId);
      throw err;
    }
  }

  async leave(roomId: string, options: RequestOptions = {}): Promise<RoomUpdate> {
    if (this.current === "closed") throw new ClientClosed("client closed");
    this.rooms.delete(roomId);
    this.roster.forget(roomId);
    this.dropJoins(roomId);
    if (this.ws === null) return { roomId, action: "left" }; // the next socket will not join it
    return this.request<RoomUpdate>("leave", { roomId }, options.timeoutMs);
  }

  /** Joins of `roomId` not written yet (or written on `lost`, a socket that dropped) must not go
   * out once the room was left. */
  private dropJoins(roomId: string, lost: WebSocketLike | null = null): void {
    for (const entry of [...this.pending.values()]) {
      if (entry.type === "join" && entry.roomId === roomId && entry.sentOn === lost) {
        this.settle(entry, { error: new ClientError(`left ${roomId} before the join was answered`) });
      }
    }
  }

  /** Sends a message; resolves with its ack. Buffered while disconnected and resent after a drop
   * with the same dedupeKey until acked or `timeoutMs` passes. */
  send(roomId: string, content: string, options: SendOptions = {}): Promise<Ack> {
    const payload: Record<string, unknown> = { roomId, content, dedupeKey: options.dedupeKey ?? newDedupeKey() };
    if (options.attachments !== undefined && options.attachments.length > 0) payload["attachments"] = options.attachments;
    return this.request<Ack>("message", payload, options.timeoutMs);
  }

  /** The room's latest `limit` (1..100) entries, oldest first. */
  history(roomId: string, limit = 50, options: RequestOptions = {}): Promise<History> {
    return this.request<History>("history", { roomId, limit }, options.timeoutMs);
  }

  /** A page of the room's members: the first without `cursor`, then pass the page's `next`. */
  presenceQuery(roomId: string, cursor?: string, options: RequestOptions = {}): Promise<PresenceState> {
    const payload = cursor === undefined ? { roomId } : { roomId, cursor };
    return this.request<PresenceState>("presence_query", payload, options.timeoutMs);
  }

  /** Hands the gateway a new token for this socket (default: getToken's next one). */
  async refresh(token?: string, options: RequestOptions = {}): Promise<Refreshed> {
    const next = token ?? (typeof this.tokenSource === "string" ? undefined : await this.tokenSource());
    if (next === undefined) throw new TypeError("no getToken to refresh from: pass a token");
    return this.request<Refreshed>("refresh", { token: next }, options.timeoutMs);
  }

  /** Asks the application's backend (the gateway's RPC_HOOK_URL, docs/hooks.md) over this socket;
   * resolves with its answer's `data`. Rejects with RequestError `rpc_failed` (the backend's error,
   * `details {status, code?}`), `unavailable` (retryable: try again later) or `not_enabled`. Not
   * resent after a drop (an rpc may not be safe to repeat): ConnectionLost then. */
  async rpc(method: string, data?: unknown, options: RequestOptions = {}): Promise<unknown> {
    const result = await this.request<RpcResult>("rpc", { method, data: data ?? null }, options.timeoutMs);
    return result.data;
  }

  /** Round trip of an application ping, in ms. */
  async ping(options: RequestOptions = {}): Promise<number> {
    const start = Date.now();
    await this.request("ping", {}, options.timeoutMs);
    return Date.now() - start;
  }

  /** Says online, typing or idle in a room. Not buffered (a stale `typing` is worse than none):
   * false when there is no open socket. */
  setPresence(roomId: string, status: Exclude<PresenceStatus, "offline">): boolean {
    if (!this.ready || this.ws === null) return false;
    return write(this.ws, { type: "presence", payload: { roomId, status } });
  }

  private request<T>(type: string, payload: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    if (this.current === "closed") return Promise.reject(new ClientClosed("client closed"));
    if (!this.ready && this.buffered() >= this.options.maxBuffered) {
      return Promise.reject(new BufferFull(`disconnected, and ${this.options.maxBuffered} requests are waiting`));
    }
    const entry = this.enqueue(type, payload, timeoutMs);
    if (type === "message" && this.refused.length > 0) this.refused.push(entry); // behind the refused ones: never ahead
    else if (this.ready && this.ws !== null) this.transmit(this.ws, entry);
    return entry.reply as Promise<T>;
  }

  /** A request waiting for its reply; written by the caller (now, or after the next resume). */
  private enqueue(type: string, payload: Record<string, unknown>, timeoutMs?: number): Pending {
    this.seq += 1;
    const id = `${this.prefix}-${this.seq}`;
    const dedupeKey = typeof payload["dedupeKey"] === "string" ? payload["dedupeKey"] : undefined;
    const limit = timeoutMs ?? this.options.timeoutMs;
    let resolve!: (value: never) => void;
    let reject!: (error: Error) => void;
    const reply = new Promise<never>((ok, fail) => {
      resolve = ok;
      reject = fail;
    });
    const entry: Pending = {
      id,
      type,
      frame: { type, payload, requestId: id },
      roomId: typeof payload["roomId"] === "string" ? payload["roomId"] : undefined,
      sentOn: null,
      reply,
      resolve,
      reject,
      timer: setTimeout(() => {
        this.pending.delete(id);
        reject(new RequestTimeout(`no reply to ${type} within ${limit} ms`, dedupeKey));
      }, limit),
    };
    this.pending.set(id, entry);
    return entry;
  }

  private buffered(): number {
    let count = 0;
    for (const entry of this.pending.values()) if (entry.sentOn === null) count += 1;
    return count;
  }

  private transmit(ws: WebSocketLike, entry: Pending): void {
    if (write(ws, entry.frame)) entry.sentOn = ws;
  }

  private settle(entry: Pending, outcome: { value: unknown } | { error: Error }): void {
    clearTimeout(entry.timer);
    this.pending.delete(entry.id);
    if ("value" in outcome) entry.resolve(outcome.value as never);
    else entry.reject(outcome.error);
  }

  // -- connection ----------------------------------------------------------------------------

  private async open(): Promise<void> {
    if (this.current === "closed") return;
    this.current = "connecting";
    this.emit("connecting", { attempt: this.tries });
    let token: string;
    try {
      token = typeof this.tokenSource === "string" ? this.tokenSource : await this.tokenSource();
    } catch (error) {
      if (this.current === "connecting") this.retry(1006, `getToken failed: ${messageOf(error)}`);
      return;
    }
    if (this.current !== "connecting") return; // closed meanwhile
    if (typeof this.tokenSource === "string" && expired(token)) {
      // A fixed token past its exp would be refused at every attempt (a 401 the browser hides).
      const expiry = { code: 4001, reason: "the token expired", action: "give_up", willReconnect: false } as const;
      this.emit("disconnected", { ...expiry, attempt: this.tries });
      this.finish(new ClientClosed("the token expired: connect with a new one", 4001));
      return;
    }
    this.userId = tokenSubject(token) ?? this.userId;
    const sse = this.transports.includes("sse");
    this.using = sse && (this.wsFailures >= 2 || !this.transports.includes("websocket")) ? "sse" : "websocket";
    if (this.using === "websocket" && this.WebSocketClass === null) {
      try {
        this.WebSocketClass = await loadWs();
      } catch {
        if (!sse) {
          this.finish(new ClientClosed(NO_WEBSOCKET));
          return;
        }
        this.wsFailures = Infinity; // Node 20 without the ws package: the HTTP transport only
        this.using = "sse";
      }
      if (this.current !== "connecting") return;
    }
    let ws: WebSocketLike;
    try {
      const url = withToken(this.url, token);
      ws = this.using === "sse" ? new SseSocket(url, this.fetcher) : new (this.WebSocketClass as WebSocketConstructor)(url);
    } catch (error) {
      this.finish(new ClientClosed(`bad URL ${this.url}: ${messageOf(error)}`));
      return;
    }
    this.ws = ws;
    this.openedAt = 0;
    if (this.transports.length > 1) {
      // Only where there is something to fall back to: alone, a slow open is still an open.
      this.openTimer = setTimeout(() => {
        if (this.ws === ws && this.openedAt === 0) this.end(ws, 1006, "did not open in time");
      }, this.options.openTimeoutMs);
    }
    ws.onopen = () => {
      if (this.ws !== ws) return;
      clearTimeout(this.openTimer);
      this.openedAt = Date.now();
      this.connections += 1;
      if (this.using === "websocket") this.wsFailures = 0;
      void this.resume(ws);
    };
    ws.onmessage = (event: { data: unknown }) => this.receive(ws, event.data);
    ws.onclose = (event: { code: number; reason: string }) => this.end(ws, this.openedAt > 0 ? event.code : 1006, event.reason);
    // Before the open, an error is the end of the attempt: some WebSockets (Node 20's) never send
    // the close that should follow. After it, the close event comes and says why.
    ws.onerror = () => {
      if (this.ws === ws && this.openedAt === 0) this.end(ws, 1006, "");
    };
  }

  /** The end of `ws` (closed, failed, or given up on): what was in flight waits for the next
   * socket, which is opened after the backoff, unless the close code says to give up. */
  private end(ws: WebSocketLike, code: number, reason: string): void {
    if (this.ws !== ws) return;
    clearTimeout(this.openTimer);
    clearTimeout(this.upgradeTimer);
    const openedAt = this.openedAt;
    if (this.using === "websocket") {
      this.wsFailures = openedAt === 0 ? this.wsFailures + 1 : 0;
    } else if (this.wsFailures !== Infinity) {
      // A stream that ended: the WebSocket gets one more try. One that never opened: the fault was
      // not the WebSocket's (the gateway is down), so the next attempts start with it again.
      this.wsFailures = openedAt > 0 ? 1 : 0;
    }
    this.dropped(ws);
    try {
      ws.close(); // no-op when already closed; releases a socket that is only presumed dead
    } catch {
      // not open yet: nothing to close
    }
    if (this.current === "closed") return;
    if (openedAt > 0 && Date.now() - openedAt >= this.options.stableAfterMs) this.attempt = 0;
    const fallback = CLOSE_CODES[code]?.reason ?? (openedAt > 0 ? "connection lost" : "could not connect");
    this.retry(code, reason || fallback);
  }

  /** After an open: join every room again (with `since`, paced: REJOIN_BURST), then send what waited. */
  private async resume(ws: WebSocketLike): Promise<void> {
    const reconnected = this.connections > 1;
    for (const entry of [...this.pending.values()]) {
      if (entry.type === "leave" && entry.sentOn === null) this.settle(entry, { value: { roomId: entry.roomId, action: "left" } });
    }
    let todo = [...this.rooms.keys()];
    for (let round = 0; todo.length > 0 && round < REJOIN_ROUNDS; round++) {
      if (round > 0) await pause(1000);
      const joins: Promise<unknown>[] = [];
      const limited: string[] = [];
      for (const [i, roomId] of todo.entries()) {
        if (i >= REJOIN_BURST && (i - REJOIN_BURST) % REJOIN_PER_SECOND === 0) await pause(1000);
        if (this.ws !== ws || this.current === "closed") return; // dropped meanwhile: the next open resumes
        if (!this.rooms.has(roomId)) continue; // left meanwhile
        const asked = [...this.pending.values()].find((e) => e.type === "join" && e.roomId === roomId && e.sentOn === null);
        const entry = asked ?? this.rejoin(roomId);
        const since = this.rooms.get(roomId);
        if (since) entry.frame.payload["since"] = { offset: since.offset, epoch: since.epoch };
        this.transmit(ws, entry);
        joins.push(entry.reply.catch((error: unknown) => {
          if (error instanceof RequestError && RETRIED.has(error.code) && asked === undefined) limited.push(roomId);
        }));
      }
      await Promise.all(joins);
      todo = limited.filter((roomId) => this.rooms.has(roomId));
    }
    for (const roomId of todo) this.rooms.delete(roomId); // still refused after every round: not joined
    if (this.ws !== ws || this.current === "closed") return; // dropped again meanwhile: the next open resumes
    this.ready = true;
    this.current = "open";
    this.tries = 0;
    this.startPing(ws);
    for (const entry of [...this.pending.values()]) if (entry.sentOn !== ws) this.transmit(ws, entry);
    if (this.using === "sse") this.scheduleUpgrade(ws);
    this.emit("connected", { reconnected, rooms: this.roomIds, transport: this.using });
    this.settleStart?.resolve();
    this.settleStart = null;
  }

  /** A message refused as unavailable goes out again, with its dedupeKey, a moment later: the
   * refused ones of one wait go together and in their order, so none overtakes another. */
  private resendLater(entry: Pending): void {
    entry.sentOn = null;
    this.refused.push(entry);
    if (this.refusedTimer !== null) return;
    const delay = UNAVAILABLE_RETRY_MS * (0.5 + Math.random() / 2);
    this.refusedTimer = setTimeout(() => {
      this.refusedTimer = null;
      const waiting = new Set(this.refused);
      const again = [...this.pending.values()].filter((e) => waiting.has(e) && e.sentOn === null); // in the order sent
      this.refused = [];
      if (this.ready && this.ws !== null) for (const e of again) this.transmit(this.ws, e);
      // (not connected: resume() sends them with the rest of what waited)
    }, delay);
  }

  private rejoin(roomId: string): Pending {
    const entry = this.enqueue("join", { roomId });
    entry.reply.catch((error: unknown) => {
      // Refused: e.g. the token no longer allows it. (rate_limited, unavailable: asked again by resume.)
      if (error instanceof RequestError && !RETRIED.has(error.code)) this.rooms.delete(roomId);
    });
    return entry;
  }

  private dropped(ws: WebSocketLike): void {
    this.ws = null;
    this.ready = false;
    this.stopPing();
    for (const entry of [...this.pending.values()]) {
      if (entry.sentOn !== ws) continue;
      if (!RESENT.has(entry.type)) {
        this.settle(entry, { error: new ConnectionLost(`the connection dropped before the reply to ${entry.type}`) });
      } else if (entry.type === "join" && !this.rooms.has(entry.roomId as string)) {
        this.dropJoins(entry.roomId as string, ws); // left while its join was in flight: not joined again
      } else {
        entry.sentOn = null;
      }
    }
  }

  private retry(code: number, reason: string): void {
    if (this.current === "closed") return;
    let action = closeAction(code);
    if (action === "refresh" && typeof this.tokenSource === "string") action = "give_up"; // nobody to ask for a new token
    if (action === "give_up" || this.tries >= this.maxAttempts) {
      const why = action === "give_up" ? reason : `gave up after ${this.tries} attempts: ${reason}`;
      this.emit("disconnected", { code, reason: why, action, willReconnect: false, attempt: this.tries });
      this.finish(new ClientClosed(why, code));
      return;
    }
    const delayMs = this.backoff.delay(this.attempt);
    this.attempt += 1;
    this.tries += 1;
    this.current = "waiting";
    // The timer first: a listener may call close(), which must find it to clear.
    this.retryTimer = setTimeout(() => void this.open(), delayMs);
    this.emit("disconnected", { code, reason, action, willReconnect: true, attempt: this.tries, delayMs });
  }

  /** While on the HTTP transport: try a WebSocket in the background later (see upgradeAfterMs). */
  private scheduleUpgrade(stream: WebSocketLike): void {
    if (!this.transports.includes("websocket") || this.WebSocketClass === null) return;
    clearTimeout(this.upgradeTimer);
    this.upgradeTimer = setTimeout(() => void this.tryUpgrade(stream), this.upgradeDelay);
  }

  /** One WebSocket, opened and closed at once: if it opens, the stream gives way to a WebSocket
   * (closed 1000; the rooms are joined again with `since`, so nothing is missed). */
  private async tryUpgrade(stream: WebSocketLike): Promise<void> {
    const current = () => this.ws === stream && this.ready;
    let token: string;
    try {
      token = typeof this.tokenSource === "string" ? this.tokenSource : await this.tokenSource();
    } catch {
      if (current()) this.scheduleUpgrade(stream);
      return;
    }
    if (!current() || this.WebSocketClass === null) return;
    let probe: WebSocketLike;
    try {
      probe = new this.WebSocketClass(withToken(this.url, token));
    } catch {
      return;
    }
    let settled = false;
    const settle = (opened: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      probe.onopen = probe.onclose = probe.onerror = probe.onmessage = null;
      try {
        probe.close(1000, "probe");
      } catch {
        // not open: nothing to close
      }
      if (!current()) return;
      if (opened) {
        this.upgradeDelay = this.options.upgradeAfterMs;
        this.attempt = 0;
        this.end(stream, 1000, "a WebSocket gets through again");
        this.wsFailures = 0;
      } else {
        this.upgradeDelay = Math.min(this.upgradeDelay * 2, UPGRADE_MAX_MS);
        this.scheduleUpgrade(stream);
      }
    };
    const timer = setTimeout(() => settle(false), this.options.openTimeoutMs);
    probe.onopen = () => settle(true);
    probe.onerror = () => settle(false);
    probe.onclose = () => settle(false);
  }

  /** Skips the wait: try to connect now (a "Retry now" button). */
  retryNow(): void {
    if (this.current !== "waiting") return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    void this.open();
  }

  private finish(error: ClientClosed): void {
    if (this.current === "closed") return;
    this.current = "closed";
    this.ready = false;
    clearTimeout(this.retryTimer);
    clearTimeout(this.openTimer);
    clearTimeout(this.upgradeTimer);
    if (this.refusedTimer !== null) clearTimeout(this.refusedTimer);
    this.refusedTimer = null;
    this.refused = [];
    this.stopPing();
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) ws.onclose = null;
    for (const entry of [...this.pending.values()]) this.settle(entry, { error });
    this.settleStart?.reject(error);
    this.settleStart = null;
    this.emit("closed", error.code === undefined ? { reason: error.message } : { code: error.code, reason: error.message });
  }

  private startPing(ws: WebSocketLike): void {
    this.stopPing();
    if (this.options.pingIntervalMs <= 0) return;
    this.pingTimer = setInterval(() => {
      if (this.ws !== ws) return;
      this.request("ping", {}).catch(() => {});
      clearTimeout(this.pongTimer);
      // Nothing back at all: the connection is dead without a close (a laptop asleep, a NAT that
      // forgot us). Its closing handshake would never finish either, so it is replaced at once.
      this.pongTimer = setTimeout(() => this.end(ws, 1006, "no pong"), this.options.pongTimeoutMs);
    }, this.options.pingIntervalMs);
  }

  private stopPing(): void {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
  }

  // -- frames --------------------------------------------------------------------------------

  private receive(ws: WebSocketLike, data: unknown): void {
    if (this.ws !== ws || typeof data !== "string") return; // the protocol is text only
    clearTimeout(this.pongTimer);
    let frame: Frame;
    try {
      frame = JSON.parse(data) as Frame;
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") return;
    const payload = (frame.payload ?? {}) as Record<string, unknown>;
    if (isEntry(frame.type) && !this.advance(payload)) return; // seen already: a replay overlapping live traffic
    if (frame.type === "room_update") this.roomUpdate(payload as unknown as RoomUpdate, frame.requestId);
    if (frame.type === "token_expiring") void this.refreshFromSource();
    const change = this.membersOf(frame.type, payload, frame.requestId);
    this.emit("frame", frame);
    if (SERVER_TYPE_SET.has(frame.type)) this.emit(frame.type as keyof ServerPayloads, payload as never);
    if (change !== null) this.emit("members_changed", change);
    const entry = frame.requestId === undefined ? undefined : this.pending.get(frame.requestId);
    if (entry === undefined) return;
    if (frame.type === "error" && entry.type === "message" && payload["code"] === "unavailable") this.resendLater(entry);
    else if (frame.type === "error") this.settle(entry, { error: new RequestError(payload as unknown as ErrorPayload) });
    else if (REPLIES[entry.type] === frame.type) this.settle(entry, { value: payload });
  }

  /** Moves the room's position to this entry; false when it is at or before the position. An
   * entry that is not the next one (an offset skipped, or a new epoch) reveals a loss: `recovery`
   * says so before the entry is delivered. */
  private advance(payload: Record<string, unknown>): boolean {
    const { roomId, offset, epoch } = payload;
    if (typeof roomId !== "string" || typeof offset !== "number" || typeof epoch !== "string") return true;
    if (!this.rooms.has(roomId)) return true;
    const known = this.rooms.get(roomId);
    if (known && known.epoch === epoch && offset <= known.offset) return false;
    this.rooms.set(roomId, { offset, epoch });
    if (known && (known.epoch !== epoch || offset !== known.offset + 1)) {
      this.emit("recovery", { roomId, recovered: false, offset: offset - 1, epoch });
    }
    return true;
  }

  /** The frame's effect on the room's list of members (members.ts). */
  private membersOf(type: string, payload: Record<string, unknown>, requestId: string | undefined): MembersChanged | null {
    const roomId = payload["roomId"];
    switch (type) {
      case "presence_state": {
        if (requestId !== undefined || typeof roomId !== "string") return null; // a page the app asked for
        const p = payload as unknown as PresenceState;
        return this.roster.snapshot(roomId, Array.isArray(p.members) ? p.members : [], p.count, typeof p.next === "string");
      }
      case "presence": {
        const p = payload as unknown as Presence;
        return typeof roomId === "string" ? this.roster.presence(roomId, p.userId, p.status, p.at) : null;
      }
      case "presence_count": {
        const count = (payload as unknown as PresenceCount).count;
        return typeof roomId === "string" && typeof count === "number" ? this.roster.counted(roomId, count) : null;
      }
      default:
        return null;
    }
  }

  private roomUpdate(update: RoomUpdate, requestId: string | undefined): void {
    const { roomId } = update;
    if (update.action === "joined") {
      if (!this.rooms.has(roomId)) return;
      const here = typeof update.offset === "number" && typeof update.epoch === "string";
      const position = here ? { offset: update.offset as number, epoch: update.epoch as string } : null;
      if (update.recovered === undefined) {
        if (this.rooms.get(roomId) == null) this.rooms.set(roomId, position);
        return;
      }
      // recovered: the replayed entries follow and move the position; not: start from the room's.
      if (!update.recovered) this.rooms.set(roomId, position);
      const recovery: Recovery = { roomId, recovered: update.recovered };
      if (position !== null) Object.assign(recovery, position);
      this.emit("recovery", recovery);
    } else if (update.action === "removed" || update.action === "deleted" || update.action === "left") {
      this.roster.forget(roomId);
      // Taken out by the gateway (not the reply to our own leave): do not join again.
      if (update.action !== "left" || requestId === undefined) this.rooms.delete(roomId);
    }
  }

  private async refreshFromSource(): Promise<void> {
    if (typeof this.tokenSource === "string" || this.refreshing) return;
    this.refreshing = true;
    try {
      await this.refresh();
    } catch (error) {
      this.emit("refresh_failed", { error });
    } finally {
      this.refreshing = false;
    }
  }
}

const SERVER_TYPE_SET: ReadonlySet<string> = new Set(SERVER_TYPES);

function isEntry(type: string): boolean {
  return type === "message" || type === "message_updated" || type === "message_deleted";
}

const NO_WEBSOCKET =
  "this Node.js has no WebSocket: on Node 20 install the ws package beside the client (npm install ws), " +
  "use Node 22 or later, or pass options.WebSocket";

function isNode(): boolean {
  return typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === "string";
}

/** Node 20 has a WebSocket only behind --experimental-websocket: the `ws` package (an optional peer
 * dependency) stands in, so the client works there without flags. The specifier is a variable so
 * that bundlers for the browser, which has a WebSocket, do not try to resolve it. */
async function loadWs(): Promise<WebSocketConstructor> {
  const specifier = "ws";
  const module = (await import(/* @vite-ignore */ /* webpackIgnore: true */ specifier)) as {
    WebSocket?: WebSocketConstructor;
    default?: WebSocketConstructor;
  };
  const found = module.WebSocket ?? module.default;
  if (found === undefined) throw new TypeError("the ws package exports no WebSocket");
  return found;
}

function write(ws: WebSocketLike, frame: Frame): boolean {
  if (ws.readyState !== OPEN) return false;
  try {
    ws.send(JSON.stringify(frame));
    return true;
  } catch {
    return false;
  }
}

/** Browsers cannot set headers on a WebSocket, so the token goes in the query (the gateway keeps
 * it out of its logs). */
function withToken(url: string, token: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set("token", token);
  return parsed.toString();
}

/** The user id the gateway will see (`sub`, else `userId`), read without verifying. */
export function tokenSubject(token: string): string | undefined {
  const found = claims(token);
  for (const key of ["sub", "userId"]) if (typeof found?.[key] === "string") return found[key] as string;
  return undefined;
}

/** A JWT's claims, read without verifying (only the gateway can verify). */
function claims(token: string): Record<string, unknown> | undefined {
  try {
    const part = (token.split(".")[1] ?? "").replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const parsed: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return parsed !== null && typeof parsed === "object" ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined; // not a JWT: the gateway will say so
  }
}

function expired(token: string): boolean {
  const exp = claims(token)?.["exp"];
  return typeof exp === "number" && exp * 1000 < Date.now();
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A new random dedupeKey: what send() uses unless given one. An application that shows a message
 * before it is acked (to match the gateway's echo) makes the key first and passes it. */
export function newDedupeKey(): string {
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  // randomUUID exists only in secure contexts (https, localhost); elsewhere a random hex key does.
  return crypto?.randomUUID?.() ?? randomHex(32);
}

function randomHex(length: number): string {
  let out = "";
  while (out.length < length) out += Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, "0");
  return out.slice(0, length);
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
