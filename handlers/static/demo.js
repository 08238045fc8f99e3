// Realtime Gateway demo page: the DOM side of a chat, on the project's JavaScript client
// (client-js, built into ./client/ by `scripts/node.sh demo`). The client speaks the protocol
// (docs/protocol.md): replies, reconnects, re-joins with recovery, refresh, the outgoing buffer.
// Every piece of text that came from a user or the network is put in the page with textContent /
// text nodes, never as HTML.
import { BufferFull, GatewayClient, RequestError, newDedupeKey, tokenSubject } from "./client/index.js";

const NAME_RE = /^[A-Za-z0-9_.@-]{1,64}$/;
const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const TYPING_EVERY_MS = 2500; // re-send `typing` while typing; the gateway lapses it after TYPING_TTL (6 s)
const params = new URLSearchParams(location.search);
// ?idle=SECONDS shortens the one minute without keyboard or pointer activity that makes us idle.
const IDLE_AFTER_MS = Number(params.get("idle")) > 0 ? Number(params.get("idle")) * 1000 : 60000;
const REPLY_WITHIN_MS = 120000; // a message typed offline waits this long for the gateway to come back
// "X left" waits this long: someone whose connection blips (or whose gateway restarts) and who is
// back within it was never gone, so neither "left" nor "joined" is said.
const GRACE = params.get("grace"); // ?grace=SECONDS changes it
const LEFT_NOTE_AFTER_MS = GRACE !== null && Number(GRACE) >= 0 ? Number(GRACE) * 1000 : 5000;
// Someone missing from the list after our own re-join was most likely dropped by the same restart or
// outage and is on their way back: their client retries within 15 s (client-js's longest backoff).
const BACK_WITHIN_MS = 20000;
const AWAY_SHOWN = 50; // users who left a room, shown greyed until back (the oldest go first)
const HISTORY_MAX = 100; // the most entries one `history` request returns

// Close codes from the protocol (docs/protocol.md): what to tell the user. Whether to retry is the
// client's to decide (closeAction in client-js).
const CLOSE_TEXT = {
  1000: "Disconnected.",
  1001: "The gateway went away.",
  1002: "The gateway could not read what this page sent.",
  1006: "Connection lost.",
  1007: "The gateway received text that is not UTF-8.",
  1008: "The gateway closed the connection after repeated invalid frames.",
  1009: "A message was too big for the gateway.",
  1011: "The gateway hit an internal error.",
  1012: "The gateway is restarting.",
  4001: "Your token expired.",
  4003: "You were signed out by the server.",
  4008: "The connection fell too far behind.",
  4029: "Too many connections for this user: close some other tabs.",
};
const ERROR_TEXT = {
  invalid_json: "The gateway could not read a frame",
  invalid_frame: "The gateway rejected a frame",
  unknown_type: "The gateway does not know that request",
  validation_failed: "Not accepted",
  not_in_room: "You are not in that room",
  forbidden_room: "You may not join that room",
  too_many_rooms: "Too many rooms",
  rate_limited: "Slow down: too many messages",
  ingest_failed: "The message could not be stored",
  unavailable: "The gateway or the chat service cannot answer right now: try again in a moment",
  invalid_token: "The new token was refused",
  rejected: "The chat service did not accept the message",
  rpc_failed: "The chat service refused the request",
  not_enabled: "This gateway does not offer that",
  internal: "The gateway hit an internal error",
};

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $("conn"), connText: $("conn-text"), retryNow: $("retry-now"),
  me: $("me"), meName: $("me-name"), signOut: $("sign-out"),
  alert: $("alert"), alertText: $("alert-text"), alertClose: $("alert-close"),
  login: $("login"), loginForm: $("login-form"), name: $("name"), nameField: $("name-field"),
  firstRoom: $("first-room"), tokenField: $("token-field"), token: $("token"),
  toggleToken: $("toggle-token"), loginError: $("login-error"), loginSubmit: $("login-submit"),
  chat: $("chat"), roomList: $("room-list"), joinForm: $("join-form"), joinRoom: $("join-room"),
  roomTitle: $("room-title"), panes: $("message-panes"), typing: $("typing"),
  composer: $("composer"), message: $("message"), send: $("send"), memberList: $("member-list"),
};

const state = {
  user: null,          // our user id (the token's sub)
  devTokens: true,     // false once /dev/token answered 404: the user pastes tokens
  tokenMode: "dev",    // "dev": fetched from /dev/token; "pasted"
  client: null,        // the GatewayClient of this sign-in
  rooms: new Map(),    // roomId -> Room
  active: null,
  outbox: new Map(),   // dedupeKey -> {li}: our messages not yet echoed or acked
  lastTyping: 0,
  idle: false,
  idleTimer: null,
  countdown: null,     // the interval that ticks "Reconnecting in N s"
};

// ---- DOM helpers: text only ------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "title" || key === "datetime" ||
             key === "type" || key === "role") node.setAttribute(key, String(value));
    else throw new Error(`el(): unsupported property ${key}`); // no event handlers or HTML from data
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function clock(iso) {
  const d = iso ? new Date(iso) : new Date();
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function showAlert(text) {
  ui.alertText.textContent = text;
  ui.alert.hidden = false;
}

function hideAlert() {
  ui.alert.hidden = true;
  ui.alertText.textContent = "";
}

function setConn(stateName, text) {
  ui.conn.dataset.state = stateName;
  ui.connText.textContent = text;
  ui.retryNow.hidden = stateName !== "waiting";
}

// ---- rooms, messages, members ----------------------------------------------------------

function room(roomId) {
  let r = state.rooms.get(roomId);
  if (!r) {
    const list = el("ol", { className: "messages", role: "log", "aria-label": `Messages in #${roomId}`,
                            "data-room": roomId });
    list.hidden = true;
    ui.panes.append(list);
    // Who is online is the client's (client.members, client.memberCount). The page keeps only what
    // it says about people: away: users who left, shown greyed until they are back; leaving:
    // userId -> timer of a "left" note not yet shown; epoch: the history we have seen; restarted:
    // the last close was 1012 and the re-join has not answered yet (see onRecovery).
    r = { id: roomId, joined: false, wanted: true, list, away: new Set(), unread: 0, byId: new Map(),
          leaving: new Map(), epoch: null, restarted: false };
    state.rooms.set(roomId, r);
  }
  return r;
}

function scrollDown(list) {
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  return () => { if (nearBottom) list.scrollTop = list.scrollHeight; };
}

function addNote(roomId, text, bad) {
  const r = room(roomId);
  const keep = scrollDown(r.list);
  r.list.append(el("li", { className: bad ? "note bad" : "note", text }));
  keep();
}

function renderAttachments(attachments) {
  if (!attachments || !attachments.length) return null;
  const list = el("ul", { className: "attachments" });
  for (const a of attachments) {
    // Shown as text, not as a link: a demo must not turn strangers' URLs into clickable things.
    list.append(el("li", { text: `${a.name || a.type || "attachment"}: ${a.url}` }));
  }
  return list;
}

function messageItem(msg, extraClass) {
  const mine = msg.senderId === state.user;
  const li = el("li", { className: `msg${mine ? " mine" : ""}${extraClass ? " " + extraClass : ""}`,
                        "data-id": msg.id || undefined, "data-sender": msg.senderId });
  const time = el("time", { datetime: msg.createdAt || undefined,
                            title: msg.createdAt ? new Date(msg.createdAt).toLocaleString() : undefined,
                            text: msg.createdAt ? clock(msg.createdAt) : "" });
  const meta = el("div", { className: "meta" },
    el("span", { className: "sender", text: msg.senderId }),
    msg.senderType && msg.senderType !== "human" ? el("span", { className: "kind", text: msg.senderType }) : null,
    time,
    el("span", { className: "state", text: "" }));
  li.append(meta, el("div", { className: "body", text: msg.content }));
  const files = renderAttachments(msg.attachments);
  if (files) li.append(files);
  return li;
}

function showMessage(msg) {
  const r = room(msg.roomId);
  if (r.byId.has(msg.id)) return; // already shown (e.g. delivered again after a reconnect)
  const keep = scrollDown(r.list);
  const queued = msg.dedupeKey && msg.senderId === state.user ? state.outbox.get(msg.dedupeKey) : null;
  const li = messageItem(msg);
  if (queued && queued.li.isConnected) {
    queued.li.replaceWith(li); // our own message came back: it is sent
    state.outbox.delete(msg.dedupeKey);
  } else {
    r.list.append(li);
  }
  r.byId.set(msg.id, li);
  keep();
  if (msg.roomId !== state.active) {
    r.unread += 1;
    renderRooms();
  }
}

function updateMessage(p) {
  const li = room(p.roomId).byId.get(p.id);
  if (!li) return;
  if (typeof p.content === "string") {
    li.querySelector(".body").textContent = p.content;
    li.querySelector(".state").textContent = "(edited)";
  }
}

function deleteMessage(p) {
  const li = room(p.roomId).byId.get(p.id);
  if (!li) return;
  const body = li.querySelector(".body");
  body.textContent = "message deleted";
  body.classList.add("deleted");
  const files = li.querySelector(".attachments");
  if (files) files.remove();
}

const STATUS_ORDER = { typing: 0, online: 1, idle: 2, offline: 3 };

function renderMembers() {
  const r = state.rooms.get(state.active);
  const items = [];
  if (r && state.client) {
    const online = state.client.members(r.id);
    const shown = [...online.map((m) => [m.userId, m]),
                   ...[...r.away].filter((u) => !online.some((m) => m.userId === u)).map((u) => [u, { status: "offline" }])];
    const members = shown.sort((a, b) =>
      (STATUS_ORDER[a[1].status] ?? 9) - (STATUS_ORDER[b[1].status] ?? 9) || a[0].localeCompare(b[0]));
    for (const [userId, m] of members) {
      items.push(el("li", { "data-user": userId, "data-status": m.status },
        el("span", { className: "dot", "aria-hidden": "true" }),
        el("span", { className: "name", text: userId === state.user ? `${userId} (you)` : userId }),
        el("span", { className: "status", text: m.status })));
    }
    // A large room lists its first page only, and counts instead of announcing each member. A
    // complete list is its own count: nobody else is online.
    const more = state.client.memberCount(r.id) - online.length;
    if (more > 0) items.push(el("li", { className: "more", text: `${more} more online` }));
  }
  ui.memberList.replaceChildren(...items);
  renderTyping();
}

function renderTyping() {
  const r = state.rooms.get(state.active);
  const names = r && state.client ? state.client.members(r.id)
    .filter((m) => m.status === "typing" && m.userId !== state.user).map((m) => m.userId) : [];
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  ui.typing.textContent = text;
}

function renderRooms() {
  const items = [];
  for (const r of state.rooms.values()) {
    const current = r.id === state.active;
    const label = el("button", { type: "button", className: "room-button", text: `#${r.id}`,
                                 "aria-label": `Open #${r.id}${r.unread ? `, ${r.unread} unread` : ""}` });
    label.addEventListener("click", () => activate(r.id));
    const li = el("li", { "aria-current": current ? "true" : "false", "data-room": r.id,
                          className: r.wanted ? "" : "gone" },
      label,
      r.unread ? el("span", { className: "badge", text: String(r.unread), "aria-hidden": "true" }) : null);
    const verb = r.wanted ? "Leave" : "Close";
    const leave = el("button", { type: "button", className: "icon", text: "×", "aria-label": `${verb} #${r.id}`,
                                 title: `${verb} #${r.id}` });
    leave.addEventListener("click", () => leaveRoom(r.id));
    li.append(leave);
    items.push(li);
  }
  ui.roomList.replaceChildren(...items);
}

function activate(roomId) {
  const r = room(roomId);
  state.active = roomId;
  r.unread = 0;
  for (const other of state.rooms.values()) other.list.hidden = other.id !== roomId;
  ui.roomTitle.textContent = `#${roomId}`;
  ui.message.placeholder = `Message #${roomId}`;
  renderRooms();
  renderMembers();
  r.list.scrollTop = r.list.scrollHeight;
  ui.message.focus();
}

// ---- the client ------------------------------------------------------------------------

function isOpen() {
  return state.client !== null && state.client.state === "open";
}

async function fetchDevToken(name) {
  const res = await fetch(`/dev/token?sub=${encodeURIComponent(name)}`, { cache: "no-store" });
  if (res.status === 404) return { missing: true };
  let body = {};
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error(body.error || `GET /dev/token failed (HTTP ${res.status})`);
  return { token: body.token };
}

// Dev mode: every connection attempt and every token_expiring gets a fresh /dev/token (a
// restarted dev gateway has a new secret). A pasted token is used as it is: at its expiry the
// socket closes 4001 and the page asks for a new one.
function tokenSource(token, mode) {
  if (mode !== "dev") return { token };
  let first = token;
  return {
    getToken: async () => {
      if (first) {
        const t = first;
        first = null;
        return t;
      }
      const got = await fetchDevToken(state.user);
      if (!got.token) throw new Error("the gateway stopped handing out dev tokens");
      return got.token;
    },
  };
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function connect(token, mode) {
  const client = new GatewayClient(socketUrl(), { ...tokenSource(token, mode), timeoutMs: REPLY_WITHIN_MS });
  state.client = client;
  const mine = (listener) => (event) => { if (state.client === client) listener(event); };
  client.on("connecting", mine(() => {
    stopCountdown();
    setConn("connecting", client.connections ? "Reconnecting…" : "Connecting…");
  }));
  client.on("connected", mine((event) => {
    hideAlert();
    ui.conn.dataset.transport = event.transport;
    // The HTTP transport: WebSockets did not get through (a proxy refused the upgrade).
    setConn("open", event.transport === "sse" ? "Connected (HTTP streaming)" : "Connected");
  }));
  client.on("disconnected", mine(onDisconnected));
  client.on("recovery", mine(onRecovery));
  client.on("message", mine(showMessage));
  client.on("message_updated", mine(updateMessage));
  client.on("message_deleted", mine(deleteMessage));
  client.on("room_update", mine(onRoomUpdate));
  client.on("members_changed", mine(onMembersChanged));
  // Errors that answer a request reject its promise (handled there); the others are shown here.
  client.on("frame", mine((frame) => { if (frame.type === "error" && !frame.requestId) showError(frame.payload); }));
  client.connect().catch(() => { /* the disconnected event said why */ });
}

function onDisconnected(d) {
  const client = state.client;
  stopCountdown();
  // Who left while we were away is for the re-join's member list to say, not for notes queued
  // before the drop (a restarting gateway tells everyone that everyone else left).
  for (const r of state.rooms.values()) {
    forgetLeaving(r);
    // A 1012 holds through the failed attempts (1006) that follow it, until the re-join answers.
    if (d.code === 1012) r.restarted = true;
    else if (d.code !== 1006) r.restarted = false;
  }
  // Never got in, over a WebSocket nor over the HTTP transport it falls back to (after two failed
  // WebSocket opens). A browser hides a WebSocket's HTTP status; the stream's says 401 or 403 for a
  // refused token.
  if (client.connections === 0 && (!d.willReconnect || client.transport === "sse")) {
    const refused = /HTTP 40[13]\b/.test(d.reason || "");
    backToLogin(refused || (state.tokenMode === "pasted" && !d.reason.startsWith("could not reach"))
      ? "The gateway refused the connection: check the token (and that it is not expired)."
      : "Could not connect to the gateway.");
    return;
  }
  if (d.code === 4001 && state.tokenMode === "pasted") {
    backToLogin("Your token expired: paste a new one.");
    return;
  }
  const text = CLOSE_TEXT[d.code] || `Connection closed (${d.code}).`;
  if (!d.willReconnect) {
    setConn("failed", "Disconnected");
    showAlert(`${text} (close ${d.code})`);
    return;
  }
  const due = Date.now() + d.delayMs;
  const tick = () => {
    const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
    setConn("waiting", `${text} Reconnecting in ${seconds} s (attempt ${d.attempt})…`);
  };
  tick();
  state.countdown = setInterval(tick, 250);
}

function stopCountdown() {
  clearInterval(state.countdown);
  state.countdown = null;
}

// After a re-join that could not replay what was missed: an in-memory gateway that restarted
// (1012) lost its history, but everything sent since is in its new one, and everything before
// reached this page before the close (Ctrl-C closes every socket at once). Show what the new
// history holds; say "could not be recovered" only when something may really be missing.
async function onRecovery(rec) {
  const r = room(rec.roomId);
  const restarted = r.restarted && r.epoch !== null && rec.epoch !== undefined && rec.epoch !== r.epoch;
  r.restarted = false;
  if (rec.epoch !== undefined) r.epoch = rec.epoch;
  if (rec.recovered) return;
  const since = typeof rec.offset === "number" ? rec.offset : null;
  let complete = since === 0;
  if (restarted && since !== null && since > 0 && since <= HISTORY_MAX) {
    try {
      const h = await state.client.history(rec.roomId, since);
      for (const entry of h.entries) showEntry(entry);
      complete = h.epoch === rec.epoch && h.entries.length > 0 && h.entries[0].payload.offset === 1;
    } catch (_) { /* closed or refused meanwhile: say it could not be recovered */ }
  }
  if (!(restarted && complete)) {
    addNote(rec.roomId, "Messages sent while you were away could not be recovered.", true);
  }
}

function showEntry(entry) {
  if (entry.type === "message") showMessage(entry.payload);
  else if (entry.type === "message_updated") updateMessage(entry.payload);
  else if (entry.type === "message_deleted") deleteMessage(entry.payload);
}

// The client's member list changed (its members_changed event): who left is shown greyed and, unless
// back soon, announced; who appeared is announced only when a presence frame said so (a snapshot
// after a join lists everybody already there).
function onMembersChanged(change) {
  const r = room(change.roomId);
  for (const userId of change.left) {
    if (userId === state.user) continue;
    r.away.add(userId);
    // Greyed entries are a courtesy: a room's churn must not grow the page without bound.
    if (r.away.size > AWAY_SHOWN) r.away.delete(r.away.values().next().value);
    // Missing from the list after our own re-join: maybe not back yet, so a longer grace.
    noteLeaving(r, userId, change.source === "snapshot" ? BACK_WITHIN_MS : LEFT_NOTE_AFTER_MS);
  }
  for (const userId of change.joined) {
    r.away.delete(userId);
    const wasLeaving = cancelLeaving(r, userId);
    if (change.source === "presence" && userId !== state.user && !wasLeaving) addNote(change.roomId, `${userId} joined`);
  }
  if (change.roomId === state.active) renderMembers();
}

// "X left" is said `afterMs` later, unless X is back by then (then nothing is said).
function noteLeaving(r, userId, afterMs = LEFT_NOTE_AFTER_MS) {
  if (r.leaving.has(userId)) return;
  r.leaving.set(userId, setTimeout(() => {
    r.leaving.delete(userId);
    if (state.rooms.get(r.id) === r) addNote(r.id, `${userId} left`);
  }, afterMs));
}

/** True when a "left" note was waiting: the user was away only briefly. */
function cancelLeaving(r, userId) {
  const timer = r.leaving.get(userId);
  if (timer === undefined) return false;
  clearTimeout(timer);
  r.leaving.delete(userId);
  return true;
}

function forgetLeaving(r) {
  for (const timer of r.leaving.values()) clearTimeout(timer);
  r.leaving.clear();
}

function onRoomUpdate(p) {
  const r = room(p.roomId);
  if (p.action === "joined") {
    const first = !r.joined && r.list.childElementCount === 0;
    r.joined = true;
    if (typeof p.epoch === "string" && r.epoch === null) r.epoch = p.epoch; // later ones: onRecovery
    if (first) addNote(p.roomId, `You joined #${p.roomId}`);
  } else if (p.action === "left") {
    r.joined = false;
  } else if (p.action === "removed" || p.action === "deleted") {
    r.joined = false;
    r.wanted = false;
    r.away.clear();
    forgetLeaving(r);
    addNote(p.roomId, p.action === "deleted" ? "This room was deleted." : "You were removed from this room.", true);
  } else if (p.action === "updated") {
    addNote(p.roomId, "Room details were updated.");
  }
  renderRooms();
  if (p.roomId === state.active) renderMembers();
}

function showError(p) {
  const label = ERROR_TEXT[p.code] || "Error";
  let text = `${label}: ${p.message}`;
  if (p.details && typeof p.details === "object") {
    // A backend's refusal carries its reason as the message already (docs/hooks.md): said once.
    const fields = Object.entries(p.details).filter(([k, v]) => !(k === "reason" && v === p.message))
      .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(" ") : JSON.stringify(v)}`);
    if (fields.length) text += ` (${fields.join("; ")})`;
  }
  showAlert(text);
}

// ---- user actions ----------------------------------------------------------------------

function joinRoom(roomId) {
  const r = room(roomId);
  r.wanted = true;
  renderRooms();
  activate(roomId);
  state.client.join(roomId).catch((err) => {
    if (!(err instanceof RequestError)) return; // the client closed: the page says why
    r.wanted = false;
    renderRooms();
    showError(err.payload);
  });
}

function leaveRoom(roomId) {
  const r = state.rooms.get(roomId);
  if (!r) return;
  state.client.leave(roomId).catch(() => { /* closed meanwhile: nothing to leave */ });
  r.list.remove();
  state.rooms.delete(roomId);
  if (state.active === roomId) {
    const next = state.rooms.keys().next();
    if (next.done) {
      state.active = null;
      ui.roomTitle.textContent = "No room";
      renderRooms();
      renderMembers();
    } else {
      activate(next.value);
    }
  } else {
    renderRooms();
  }
}

// The message shows at once as "sending…"; the gateway's echo replaces it (showMessage). Typed
// while disconnected, it waits in the client's buffer and goes out after the re-join, with the
// dedupeKey it was given here, so a resend is never shown twice.
function sendMessage(content) {
  const roomId = state.active;
  if (!roomId) return;
  const dedupeKey = newDedupeKey();
  const li = messageItem({ senderId: state.user, content, createdAt: null, roomId }, "pending");
  li.querySelector(".state").textContent = "sending…";
  const r = room(roomId);
  r.list.append(li);
  r.list.scrollTop = r.list.scrollHeight;
  state.outbox.set(dedupeKey, { li });
  state.client.send(roomId, content, { dedupeKey }).then((ack) => {
    // Normally the echo came first and replaced the draft; still here means it was missed
    // (e.g. a duplicate answered from the dedupe store).
    const queued = state.outbox.get(dedupeKey);
    if (!queued) return;
    queued.li.classList.remove("pending");
    queued.li.querySelector(".state").textContent = "";
    queued.li.querySelector("time").textContent = clock(ack.createdAt);
    state.outbox.delete(dedupeKey);
  }, (err) => {
    const queued = state.outbox.get(dedupeKey);
    if (queued) {
      queued.li.classList.remove("pending");
      queued.li.classList.add("failed");
      queued.li.querySelector(".state").textContent = "not sent";
      state.outbox.delete(dedupeKey);
    }
    if (err instanceof RequestError) showError(err.payload);
    else if (err instanceof BufferFull) showAlert("Too many messages are waiting for the connection: try again once it is back.");
  });
  state.lastTyping = 0;
  state.client.setPresence(roomId, "online"); // stop showing us as typing
}

function onTypingInput() {
  if (!state.active || !isOpen()) return;
  const now = Date.now();
  if (ui.message.value === "") {
    if (state.lastTyping) state.client.setPresence(state.active, "online");
    state.lastTyping = 0;
    return;
  }
  if (now - state.lastTyping >= TYPING_EVERY_MS) {
    state.lastTyping = now;
    state.client.setPresence(state.active, "typing");
  }
}

function noteActivity() {
  if (state.idle && isOpen()) {
    for (const r of state.rooms.values()) if (r.joined) state.client.setPresence(r.id, "online");
  }
  state.idle = false;
  clearTimeout(state.idleTimer);
  state.idleTimer = setTimeout(goIdle, IDLE_AFTER_MS);
}

function goIdle() {
  if (!isOpen()) return;
  state.idle = true;
  for (const r of state.rooms.values()) if (r.joined) state.client.setPresence(r.id, "idle");
}

// ---- login -----------------------------------------------------------------------------

function showTokenField(show) {
  ui.tokenField.hidden = !show;
  ui.nameField.hidden = show;
  ui.toggleToken.setAttribute("aria-expanded", String(show));
  ui.toggleToken.textContent = show ? "Use a name instead" : "Use a token instead";
  ui.toggleToken.hidden = show && !state.devTokens;
  (show ? ui.token : ui.name).focus();
}

function loginError(text) {
  ui.loginError.textContent = text;
  ui.loginError.hidden = !text;
}

function backToLogin(text) {
  stop();
  ui.chat.hidden = true;
  ui.me.hidden = true;
  ui.login.hidden = false;
  setConn("idle", "Not connected");
  if (state.tokenMode === "pasted") showTokenField(true);
  loginError(text || "");
  ui.loginSubmit.disabled = false;
}

function stop() {
  const client = state.client;
  state.client = null; // its last events are ignored from here on
  if (client) client.close();
}

async function onLogin(ev) {
  ev.preventDefault();
  loginError("");
  const firstRoom = ui.firstRoom.value.trim();
  if (!ROOM_RE.test(firstRoom)) {
    loginError("Room: use 1-128 letters, digits and _ . : - (not first).");
    ui.firstRoom.focus();
    return;
  }
  let token;
  let user;
  let mode;
  if (!ui.tokenField.hidden) {
    token = ui.token.value.trim();
    user = tokenSubject(token);
    if (!user) {
      loginError("That does not look like a JWT with a sub claim.");
      ui.token.focus();
      return;
    }
    mode = "pasted";
  } else {
    const name = ui.name.value.trim();
    if (!NAME_RE.test(name)) {
      loginError("Name: use 1-64 letters, digits or _ . @ -");
      ui.name.focus();
      return;
    }
    ui.loginSubmit.disabled = true;
    try {
      const got = await fetchDevToken(name);
      if (got.missing) {
        state.devTokens = false;
        showTokenField(true);
        loginError("This gateway does not hand out dev tokens (it runs with a configured secret). Paste a token.");
        ui.loginSubmit.disabled = false;
        return;
      }
      token = got.token;
    } catch (err) {
      loginError(`Could not get a token: ${err.message}`);
      ui.loginSubmit.disabled = false;
      return;
    }
    user = name;
    mode = "dev";
  }
  start(user, token, mode, firstRoom);
}

function start(user, token, mode, firstRoom) {
  stop();
  state.user = user;
  state.tokenMode = mode;
  for (const r of state.rooms.values()) r.list.remove();
  state.rooms.clear();
  state.outbox.clear();
  ui.meName.textContent = user;
  ui.me.hidden = false;
  ui.login.hidden = true;
  ui.chat.hidden = false;
  ui.loginSubmit.disabled = false;
  connect(token, mode);
  joinRoom(firstRoom); // waits in the client until the socket is open
  noteActivity();
}

// ---- wiring ----------------------------------------------------------------------------

ui.loginForm.addEventListener("submit", onLogin);
ui.toggleToken.addEventListener("click", () => showTokenField(ui.tokenField.hidden));
ui.alertClose.addEventListener("click", hideAlert);
ui.retryNow.addEventListener("click", () => { if (state.client) state.client.retryNow(); });
ui.signOut.addEventListener("click", () => {
  state.tokenMode = state.devTokens ? "dev" : "pasted";
  backToLogin("");
  showTokenField(!state.devTokens);
});
ui.joinForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const roomId = ui.joinRoom.value.trim();
  if (!ROOM_RE.test(roomId)) {
    showAlert("Room names use 1-128 letters, digits and _ . : - (not first).");
    return;
  }
  ui.joinRoom.value = "";
  joinRoom(roomId);
});
ui.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const content = ui.message.value;
  if (!content.trim()) return;
  ui.message.value = "";
  sendMessage(content);
});
ui.message.addEventListener("input", onTypingInput);
for (const type of ["keydown", "pointerdown", "pointermove", "focus"]) {
  window.addEventListener(type, noteActivity, { passive: true });
}

if (params.get("name")) ui.name.value = params.get("name");
if (params.get("room")) ui.firstRoom.value = params.get("room");
ui.name.focus();
