/** @realtime-gateway/client: the typed JavaScript client of Realtime Gateway (docs/client.md). */

export { Backoff, type BackoffOptions } from "./backoff.js";
export {
  GatewayClient,
  newDedupeKey,
  tokenSubject,
  type ClientEvents,
  type ClientOptions,
  type ClientState,
  type Disconnected,
  type Recovery,
  type SendOptions,
  type TokenProvider,
  type Transport,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export { Emitter, type Listener } from "./emitter.js";
export { SseSocket, streamUrl, type FetchLike } from "./sse.js";
export { Roster, type MembersChanged } from "./members.js";
export { BufferFull, ClientClosed, ClientError, ConnectionLost, RequestError, RequestTimeout } from "./errors.js";
export type * from "./frames.js";
export {
  CLIENT_TYPES,
  CLOSE_CODES,
  ERROR_CODES,
  SERVER_TYPES,
  closeAction,
  type ClientType,
  type CloseAction,
  type CloseCode,
  type ErrorCode,
  type ServerType,
} from "./protocol.js";
