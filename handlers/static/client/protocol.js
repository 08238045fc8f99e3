/**
 * The protocol's names (docs/protocol.md): frame types, error codes and what a client does after
 * each close code. The server's copy is schemas/protocol.py; tests/test_protocol_names.py checks
 * that the two agree.
 */
export const CLIENT_TYPES = [
    "join",
    "leave",
    "message",
    "presence",
    "presence_query",
    "history",
    "refresh",
    "rpc",
    "ping",
];
export const SERVER_TYPES = [
    "message",
    "message_updated",
    "message_deleted",
    "ack",
    "room_update",
    "presence",
    "presence_state",
    "presence_count",
    "history",
    "token_expiring",
    "refreshed",
    "rpc_result",
    "pong",
    "error",
];
export const ERROR_CODES = [
    "invalid_json",
    "invalid_frame",
    "unknown_type",
    "validation_failed",
    "not_in_room",
    "forbidden_room",
    "too_many_rooms",
    "rate_limited",
    "ingest_failed",
    "unavailable",
    "invalid_token",
    "rejected",
    "rpc_failed",
    "not_enabled",
    "internal",
];
/** Every close code the gateway sends, with its meaning and what a client should do about it. */
export const CLOSE_CODES = {
    1000: { reason: "normal", action: "retry" },
    1002: { reason: "a frame broke RFC 6455", action: "give_up" },
    1007: { reason: "a text frame that is not UTF-8", action: "give_up" },
    1008: { reason: "repeated invalid or rate-limited frames", action: "give_up" },
    1009: { reason: "a frame over MAX_MESSAGE_BYTES", action: "give_up" },
    1011: { reason: "internal error", action: "retry" },
    1012: { reason: "the instance is restarting (drain)", action: "retry" },
    4001: { reason: "the token expired", action: "refresh" },
    4003: { reason: "revoked: the user was disconnected or the token revoked", action: "give_up" },
    4008: { reason: "slow consumer: the outbound queue passed its bound", action: "retry" },
    4029: { reason: "too many connections for this user", action: "give_up" },
};
/**
 * What to do after the socket closed with `code`. Codes the gateway does not send (1006: the
 * connection dropped, or the upgrade was refused, which browsers do not let a page tell apart)
 * are retried: a network that comes back must find the client trying.
 */
export function closeAction(code) {
    return CLOSE_CODES[code]?.action ?? "retry";
}
