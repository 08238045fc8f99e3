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
import { Backoff } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { BufferFull, ClientClosed, ClientError, ConnectionLost, RequestError, RequestTimeout } from "./errors.js";
import { Roster } from "./members.js";
import { closeAction, CLOSE_CODES, SERVER_TYPES } from "./protocol.js";
import { SseSocket } from "./sse.js";
const REPLIES = {
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
const RETRIED = new Set(["rate_limited", "unavailable"]);
// A message refused as `unavailable` (Redis could not store it; nobody got it) is sent again with
// its dedupeKey after about this long, until acked or its timeout passes (docs/protocol.md).
const UNAVAILABLE_RETRY_MS = 1000;
// The longest wait between two background WebSocket tries while on the HTTP transport.
const UPGRADE_MAX_MS = 10 * 60_000;
const OPEN = 1;
export class GatewayClient extends Emitter {
    url;
    /** The token's subject (`sub`, else `userId`), read without verifying, once a token is known. */
    userId;
    /** Sockets opened so far (0: the gateway was never reached, or refused every attempt). */
    connections = 0;
    options;
    transports;
    fetcher;
    wsFailures = 0; // WebSocket opens in a row that failed: two, and the HTTP transport is used
    using = "websocket";
    openTimer;
    upgradeTimer;
    upgradeDelay = 0; // the next background WebSocket try, while on the HTTP transport
    maxAttempts;
    backoff;
    WebSocketClass;
    tokenSource;
    current = "idle";
    ws = null;
    openedAt = 0; // when this.ws opened (0: not yet)
    ready = false;
    rooms = new Map();
    roster = new Roster(); // who is online in each room (members.ts)
    pending = new Map();
    refused = [];
    refusedTimer = null;
    attempt = 0;
    tries = 0;
    retryTimer;
    pingTimer;
    pongTimer;
    refreshing = false;
    seq = 0;
    prefix = randomHex(6);
    started = null;
    settleStart = null;
    constructor(url, options) {
        super();
        if ((options.token === undefined) === (options.getToken === undefined)) {
            throw new TypeError("pass a token or getToken (one of them)");
        }
        this.transports = options.transports ?? ["websocket", "sse"];
        if (this.transports.length === 0 || this.transports.some((t) => t !== "websocket" && t !== "sse")) {
            throw new TypeError('transports: "websocket", "sse" or both');
        }
        this.fetcher = options.fetch;
        const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
        if (WebSocketClass === undefined && !isNode() && !this.transports.includes("sse")) {
            throw new TypeError("no WebSocket here: pass options.WebSocket");
        }
        this.url = url;
        this.WebSocketClass = WebSocketClass ?? null; // Node 20: the `ws` package, loaded at connect()
        this.tokenSource = options.token ?? options.getToken;
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
    get state() {
        return this.current;
    }
    /** What carries the frames now (or will, for the attempt under way). */
    get transport() {
        return this.using;
    }
    /** Rooms this client is in, or will be in again after a reconnect. */
    get roomIds() {
        return [...this.rooms.keys()];
    }
    /** Who is online in `roomId`, as last told (in a room of more than a page: the first page and who
     * announced themselves since; page through the rest with presenceQuery). */
    members(roomId) {
        return this.roster.members(roomId);
    }
    /** How many users are online in `roomId` on every instance, as last told. */
    memberCount(roomId) {
        return this.roster.count(roomId);
    }
    /** The last history entry seen in `roomId` (what a re-join asks to follow), if any. */
    position(roomId) {
        return this.rooms.get(roomId) ?? undefined;
    }
    /** Opens the connection; resolves once it is open, rejects with ClientClosed if the client gives
     * up before that. Drops after it are retried in the background (watch `disconnected`). */
    connect() {
        if (this.started !== null)
            return this.started;
        if (this.current === "closed")
            return Promise.reject(new ClientClosed("client closed"));
        this.started = new Promise((resolve, reject) => {
            this.settleStart = { resolve, reject };
        });
        void this.open();
        return this.started;
    }
    /** Closes the socket (1000) and stops; pending requests reject with ClientClosed. */
    close() {
        if (this.current === "closed")
            return;
        const ws = this.ws;
        this.finish(new ClientClosed("client closed", 1000));
        ws?.close(1000, "client closed");
    }
    // -- requests ------------------------------------------------------------------------------
    /** Joins `roomId`; it is joined again after every reconnect until leave(). */
    async join(roomId, options = {}) {
        const added = !this.rooms.has(roomId);
        if (added)
            this.rooms.set(roomId, null);
        try {
            return await this.request("join", { roomId }, options.timeoutMs);
        }
        catch (err) {
            // Refused: not a room to join again. (A refused repeat, say rate_limited, keeps the room.)
            if (err instanceof RequestError && added)
                this.rooms.delete(roomId);
            throw err;
        }
    }
    async leave(roomId, options = {}) {
        if (this.current === "closed")
            throw new ClientClosed("client closed");
        this.rooms.delete(roomId);
        this.roster.forget(roomId);
        this.dropJoins(roomId);
        if (this.ws === null)
            return { roomId, action: "left" }; // the next socket will not join it
        return this.request("leave", { roomId }, options.timeoutMs);
    }
    /** Joins of `roomId` not written yet (or written on `lost`, a socket that dropped) must not go
     * out once the room was left. */
    dropJoins(roomId, lost = null) {
        for (const entry of [...this.pending.values()]) {
            if (entry.type === "join" && entry.roomId === roomId && entry.sentOn === lost) {
                this.settle(entry, { error: new ClientError(`left ${roomId} before the join was answered`) });
            }
        }
    }
    /** Sends a message; resolves with its ack. Buffered while disconnected and resent after a drop
     * with the same dedupeKey until acked or `timeoutMs` passes. */
    send(roomId, content, options = {}) {
        const payload = { roomId, content, dedupeKey: options.dedupeKey ?? newDedupeKey() };
        if (options.attachments !== undefined && options.attachments.length > 0)
            payload["attachments"] = options.attachments;
        return this.request("message", payload, options.timeoutMs);
    }
    /** The room's latest `limit` (1..100) entries, oldest first. */
    history(roomId, limit = 50, options = {}) {
        return this.request("history", { roomId, limit }, options.timeoutMs);
    }
    /** A page of the room's members: the first without `cursor`, then pass the page's `next`. */
    presenceQuery(roomId, cursor, options = {}) {
        const payload = cursor === undefined ? { roomId } : { roomId, cursor };
        return this.request("presence_query", payload, options.timeoutMs);
    }
    /** Hands the gateway a new token for this socket (default: getToken's next one). */
    async refresh(token, options = {}) {
        const next = token ?? (typeof this.tokenSource === "string" ? undefined : await this.tokenSource());
        if (next === undefined)
            throw new TypeError("no getToken to refresh from: pass a token");
        return this.request("refresh", { token: next }, options.timeoutMs);
    }
    /** Asks the application's backend (the gateway's RPC_HOOK_URL, docs/hooks.md) over this socket;
     * resolves with its answer's `data`. Rejects with RequestError `rpc_failed` (the backend's error,
     * `details {status, code?}`), `unavailable` (retryable: try again later) or `not_enabled`. Not
     * resent after a drop (an rpc may not be safe to repeat): ConnectionLost then. */
    async rpc(method, data, options = {}) {
        const result = await this.request("rpc", { method, data: data ?? null }, options.timeoutMs);
        return result.data;
    }
    /** Round trip of an application ping, in ms. */
    async ping(options = {}) {
        const start = Date.now();
        await this.request("ping", {}, options.timeoutMs);
        return Date.now() - start;
    }
    /** Says online, typing or idle in a room. Not buffered (a stale `typing` is worse than none):
     * false when there is no open socket. */
    setPresence(roomId, status) {
        if (!this.ready || this.ws === null)
            return false;
        return write(this.ws, { type: "presence", payload: { roomId, status } });
    }
    request(type, payload, timeoutMs) {
        if (this.current === "closed")
            return Promise.reject(new ClientClosed("client closed"));
        if (!this.ready && this.buffered() >= this.options.maxBuffered) {
            return Promise.reject(new BufferFull(`disconnected, and ${this.options.maxBuffered} requests are waiting`));
        }
        const entry = this.enqueue(type, payload, timeoutMs);
        if (type === "message" && this.refused.length > 0)
            this.refused.push(entry); // behind the refused ones: never ahead
        else if (this.ready && this.ws !== null)
            this.transmit(this.ws, entry);
        return entry.reply;
    }
    /** A request waiting for its reply; written by the caller (now, or after the next resume). */
    enqueue(type, payload, timeoutMs) {
        this.seq += 1;
        const id = `${this.prefix}-${this.seq}`;
        const dedupeKey = typeof payload["dedupeKey"] === "string" ? payload["dedupeKey"] : undefined;
        const limit = timeoutMs ?? this.options.timeoutMs;
        let resolve;
        let reject;
        const reply = new Promise((ok, fail) => {
            resolve = ok;
            reject = fail;
        });
        const entry = {
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
    buffered() {
        let count = 0;
        for (const entry of this.pending.values())
            if (entry.sentOn === null)
                count += 1;
        return count;
    }
    transmit(ws, entry) {
        if (write(ws, entry.frame))
            entry.sentOn = ws;
    }
    settle(entry, outcome) {
        clearTimeout(entry.timer);
        this.pending.delete(entry.id);
        if ("value" in outcome)
            entry.resolve(outcome.value);
        else
            entry.reject(outcome.error);
    }
    // -- connection ----------------------------------------------------------------------------
    async open() {
        if (this.current === "closed")
            return;
        this.current = "connecting";
        this.emit("connecting", { attempt: this.tries });
        let token;
        try {
            token = typeof this.tokenSource === "string" ? this.tokenSource : await this.tokenSource();
        }
        catch (error) {
            if (this.current === "connecting")
                this.retry(1006, `getToken failed: ${messageOf(error)}`);
            return;
        }
        if (this.current !== "connecting")
            return; // closed meanwhile
        if (typeof this.tokenSource === "string" && expired(token)) {
            // A fixed token past its exp would be refused at every attempt (a 401 the browser hides).
            const expiry = { code: 4001, reason: "the token expired", action: "give_up", willReconnect: false };
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
            }
            catch {
                if (!sse) {
                    this.finish(new ClientClosed(NO_WEBSOCKET));
                    return;
                }
                this.wsFailures = Infinity; // Node 20 without the ws package: the HTTP transport only
                this.using = "sse";
            }
            if (this.current !== "connecting")
                return;
        }
        let ws;
        try {
            const url = withToken(this.url, token);
            ws = this.using === "sse" ? new SseSocket(url, this.fetcher) : new this.WebSocketClass(url);
        }
        catch (error) {
            this.finish(new ClientClosed(`bad URL ${this.url}: ${messageOf(error)}`));
            return;
        }
        this.ws = ws;
        this.openedAt = 0;
        if (this.transports.length > 1) {
            // Only where there is something to fall back to: alone, a slow open is still an open.
            this.openTimer = setTimeout(() => {
                if (this.ws === ws && this.openedAt === 0)
                    this.end(ws, 1006, "did not open in time");
            }, this.options.openTimeoutMs);
        }
        ws.onopen = () => {
            if (this.ws !== ws)
                return;
            clearTimeout(this.openTimer);
            this.openedAt = Date.now();
            this.connections += 1;
            if (this.using === "websocket")
                this.wsFailures = 0;
            void this.resume(ws);
        };
        ws.onmessage = (event) => this.receive(ws, event.data);
        ws.onclose = (event) => this.end(ws, this.openedAt > 0 ? event.code : 1006, event.reason);
        // Before the open, an error is the end of the attempt: some WebSockets (Node 20's) never send
        // the close that should follow. After it, the close event comes and says why.
        ws.onerror = () => {
            if (this.ws === ws && this.openedAt === 0)
                this.end(ws, 1006, "");
        };
    }
    /** The end of `ws` (closed, failed, or given up on): what was in flight waits for the next
     * socket, which is opened after the backoff, unless the close code says to give up. */
    end(ws, code, reason) {
        if (this.ws !== ws)
            return;
        clearTimeout(this.openTimer);
        clearTimeout(this.upgradeTimer);
        const openedAt = this.openedAt;
        if (this.using === "websocket") {
            this.wsFailures = openedAt === 0 ? this.wsFailures + 1 : 0;
        }
        else if (this.wsFailures !== Infinity) {
            // A stream that ended: the WebSocket gets one more try. One that never opened: the fault was
            // not the WebSocket's (the gateway is down), so the next attempts start with it again.
            this.wsFailures = openedAt > 0 ? 1 : 0;
        }
        this.dropped(ws);
        try {
            ws.close(); // no-op when already closed; releases a socket that is only presumed dead
        }
        catch {
            // not open yet: nothing to close
        }
        if (this.current === "closed")
            return;
        if (openedAt > 0 && Date.now() - openedAt >= this.options.stableAfterMs)
            this.attempt = 0;
        const fallback = CLOSE_CODES[code]?.reason ?? (openedAt > 0 ? "connection lost" : "could not connect");
        this.retry(code, reason || fallback);
    }
    /** After an open: join every room again (with `since`, paced: REJOIN_BURST), then send what waited. */
    async resume(ws) {
        const reconnected = this.connections > 1;
        for (const entry of [...this.pending.values()]) {
            if (entry.type === "leave" && entry.sentOn === null)
                this.settle(entry, { value: { roomId: entry.roomId, action: "left" } });
        }
        let todo = [...this.rooms.keys()];
        for (let round = 0; todo.length > 0 && round < REJOIN_ROUNDS; round++) {
            if (round > 0)
                await pause(1000);
            const joins = [];
            const limited = [];
            for (const [i, roomId] of todo.entries()) {
                if (i >= REJOIN_BURST && (i - REJOIN_BURST) % REJOIN_PER_SECOND === 0)
                    await pause(1000);
                if (this.ws !== ws || this.current === "closed")
                    return; // dropped meanwhile: the next open resumes
                if (!this.rooms.has(roomId))
                    continue; // left meanwhile
                const asked = [...this.pending.values()].find((e) => e.type === "join" && e.roomId === roomId && e.sentOn === null);
                const entry = asked ?? this.rejoin(roomId);
                const since = this.rooms.get(roomId);
                if (since)
                    entry.frame.payload["since"] = { offset: since.offset, epoch: since.epoch };
                this.transmit(ws, entry);
                joins.push(entry.reply.catch((error) => {
                    if (error instanceof RequestError && RETRIED.has(error.code) && asked === undefined)
                        limited.push(roomId);
                }));
            }
            await Promise.all(joins);
            todo = limited.filter((roomId) => this.rooms.has(roomId));
        }
        for (const roomId of todo)
            this.rooms.delete(roomId); // still refused after every round: not joined
        if (this.ws !== ws || this.current === "closed")
            return; // dropped again meanwhile: the next open resumes
        this.ready = true;
        this.current = "open";
        this.tries = 0;
        this.startPing(ws);
        for (const entry of [...this.pending.values()])
            if (entry.sentOn !== ws)
                this.transmit(ws, entry);
        if (this.using === "sse")
            this.scheduleUpgrade(ws);
        this.emit("connected", { reconnected, rooms: this.roomIds, transport: this.using });
        this.settleStart?.resolve();
        this.settleStart = null;
    }
    /** A message refused as unavailable goes out again, with its dedupeKey, a moment later: the
     * refused ones of one wait go together and in their order, so none overtakes another. */
    resendLater(entry) {
        entry.sentOn = null;
        this.refused.push(entry);
        if (this.refusedTimer !== null)
            return;
        const delay = UNAVAILABLE_RETRY_MS * (0.5 + Math.random() / 2);
        this.refusedTimer = setTimeout(() => {
            this.refusedTimer = null;
            const waiting = new Set(this.refused);
            const again = [...this.pending.values()].filter((e) => waiting.has(e) && e.sentOn === null); // in the order sent
            this.refused = [];
            if (this.ready && this.ws !== null)
                for (const e of again)
                    this.transmit(this.ws, e);
            // (not connected: resume() sends them with the rest of what waited)
        }, delay);
    }
    rejoin(roomId) {
        const entry = this.enqueue("join", { roomId });
        entry.reply.catch((error) => {
            // Refused: e.g. the token no longer allows it. (rate_limited, unavailable: asked again by resume.)
            if (error instanceof RequestError && !RETRIED.has(error.code))
                this.rooms.delete(roomId);
        });
        return entry;
    }
    dropped(ws) {
        this.ws = null;
        this.ready = false;
        this.stopPing();
        for (const entry of [...this.pending.values()]) {
            if (entry.sentOn !== ws)
                continue;
            if (!RESENT.has(entry.type)) {
                this.settle(entry, { error: new ConnectionLost(`the connection dropped before the reply to ${entry.type}`) });
            }
            else if (entry.type === "join" && !this.rooms.has(entry.roomId)) {
                this.dropJoins(entry.roomId, ws); // left while its join was in flight: not joined again
            }
            else {
                entry.sentOn = null;
            }
        }
    }
    retry(code, reason) {
        if (this.current === "closed")
            return;
        let action = closeAction(code);
        if (action === "refresh" && typeof this.tokenSource === "string")
            action = "give_up"; // nobody to ask for a new token
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
    scheduleUpgrade(stream) {
        if (!this.transports.includes("websocket") || this.WebSocketClass === null)
            return;
        clearTimeout(this.upgradeTimer);
        this.upgradeTimer = setTimeout(() => void this.tryUpgrade(stream), this.upgradeDelay);
    }
    /** One WebSocket, opened and closed at once: if it opens, the stream gives way to a WebSocket
     * (closed 1000; the rooms are joined again with `since`, so nothing is missed). */
    async tryUpgrade(stream) {
        const current = () => this.ws === stream && this.ready;
        let token;
        try {
            token = typeof this.tokenSource === "string" ? this.tokenSource : await this.tokenSource();
        }
        catch {
            if (current())
                this.scheduleUpgrade(stream);
            return;
        }
        if (!current() || this.WebSocketClass === null)
            return;
        let probe;
        try {
            probe = new this.WebSocketClass(withToken(this.url, token));
        }
        catch {
            return;
        }
        let settled = false;
        const settle = (opened) => {
            if (settled)
                return;
            settled = true;
            clearTimeout(timer);
            probe.onopen = probe.onclose = probe.onerror = probe.onmessage = null;
            try {
                probe.close(1000, "probe");
            }
            catch {
                // not open: nothing to close
            }
            if (!current())
                return;
            if (opened) {
                this.upgradeDelay = this.options.upgradeAfterMs;
                this.attempt = 0;
                this.end(stream, 1000, "a WebSocket gets through again");
                this.wsFailures = 0;
            }
            else {
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
    retryNow() {
        if (this.current !== "waiting")
            return;
        clearTimeout(this.retryTimer);
        this.attempt = 0;
        void this.open();
    }
    finish(error) {
        if (this.current === "closed")
            return;
        this.current = "closed";
        this.ready = false;
        clearTimeout(this.retryTimer);
        clearTimeout(this.openTimer);
        clearTimeout(this.upgradeTimer);
        if (this.refusedTimer !== null)
            clearTimeout(this.refusedTimer);
        this.refusedTimer = null;
        this.refused = [];
        this.stopPing();
        const ws = this.ws;
        this.ws = null;
        if (ws !== null)
            ws.onclose = null;
        for (const entry of [...this.pending.values()])
            this.settle(entry, { error });
        this.settleStart?.reject(error);
        this.settleStart = null;
        this.emit("closed", error.code === undefined ? { reason: error.message } : { code: error.code, reason: error.message });
    }
    startPing(ws) {
        this.stopPing();
        if (this.options.pingIntervalMs <= 0)
            return;
        this.pingTimer = setInterval(() => {
            if (this.ws !== ws)
                return;
            this.request("ping", {}).catch(() => { });
            clearTimeout(this.pongTimer);
            // Nothing back at all: the connection is dead without a close (a laptop asleep, a NAT that
            // forgot us). Its closing handshake would never finish either, so it is replaced at once.
            this.pongTimer = setTimeout(() => this.end(ws, 1006, "no pong"), this.options.pongTimeoutMs);
        }, this.options.pingIntervalMs);
    }
    stopPing() {
        clearInterval(this.pingTimer);
        clearTimeout(this.pongTimer);
    }
    // -- frames --------------------------------------------------------------------------------
    receive(ws, data) {
        if (this.ws !== ws || typeof data !== "string")
            return; // the protocol is text only
        clearTimeout(this.pongTimer);
        let frame;
        try {
            frame = JSON.parse(data);
        }
        catch {
            return;
        }
        if (frame === null || typeof frame !== "object" || typeof frame.type !== "string")
            return;
        const payload = (frame.payload ?? {});
        if (isEntry(frame.type) && !this.advance(payload))
            return; // seen already: a replay overlapping live traffic
        if (frame.type === "room_update")
            this.roomUpdate(payload, frame.requestId);
        if (frame.type === "token_expiring")
            void this.refreshFromSource();
        const change = this.membersOf(frame.type, payload, frame.requestId);
        this.emit("frame", frame);
        if (SERVER_TYPE_SET.has(frame.type))
            this.emit(frame.type, payload);
        if (change !== null)
            this.emit("members_changed", change);
        const entry = frame.requestId === undefined ? undefined : this.pending.get(frame.requestId);
        if (entry === undefined)
            return;
        if (frame.type === "error" && entry.type === "message" && payload["code"] === "unavailable")
            this.resendLater(entry);
        else if (frame.type === "error")
            this.settle(entry, { error: new RequestError(payload) });
        else if (REPLIES[entry.type] === frame.type)
            this.settle(entry, { value: payload });
    }
    /** Moves the room's position to this entry; false when it is at or before the position. An
     * entry that is not the next one (an offset skipped, or a new epoch) reveals a loss: `recovery`
     * says so before the entry is delivered. */
    advance(payload) {
        const { roomId, offset, epoch } = payload;
        if (typeof roomId !== "string" || typeof offset !== "number" || typeof epoch !== "string")
            return true;
        if (!this.rooms.has(roomId))
            return true;
        const known = this.rooms.get(roomId);
        if (known && known.epoch === epoch && offset <= known.offset)
            return false;
        this.rooms.set(roomId, { offset, epoch });
        if (known && (known.epoch !== epoch || offset !== known.offset + 1)) {
            this.emit("recovery", { roomId, recovered: false, offset: offset - 1, epoch });
        }
        return true;
    }
    /** The frame's effect on the room's list of members (members.ts). */
    membersOf(type, payload, requestId) {
        const roomId = payload["roomId"];
        switch (type) {
            case "presence_state": {
                if (requestId !== undefined || typeof roomId !== "string")
                    return null; // a page the app asked for
                const p = payload;
                return this.roster.snapshot(roomId, Array.isArray(p.members) ? p.members : [], p.count, typeof p.next === "string");
            }
            case "presence": {
                const p = payload;
                return typeof roomId === "string" ? this.roster.presence(roomId, p.userId, p.status, p.at) : null;
            }
            case "presence_count": {
                const count = payload.count;
                return typeof roomId === "string" && typeof count === "number" ? this.roster.counted(roomId, count) : null;
            }
            default:
                return null;
        }
    }
    roomUpdate(update, requestId) {
        const { roomId } = update;
        if (update.action === "joined") {
            if (!this.rooms.has(roomId))
                return;
            const here = typeof update.offset === "number" && typeof update.epoch === "string";
            const position = here ? { offset: update.offset, epoch: update.epoch } : null;
            if (update.recovered === undefined) {
                if (this.rooms.get(roomId) == null)
                    this.rooms.set(roomId, position);
                return;
            }
            // recovered: the replayed entries follow and move the position; not: start from the room's.
            if (!update.recovered)
                this.rooms.set(roomId, position);
            const recovery = { roomId, recovered: update.recovered };
            if (position !== null)
                Object.assign(recovery, position);
            this.emit("recovery", recovery);
        }
        else if (update.action === "removed" || update.action === "deleted" || update.action === "left") {
            this.roster.forget(roomId);
            // Taken out by the gateway (not the reply to our own leave): do not join again.
            if (update.action !== "left" || requestId === undefined)
                this.rooms.delete(roomId);
        }
    }
    async refreshFromSource() {
        if (typeof this.tokenSource === "string" || this.refreshing)
            return;
        this.refreshing = true;
        try {
            await this.refresh();
        }
        catch (error) {
            this.emit("refresh_failed", { error });
        }
        finally {
            this.refreshing = false;
        }
    }
}
const SERVER_TYPE_SET = new Set(SERVER_TYPES);
function isEntry(type) {
    return type === "message" || type === "message_updated" || type === "message_deleted";
}
const NO_WEBSOCKET = "this Node.js has no WebSocket: on Node 20 install the ws package beside the client (npm install ws), " +
    "use Node 22 or later, or pass options.WebSocket";
function isNode() {
    return typeof globalThis.process?.versions?.node === "string";
}
/** Node 20 has a WebSocket only behind --experimental-websocket: the `ws` package (an optional peer
 * dependency) stands in, so the client works there without flags. The specifier is a variable so
 * that bundlers for the browser, which has a WebSocket, do not try to resolve it. */
async function loadWs() {
    const specifier = "ws";
    const module = (await import(/* @vite-ignore */ /* webpackIgnore: true */ specifier));
    const found = module.WebSocket ?? module.default;
    if (found === undefined)
        throw new TypeError("the ws package exports no WebSocket");
    return found;
}
function write(ws, frame) {
    if (ws.readyState !== OPEN)
        return false;
    try {
        ws.send(JSON.stringify(frame));
        return true;
    }
    catch {
        return false;
    }
}
/** Browsers cannot set headers on a WebSocket, so the token goes in the query (the gateway keeps
 * it out of its logs). */
function withToken(url, token) {
    const parsed = new URL(url);
    parsed.searchParams.set("token", token);
    return parsed.toString();
}
/** The user id the gateway will see (`sub`, else `userId`), read without verifying. */
export function tokenSubject(token) {
    const found = claims(token);
    for (const key of ["sub", "userId"])
        if (typeof found?.[key] === "string")
            return found[key];
    return undefined;
}
/** A JWT's claims, read without verifying (only the gateway can verify). */
function claims(token) {
    try {
        const part = (token.split(".")[1] ?? "").replace(/-/g, "+").replace(/_/g, "/");
        const bytes = Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
        const parsed = JSON.parse(new TextDecoder().decode(bytes));
        return parsed !== null && typeof parsed === "object" ? parsed : undefined;
    }
    catch {
        return undefined; // not a JWT: the gateway will say so
    }
}
function expired(token) {
    const exp = claims(token)?.["exp"];
    return typeof exp === "number" && exp * 1000 < Date.now();
}
function messageOf(error) {
    return error instanceof Error ? error.message : String(error);
}
/** A new random dedupeKey: what send() uses unless given one. An application that shows a message
 * before it is acked (to match the gateway's echo) makes the key first and passes it. */
export function newDedupeKey() {
    const crypto = globalThis.crypto;
    // randomUUID exists only in secure contexts (https, localhost); elsewhere a random hex key does.
    return crypto?.randomUUID?.() ?? randomHex(32);
}
function randomHex(length) {
    let out = "";
    while (out.length < length)
        out += Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, "0");
    return out.slice(0, length);
}
function pause(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}
