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
function countOf(room) {
    return room.complete ? room.members.size : room.told;
}
export class Roster {
    rooms = new Map();
    members(roomId) {
        return [...(this.rooms.get(roomId)?.members.values() ?? [])];
    }
    count(roomId) {
        const room = this.rooms.get(roomId);
        return room === undefined ? 0 : countOf(room);
    }
    snapshot(roomId, members, count, more) {
        const before = this.rooms.get(roomId)?.members ?? new Map();
        const now = { members: new Map(members.map((m) => [m.userId, m])), told: count ?? members.length, complete: !more };
        this.rooms.set(roomId, now);
        const joined = [...now.members.keys()].filter((u) => !before.has(u)).sort();
        // On a partial page, a user missing from it may simply be on another page: not "left".
        const left = now.complete ? [...before.keys()].filter((u) => !now.members.has(u)).sort() : [];
        return { roomId, joined, left, count: countOf(now), complete: now.complete, source: "snapshot" };
    }
    presence(roomId, userId, status, at) {
        const room = this.rooms.get(roomId);
        if (room === undefined)
            return null; // not a room we hold a snapshot of (joined, not yet answered)
        const listed = room.members.has(userId);
        if (status === "offline") {
            if (!listed && room.complete)
                return null;
            room.members.delete(userId);
            room.told = Math.max(0, room.told - 1);
            return { roomId, joined: [], left: listed ? [userId] : [], count: countOf(room), complete: room.complete, source: "presence" };
        }
        room.members.set(userId, { userId, status, since: at });
        const entered = !listed && status === "online";
        if (entered)
            room.told += 1;
        return { roomId, joined: entered ? [userId] : [], left: [], count: countOf(room), complete: room.complete, source: "presence" };
    }
    counted(roomId, count) {
        const room = this.rooms.get(roomId);
        if (room === undefined)
            return null;
        room.told = count;
        room.complete = false;
        room.members.clear();
        return { roomId, joined: [], left: [], count, complete: false, source: "count" };
    }
    forget(roomId) {
        this.rooms.delete(roomId);
    }
}
