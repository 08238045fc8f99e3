"""JoinHold, the pure logic behind "the join's reply comes first" (services/hub/joins.py)."""

from __future__ import annotations

from services import frames
from services.history import Position
from services.hub.joins import JoinHold, presence_fields


def presence(user: str, status: str, at: str) -> bytes:
    return frames.encode("presence", {"roomId": "r", "userId": user, "status": status, "at": at})


def message(text: str) -> bytes:
    return frames.encode("message", {"roomId": "r", "content": text})


T1, T2, T3 = "2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02.000Z", "2026-01-01T00:00:03.000Z"
NOW = 1767225603.0  # 2026-01-01T00:00:03Z: T1 to T3 are recent changes
SNAPSHOT: list[dict[str, object]] = [{"userId": "ann", "status": "online", "since": T2}]


def test_held_until_release_then_what_the_snapshot_says_is_dropped():
    hold = JoinHold(100)
    held = [
        presence("ann", "online", T2),  # in the snapshot already
        message("m1"),
        presence("bob", "offline", T1),  # not listed: offline is known
        presence("ann", "typing", T3),  # newer than the snapshot: news
    ]
    for frame in held:
        assert hold.admit(frame, presence_fields(frame)) is False
    assert hold.release(SNAPSHOT, NOW) == [held[1], held[3]]


def test_after_release_late_duplicates_are_dropped_and_news_passes():
    hold = JoinHold(100)
    hold.release(SNAPSHOT, NOW)
    late_dup = presence("ann", "online", T1)  # stamped before the snapshot's since
    assert hold.admit(late_dup, presence_fields(late_dup)) is False
    msg = message("m")
    assert hold.admit(msg, None) is True
    news = presence("cat", "online", T3)
    assert hold.admit(news, presence_fields(news)) is True
    gone = presence("cat", "offline", T3)  # cat got through once: no longer filtered
    assert hold.admit(gone, presence_fields(gone)) is True


def test_more_held_than_the_outbound_bound_overflows():
    hold = JoinHold(2)
    for i in range(3):
        frame = message(str(i))
        hold.admit(frame, None)
    assert hold.overflowed
    assert len(hold.release([], NOW)) == 2


def test_a_large_room_keeps_no_snapshot_after_the_join():
    """Holding a member map per joiner for the grace made filling a big room O(N^2) in memory."""
    from services.hub.joins import JOIN_FILTER_MAX_MEMBERS

    big: list[dict[str, object]] = [
        {"userId": f"u{i}", "status": "online", "since": T1} for i in range(JOIN_FILTER_MAX_MEMBERS + 1)
    ]
    hold = JoinHold(100)
    dup = presence("u1", "online", T1)
    hold.admit(dup, presence_fields(dup))
    assert hold.release(big, NOW) == []  # still filtered while it was held
    assert hold.snapshot is None
    small = JoinHold(100)
    small.release(big[:JOIN_FILTER_MAX_MEMBERS], NOW)
    assert small.snapshot is not None


def test_only_recent_changes_are_kept_after_the_join():
    """A member whose state changed long ago has no frame in flight: nothing is kept for them."""
    hold = JoinHold(100)
    hold.release(SNAPSHOT, NOW + 60)
    assert hold.snapshot is None


def test_entries_the_history_already_gave_are_dropped_held_or_late():
    """The joiner was told position 5 (and replayed up to it): entries up to 5 are dropped whether
    they were held or arrive after the release; 6, and any entry of a newer epoch, pass."""
    hold = JoinHold(100)
    early, six = message("5"), message("6")
    assert hold.admit(early, None, Position(5, "e")) is False
    assert hold.admit(six, None, Position(6, "e")) is False
    assert hold.release([], NOW, seen=Position(5, "e")) == [six]
    assert hold.admit(message("4"), None, Position(4, "e")) is False  # late on the bus
    assert hold.admit(message("7"), None, Position(7, "e")) is True
    assert hold.admit(message("new"), None, Position(1, "renewed")) is True
