/**
 * Who is online in each joined room, as the client has been told: the same rules as the Python
 * SDK's members.py, checked by both against tests/conformance/client.json.
 *
 * - A room's snapshot (`presence_state` without a requestId: the first page, sent after each join)
 *   replaces what was known. `complete`: it listed everybody (no `next`).
 * - `presence`: `offline` removes the user, any other status adds or updates them. The count
 *   follows a complete list. On a partial one (a first page) `offline` takes one off, whoever it
 *   names, and `online` from a user not listed adds one (the gateway says `online` when a user
 *   enters the room); `typing` or `idle` from a user not listed is someone from another page:
 *   listed, not counted, not "joined".
 * - `presence_count` (a room over the gateway's broadcast limit): the count, and the list is
 *   emptied: per-user frames stop until the next snapshot, so nobody on it could be taken off when
 *   they go.
 * - Leaving the room (left, removed, deleted) forgets it. Replies to `presence_query` change
 *   nothing: the application asked for a page, it did not learn of a change.
 */

import type { Member, PresenceStatus } from "./frames.js";

/** What one frame changed in a room's list (the `members_changed` event). */
export interface MembersChanged {
  roomId: string;
  /** Users who appeared on the list, sorted. */
  joined: string[];
  /** Users who left it (on a partial list, only those announced offline), sorted. */
  left: string[];
  /** Users online in the room on every instance. */
  count: number;
  /** The list holds everybody online (false in a paged or large room). */
  complete: boolean;
  /** What changed it: the list sent after a join, one user's presence frame, a large room's count.
   * An application says "X joined" for `presence` only. */
  source: "snapshot" | "presence" | "count";
}

interface Room {
  members: Map<string, Member>;
  /** The count the gateway last said (a complete list counts itself instead). */
  told: number;
  complete: boolean;
}

function countOf(room: Room): number {
  return room.complete ? room.members.size : room.told;
}

export class Roster {
  private readonly rooms = new Map<string, Room>();

  members(roomId: string): Member[] {
    return [...(this.rooms.get(roomId)?.members.values() ?? [])];
  }

  count(roomId: string): number {
    const room = this.rooms.get(roomId);
    return room === undefined ? 0 : countOf(room);
  }

  snapshot(roomId: string, members: Member[], count: number | undefined, more: boolean): MembersChanged {
    const before = this.rooms.get(roomId)?.members ?? new Map<string, Member>();
    const now: Room = { members: new Map(members.map((m) => [m.userId, m])), told: count ?? members.length, complete: !more };
    this.rooms.set(roomId, now);
    const joined = [...now.members.keys()].filter((u) => !before.has(u)).sort();
    // On a partial page, a user missing from it may simply be on another page: not "left".
    const left = now.complete ? [...before.keys()].filter((u) => !now.members.has(u)).sort() : [];
    return { roomId, joined, left, count: countOf(now), complete: now.complete, source: "snapshot" };
  }

  presence(roomId: string, userId: string, status: PresenceStatus, at: string): MembersChanged | null {
    const room = this.rooms.get(roomId);
    if (room === undefined) return null; // not a room we hold a snapshot of (joined, not yet answered)
    const listed = room.members.has(userId);
    if (status === "offline") {
      if (!listed && room.complete) return null;
      room.members.delete(userId);
      room.told = Math.max(0, room.told - 1);
      return { roomId, joined: [], left: listed ? [userId] : [], count: countOf(room), complete: room.complete, source: "presence" };
    }
    room.members.set(userId, { userId, status, since: at });
    const entered = !listed && status === "online";
    if (entered) room.told += 1;
    return { roomId, joined: entered ? [userId] : [], left: [], count: countOf(room), complete: room.complete, source: "presence" };
  }

  counted(roomId: string, count: number): MembersChanged | null {
    const room = this.rooms.get(roomId);
    if (room === undefined) return null;
    room.told = count;
    room.complete = false;
    room.members.clear();
    return { roomId, joined: [], left: [], count, complete: false, source: "count" };
  }

  forget(roomId: string): void {
    this.rooms.delete(roomId);
  }
}
