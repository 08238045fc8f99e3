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
export class ClientError extends Error {
    name = "ClientError";
}
export class RequestError extends ClientError {
    name = "RequestError";
    code;
    details;
    payload;
    constructor(payload) {
        super(`${payload.code}: ${payload.message}`);
        this.code = payload.code;
        this.details = payload.details;
        this.payload = payload;
    }
    /** The same request may succeed later (`unavailable`: Redis or the application's backend could not
     * answer; `rate_limited`; `ingest_failed`); otherwise (`rejected`, `forbidden_room`, `rpc_failed`,
     * ...) sending it again as it is gets the same answer. */
    get retryable() {
        return RETRYABLE.has(this.code);
    }
}
const RETRYABLE = new Set(["unavailable", "rate_limited", "ingest_failed"]);
export class RequestTimeout extends ClientError {
    name = "RequestTimeout";
    dedupeKey;
    constructor(message, dedupeKey) {
        super(message);
        this.dedupeKey = dedupeKey;
    }
}
export class BufferFull extends ClientError {
    name = "BufferFull";
}
export class ConnectionLost extends ClientError {
    name = "ConnectionLost";
}
export class ClientClosed extends ClientError {
    name = "ClientClosed";
    code;
    constructor(message, code) {
        super(message);
        this.code = code;
    }
}
