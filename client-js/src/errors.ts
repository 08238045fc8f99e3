/**
 * Everything the client rejects a promise with, in one hierarchy:
 *
 *     ClientError
 *     ├── RequestError       the gateway answered with an `error` frame (`code`, `details`, `retryable`)
 *     ├── RequestTimeout     no reply in time; for a send, retrying with the same dedupeKey is safe
 *     ├── BufferFull         disconnected, and the outgoing buffer holds `maxBuffered` requests
 *     ├── ConnectionLost     the socket dropped under a request that is not resent (ping, refresh)
 *     └── ClientClosed       close() was called, or the client gave up (`code` says why)
 */

import type { ErrorPayload } from "./frames.js";

export class ClientError extends Error {
  override name = "ClientError";
}

export class RequestError extends ClientError {
  override name = "RequestError";
  readonly code: string;
  readonly details: unknown;
  readonly payload: ErrorPayload;

  constructor(payload: ErrorPayload) {
    super(`${payload.code}: ${payload.message}`);
    this.code = payload.code;
    this.details = payload.details;
    this.payload = payload;
  }

  /** The same request may succeed later (`unavailable`: Redis or the application's backend could not
   * answer; `rate_limited`; `ingest_failed`); otherwise (`rejected`, `forbidden_room`, `rpc_failed`,
   * ...) sending it again as it is gets the same answer. */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}

const RETRYABLE: ReadonlySet<string> = new Set(["unavailable", "rate_limited", "ingest_failed"]);

export class RequestTimeout extends ClientError {
  override name = "RequestTimeout";
  readonly dedupeKey: string | undefined;

  constructor(message: string, dedupeKey?: string) {
    super(message);
    this.dedupeKey = dedupeKey;
  }
}

export class BufferFull extends ClientError {
  override name = "BufferFull";
}

export class ConnectionLost extends ClientError {
  override name = "ConnectionLost";
}

export class ClientClosed extends ClientError {
  override name = "ClientClosed";
  readonly code: number | undefined;

  constructor(message: string, code?: number) {
    super(message);
    this.code = code;
  }
}
