/**
 * SseSocket: the gateway's HTTP transport (docs/protocol.md, "HTTP transport") behind the same
 * WebSocketLike face as a WebSocket, so the client above it does not know which one it holds.
 *
 * - the stream is `GET /sse` read with fetch (not EventSource: fetch sends the token as a header,
 *   not in a URL that proxies log, reads the status of a refusal, and Node has it without a
 *   package); its `session` event is the open, every other event a frame, its `closed` event the
 *   close code a WebSocket would have had;
 * - frames go out as `POST /sse/send` with the session's id: one request at a time, the frames sent
 *   meanwhile together in the next (at most MAX_BATCH frames and MAX_BATCH_CHARS), so they reach
 *   the gateway in order. A 429 or 503 is waited out (Retry-After) and the same frames sent again; a
 *   413 halves the batch (a lone frame the gateway finds too big is dropped: its request times out);
 *   a 404 or anything else ends the session like a dropped socket (the client re-sends what was in
 *   flight on the next one).
 *
 * Limits: an event larger than MAX_EVENT_CHARS ends the stream (the gateway's frames are far smaller).
 */

import type { WebSocketLike } from "./client.js";

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;
const MAX_BATCH = 20; // frames per POST: half the gateway's default RATE_BURST
const MAX_BATCH_CHARS = 64 * 1024; // a quarter of its default SSE_SEND_BYTES
const MAX_RETRIES = 10; // 429 or 503 answers in a row for one batch before the session is given up
const MAX_EVENT_CHARS = 8 * 1024 * 1024;

export type FetchLike = typeof fetch;

export class SseSocket implements WebSocketLike {
  readyState = CONNECTING;
  /* eslint-disable @typescript-eslint/no-explicit-any */
  onopen: ((event: any) => void) | null = null;
  onmessage: ((event: any) => void) | null = null;
  onclose: ((event: any) => void) | null = null;
  onerror: ((event: any) => void) | null = null;
  /* eslint-enable @typescript-eslint/no-explicit-any */

  private readonly aborter = new AbortController();
  private readonly streamUrl: string;
  private readonly headers: Record<string, string> = {};
  private sendUrl = "";
  private sessionId = "";
  private outbox: string[] = [];
  private posting = false;
  private waitTimer: ReturnType<typeof setTimeout> | undefined;
  private wake: (() => void) | null = null;
  private closedWith: { code: number; reason: string } | null = null;

  /** `url`: the gateway's WebSocket URL (ws:// or wss://, the token in its query); the stream is at
   * its `/sse`, the token then goes as `Authorization: Bearer`. */
  constructor(url: string, private readonly fetcher: FetchLike = globalThis.fetch.bind(globalThis)) {
    const parsed = new URL(streamUrl(url));
    const token = parsed.searchParams.get("token");
    if (token !== null) {
      parsed.searchParams.delete("token");
      this.headers["Authorization"] = `Bearer ${token}`;
    }
    this.streamUrl = parsed.toString();
    void this.read().catch(() => this.end(1006, "the stream failed"));
  }

  send(data: string): void {
    if (this.readyState !== OPEN) throw new Error("the stream is not open");
    this.outbox.push(data);
    if (!this.posting) queueMicrotask(() => void this.post().catch(() => this.end(1006, "sending failed")));
  }

  close(code = 1000, reason = ""): void {
    this.end(code, reason);
  }

  private async read(): Promise<void> {
    let response: Response;
    try {
      response = await this.fetcher(this.streamUrl, {
        headers: { Accept: "text/event-stream", ...this.headers },
        credentials: "include", // the connect hook's cookie, also on another origin
        cache: "no-store",
        signal: this.aborter.signal,
      });
    } catch {
      this.end(1006, "could not reach the stream");
      return;
    }
    if (!response.ok || response.body === null) {
      // A WebSocket's refusal is a bare 1006; here the status says why (a 401: the token).
      this.end(1006, `the stream was refused: HTTP ${response.status}${await errorOf(response)}`);
      return;
    }
    let buffer = "";
    try {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.readyState === CLOSED) break;
        // Line ends may be CRLF or CR too (a proxy's); a CR last in a chunk may be half of a CRLF.
        buffer += value;
        const held = buffer.endsWith("\r") ? "\r" : "";
        let text = (held ? buffer.slice(0, -1) : buffer).replace(/\r\n?/g, "\n");
        let end: number;
        while ((end = text.indexOf("\n\n")) >= 0) {
          this.event(text.slice(0, end));
          text = text.slice(end + 2);
        }
        buffer = text + held;
        if (buffer.length > MAX_EVENT_CHARS) break;
      }
    } catch {
      // cut, or aborted by close(): ended below
    }
    this.end(1006, "the stream ended");
  }

  private event(block: string): void {
    const data = block
      .split("\n")
      .filter((line) => line === "data" || line.startsWith("data:"))
      .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
      .join("\n");
    if (data === "" || this.readyState === CLOSED) return; // a heartbeat comment
    let frame: { type?: unknown; payload?: Record<string, unknown> };
    try {
      frame = JSON.parse(data) as typeof frame;
    } catch {
      return; // not the gateway's: ignored, as a WebSocket client ignores a frame it cannot read
    }
    if (this.readyState === CONNECTING) {
      const sessionId = frame.payload?.["sessionId"];
      if (frame.type !== "session" || typeof sessionId !== "string") {
        this.end(1006, "the stream did not begin with its session");
        return;
      }
      this.sessionId = sessionId;
      this.sendUrl = sendUrlOf(this.streamUrl, frame.payload?.["sendUrl"]);
      this.readyState = OPEN;
      this.onopen?.({});
      return;
    }
    if (frame.type === "closed") {
      const { code, reason } = (frame.payload ?? {}) as { code?: unknown; reason?: unknown };
      this.closedWith = { code: typeof code === "number" ? code : 1006, reason: typeof reason === "string" ? reason : "" };
      this.readyState = CLOSING; // nothing more is sent: the session is over
      this.outbox = [];
      return;
    }
    this.onmessage?.({ data });
  }

  private async post(): Promise<void> {
    if (this.posting) return;
    this.posting = true;
    try {
      let size = MAX_BATCH;
      let retries = 0;
      while (this.outbox.length > 0 && this.readyState === OPEN) {
        const batch = this.take(size);
        const answer = await this.deliver(batch);
        if (answer === "gone") return; // end() said why
        if (answer === "too big") {
          if (batch.length === 1) this.outbox.shift(); // the gateway will not take it (MAX_MESSAGE_BYTES)
          size = Math.max(1, Math.floor(batch.length / 2));
          continue;
        }
        if (typeof answer === "number") {
          if (++retries > MAX_RETRIES) {
            this.end(1006, "the gateway kept refusing the frames");
            return;
          }
          await this.pause(answer);
          continue; // the same frames again
        }
        this.outbox.splice(0, batch.length);
        size = MAX_BATCH;
        retries = 0;
      }
    } finally {
      this.posting = false;
    }
  }

  /** The first frames of the outbox, at most `count` of them and MAX_BATCH_CHARS (at least one). */
  private take(count: number): string[] {
    const batch: string[] = [];
    let chars = 2;
    for (const frame of this.outbox) {
      if (batch.length >= count || (batch.length > 0 && chars + frame.length + 1 > MAX_BATCH_CHARS)) break;
      batch.push(frame);
      chars += frame.length + 1;
    }
    return batch;
  }

  /** "sent"; ms to wait before sending the same again (429, 503); "too big" (413); "gone". */
  private async deliver(batch: string[]): Promise<"sent" | "too big" | "gone" | number> {
    let response: Response;
    try {
      response = await this.fetcher(this.sendUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Session-Id": this.sessionId },
        body: batch.length === 1 ? batch[0] : `[${batch.join(",")}]`,
        credentials: "include",
        signal: this.aborter.signal,
      });
    } catch {
      this.end(1006, "could not send");
      return "gone";
    }
    const status = response.status;
    if (status === 202 || status === 413 || status === 429 || status === 503) {
      await response.body?.cancel().catch(() => {});
      if (status === 202) return "sent";
      if (status === 413) return "too big";
      return Math.max(1, Number(response.headers.get("Retry-After")) || 1) * 1000;
    }
    this.end(1006, `sending was refused: HTTP ${status}${await errorOf(response)}`);
    return "gone";
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.waitTimer = setTimeout(resolve, ms);
    });
  }

  private end(code: number, reason: string): void {
    if (this.readyState === CLOSED) return;
    const closed = this.closedWith; // the gateway's own code wins over what ended the stream after it
    this.readyState = CLOSED;
    this.outbox = [];
    clearTimeout(this.waitTimer);
    this.wake?.();
    this.aborter.abort();
    const event = closed ?? { code, reason };
    setTimeout(() => this.onclose?.(event), 0); // after the caller, as a WebSocket's close event
  }
}

/** The stream's URL from the WebSocket's: the same host and query, `/sse` in place of `/ws` (or `/`). */
export function streamUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.protocol === "ws:") parsed.protocol = "http:";
  else if (parsed.protocol === "wss:") parsed.protocol = "https:";
  parsed.pathname = parsed.pathname.replace(/(\/ws)?\/?$/, "/sse");
  return parsed.toString();
}

/** Where the frames go: the gateway's `sendUrl` (`/sse/send`) under the stream's own path prefix, so
 * a gateway served at `https://host/chat/` is posted to at `/chat/sse/send`. */
function sendUrlOf(stream: string, sendUrl: unknown): string {
  const parsed = new URL(stream);
  const path = typeof sendUrl === "string" && sendUrl.startsWith("/") ? sendUrl : "/sse/send";
  parsed.pathname = parsed.pathname.replace(/\/sse$/, "") + path;
  parsed.search = "";
  return parsed.toString();
}

async function errorOf(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { error?: unknown };
    return typeof body.error === "string" ? `: ${body.error}` : "";
  } catch {
    return "";
  }
}
