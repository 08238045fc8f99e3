/**
 * SseSocket: the gateway's HTTP transport (docs/protocol.md, "HTTP transport") behind the same
 * WebSocketLike face as a WebSocket, so the client above it does not know which one it holds.
 *
 * - the stream is `GET /sse` read with fetch (not EventSource: fetch sends cookies and reads the
 *   status of a refusal, and Node has it without a package); its `session` event is the open,
 *   every other event a frame, its `closed` event the close code a WebSocket would have had;
 * - frames go out as `POST /sse/send` with the session's id: one request at a time, the frames
 *   sent meanwhile together in the next (at most MAX_BATCH), so they reach the gateway in order;
 *   a 429 is waited out (Retry-After) and the same frames sent again; any other refusal ends the
 *   session like a dropped socket (the client re-sends what was in flight on the next one).
 *
 * Limits: an event larger than MAX_EVENT_CHARS ends the stream (the gateway's frames are far smaller).
 */

import type { WebSocketLike } from "./client.js";

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;
const MAX_BATCH = 20; // frames per POST: half the gateway's default RATE_BURST
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
  private sendUrl = "";
  private sessionId = "";
  private outbox: string[] = [];
  private posting = false;
  private closedWith: { code: number; reason: string } | null = null;

  /** `url`: the gateway's WebSocket URL (ws:// or wss://, token in the query); the stream is at its `/sse`. */
  constructor(url: string, private readonly fetcher: FetchLike = globalThis.fetch.bind(globalThis)) {
    this.streamUrl = streamUrl(url);
    void this.read();
  }

  send(data: string): void {
    if (this.readyState !== OPEN) throw new Error("the stream is not open");
    this.outbox.push(data);
    if (!this.posting) queueMicrotask(() => void this.post()); // the frames of this turn go together
  }

  close(code = 1000, reason = ""): void {
    this.end(code, reason);
  }

  private async read(): Promise<void> {
    let response: Response;
    try {
      response = await this.fetcher(this.streamUrl, {
        headers: { Accept: "text/event-stream" },
        credentials: "include", // the connect hook's cookie, also on another origin
        cache: "no-store",
        signal: this.aborter.signal,
      });
    } catch {
      this.fail("could not reach the stream");
      return;
    }
    if (!response.ok || response.body === null) {
      this.fail(`the stream was refused: HTTP ${response.status}${await errorOf(response)}`);
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.readyState === CLOSED) break;
        buffer += value;
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.event(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
        if (buffer.length > MAX_EVENT_CHARS) break;
      }
    } catch {
      // cut, or aborted by close(): ended below
    }
    const closed = this.closedWith;
    this.end(closed?.code ?? 1006, closed?.reason ?? "");
  }

  private event(block: string): void {
    const data = block
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
      .join("\n");
    if (data === "" || this.readyState === CLOSED) return; // a heartbeat comment
    if (this.readyState === CONNECTING) {
      const first = JSON.parse(data) as { type?: string; payload?: { sessionId?: string; sendUrl?: string } };
      if (first.type !== "session" || typeof first.payload?.sessionId !== "string") {
        this.fail("the stream did not begin with its session");
        return;
      }
      this.sessionId = first.payload.sessionId;
      this.sendUrl = new URL(first.payload.sendUrl ?? "/sse/send", this.streamUrl).toString();
      this.readyState = OPEN;
      this.onopen?.({});
      return;
    }
    if (data.startsWith('{"type":"closed"')) {
      const payload = (JSON.parse(data) as { payload: { code: number; reason: string } }).payload;
      this.closedWith = { code: payload.code, reason: payload.reason };
      return;
    }
    this.onmessage?.({ data });
  }

  private async post(): Promise<void> {
    if (this.posting) return;
    this.posting = true;
    try {
      while (this.outbox.length > 0 && this.readyState === OPEN) {
        const batch = this.outbox.slice(0, MAX_BATCH);
        const wait = await this.deliver(batch);
        if (wait === null) return; // the session is gone: end() said so
        if (wait > 0) {
          await new Promise((resolve) => setTimeout(resolve, wait));
          continue; // the same frames again
        }
        this.outbox.splice(0, batch.length);
      }
    } finally {
      this.posting = false;
    }
  }

  /** 0: delivered; > 0: ms to wait before sending the same again (429); null: the session ended. */
  private async deliver(batch: string[]): Promise<number | null> {
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
      return null;
    }
    if (response.status === 202) {
      await response.body?.cancel();
      return 0;
    }
    if (response.status === 429) {
      await response.body?.cancel();
      return Math.max(1, Number(response.headers.get("Retry-After")) || 1) * 1000;
    }
    this.end(1006, `sending was refused: HTTP ${response.status}${await errorOf(response)}`);
    return null;
  }

  private fail(reason: string): void {
    if (this.readyState === CONNECTING) this.onerror?.({});
    this.end(1006, reason);
  }

  private end(code: number, reason: string): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.outbox = [];
    this.aborter.abort();
    setTimeout(() => this.onclose?.({ code, reason }), 0); // after the caller, as a WebSocket's close event
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

async function errorOf(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { error?: unknown };
    return typeof body.error === "string" ? `: ${body.error}` : "";
  } catch {
    return "";
  }
}
