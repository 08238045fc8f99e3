/**
 * The payloads of the gateway's frames, as typed objects (docs/protocol.md; the machine-readable
 * form is docs/asyncapi.yaml). Fields a newer gateway adds are kept on the objects as they come.
 */

export interface Attachment {
  url: string;
  type?: string;
  name?: string;
  size?: number;
}

/** A room's position in its history: the last entry's offset and the history's epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

export interface Message {
  id: string;
  roomId: string;
  senderType: string;
  senderId: string;
  content: string;
  attachments: Attachment[];
  createdAt: string;
  dedupeKey?: string;
  offset?: number;
  epoch?: string;
}

export interface MessageUpdated {
  id: string;
  roomId: string;
  content?: string;
  attachments?: Attachment[];
  updatedAt?: string;
  offset?: number;
  epoch?: string;
}

export interface MessageDeleted {
  id: string;
  roomId: string;
  deletedAt?: string;
  offset?: number;
  epoch?: string;
}

export interface Ack {
  id: string;
  roomId: string;
  createdAt: string;
  dedupeKey?: string;
}

export type RoomAction = "joined" | "left" | "removed" | "deleted" | "updated";

export interface RoomUpdate {
  roomId: string;
  action: RoomAction;
  recovered?: boolean;
  offset?: number;
  epoch?: string;
  changes?: Record<string, unknown>;
  reason?: string;
}

export type PresenceStatus = "online" | "typing" | "idle" | "offline";

export interface Presence {
  roomId: string;
  userId: string;
  status: PresenceStatus;
  at: string;
}

export interface Member {
  userId: string;
  status: PresenceStatus;
  since: string;
}

export interface PresenceState {
  roomId: string;
  count: number;
  members: Member[];
  next?: string;
}

export interface PresenceCount {
  roomId: string;
  count: number;
}

export interface HistoryEntry {
  type: "message" | "message_updated" | "message_deleted";
  payload: Message | MessageUpdated | MessageDeleted;
}

export interface History {
  roomId: string;
  offset?: number;
  epoch?: string;
  entries: HistoryEntry[];
}

export interface TokenExpiring {
  expiresAt: string;
}

export interface Refreshed {
  expiresAt: string;
}

/** The application backend's answer to an `rpc` (docs/hooks.md). */
export interface RpcResult {
  method: string;
  data: unknown;
}

export type Pong = Record<string, never>;

export interface ErrorPayload {
  message: string;
  code: string;
  roomId?: string;
  dedupeKey?: string;
  details?: unknown;
}

/** Every server frame type with its payload. */
export interface ServerPayloads {
  message: Message;
  message_updated: MessageUpdated;
  message_deleted: MessageDeleted;
  ack: Ack;
  room_update: RoomUpdate;
  presence: Presence;
  presence_state: PresenceState;
  presence_count: PresenceCount;
  history: History;
  token_expiring: TokenExpiring;
  refreshed: Refreshed;
  rpc_result: RpcResult;
  pong: Pong;
  error: ErrorPayload;
}

/** A frame as it travels: `requestId` is the one the client sent, on the reply to that frame. */
export interface Frame<T = unknown> {
  type: string;
  payload: T;
  requestId?: string;
}
