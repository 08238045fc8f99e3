/** @realtime-gateway/client: the typed JavaScript client of Realtime Gateway (docs/client.md). */
export { Backoff } from "./backoff.js";
export { GatewayClient, newDedupeKey, tokenSubject, } from "./client.js";
export { Emitter } from "./emitter.js";
export { SseSocket, streamUrl } from "./sse.js";
export { Roster } from "./members.js";
export { BufferFull, ClientClosed, ClientError, ConnectionLost, RequestError, RequestTimeout } from "./errors.js";
export { CLIENT_TYPES, CLOSE_CODES, ERROR_CODES, SERVER_TYPES, closeAction, } from "./protocol.js";
