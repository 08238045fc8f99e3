"""Relay: a POST that reached an instance not holding its stream, handed to the one that does.

No sticky sessions (docs/scaling.md, "The HTTP transport"): every instance listens on a channel
of its own, `relay:<route>`, the route being the first part of the session ids it hands out. An
instance that gets frames for another route publishes them there and waits for the holder's
answer on its own channel:

    {"op": "send", "ref", "replyTo", "session", "sizes"} \n <the frames' JSON, back to back>
                                                            ->  the holder's Inbox
    {"op": "answer", "ref", "status", "error", "accepted", "retryAfter"}   <-  202, 404 or 429

`session` is a digest of the session id (the id is a credential: it does not travel through
Redis), and the holder reads the frames only once it knows the session. Nobody subscribed (Redis
handed the publish to no one) is asked again NOBODY_RETRIES times, a second and a half in all, to
ride out the holder's resubscribe after a Redis blip; then 404, the instance is gone. The bus
down, or no answer within ANSWER_TIMEOUT, is 503 (the frames may have been handled: a client
sends again with the same dedupeKey, which the gateway recognises).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import orjson

from schemas.protocol import relay_channel
from services.bus import Bus, BusEvent
from services.errors import BusError
from services.hub.channels import Subscriptions
from services.hub.tasks import TaskGroup
from services.sse.body import Posted
from services.sse.inbox import GONE, Answer

log = logging.getLogger("gateway.sse")

ANSWER_TIMEOUT = 5.0  # seconds a forwarded POST waits for the holder's answer (then 503)
# Bytes of forwarded frames this instance holds while their answers are awaited: a holder that hangs
# (or a Redis that does) keeps each request's body for up to ANSWER_TIMEOUT plus the retries below,
# so what clients can make an instance hold that way is bounded in bytes, not by their connections
# (MAX_CONNECTIONS_PER_IP x SSE_SEND_BYTES would be 50 MiB for one address). Over it: 503 at once.
FORWARDING_BYTES = 8 * 1024 * 1024
NOBODY_RETRIES = (0.25, 0.5, 0.75)  # waits before publishing again to a channel nobody listened on
ACTION = "relay"


class Relay:
    def __init__(
        self,
        bus: Bus,
        channels: Subscriptions,
        route: str,
        accept: Callable[[str, Callable[[], list[Posted]]], Answer],
        tasks: TaskGroup,
    ) -> None:
        self._bus = bus
        self._channels = channels
        self.route = route
        self._accept = accept
        self._tasks = tasks
        self._refs = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._forwarding = 0  # bytes of the requests in `_waiting`

    async def start(self) -> None:
        """Listen on this instance's channel (resubscribed by the bus after an outage, like every channel)."""
        await self._channels.ensure(relay_channel(self.route))

    async def forward(self, route: str, key: str, posted: list[Posted]) -> Answer:
        """`key`: the session id's digest (Streams.key)."""
        ref = next(self._refs)
        head = {"op": "send", "ref": ref, "replyTo": self.route, "session": key, "sizes": [p.size for p in posted]}
        request = b"".join([orjson.dumps(head), b"\n", *(p.data for p in posted)])
        if self._forwarding + len(request) > FORWARDING_BYTES:
            return Answer(503, "too many frames are on their way to other instances; send again shortly", 0, 1)
        answer = self._waiting[ref] = asyncio.get_running_loop().create_future()
        self._forwarding += len(request)
        try:
            for wait in (*NOBODY_RETRIES, None):
                if await self._publish(route, request):
                    break
                if wait is None:
                    return GONE
                await asyncio.sleep(wait)
            return await asyncio.wait_for(answer, ANSWER_TIMEOUT)
        except BusError:
            return Answer(503, "the session's instance cannot be reached (bus down); send again shortly", 0, 1)
        except TimeoutError:
            return Answer(503, "the session's instance did not answer; send again shortly", 0, 1)
        finally:
            self._waiting.pop(ref, None)
            self._forwarding -= len(request)

    def on_event(self, event: BusEvent) -> None:
        """A request for a stream held here, or the answer to one forwarded from here."""
        try:
            head, _, frames = (event.frame or b"").partition(b"\n")
            message = orjson.loads(head)
            if message["op"] == "send":

                def posted() -> list[Posted]:  # read only for a session held here
                    sizes = [int(n) for n in message["sizes"]]
                    if sum(sizes) != len(frames):
                        raise ValueError("the frames do not match their sizes")
                    starts = itertools.accumulate(sizes, initial=0)
                    return [Posted(frames[start : start + n]) for start, n in zip(starts, sizes, strict=False)]

                answer = self._accept(str(message["session"]), posted)
                self._tasks.spawn(self._reply(str(message["replyTo"]), int(message["ref"]), answer))
            elif message["op"] == "answer":
                waiting = self._waiting.get(int(message["ref"]))
                if waiting is not None and not waiting.done():
                    retry = message.get("retryAfter")
                    waiting.set_result(
                        Answer(int(message["status"]), str(message["error"]), int(message["accepted"]), retry)
                    )
        except (ValueError, KeyError, TypeError) as exc:  # from a newer or broken instance: dropped
            log.warning("undecodable relay event", extra={"error": str(exc)})

    async def _reply(self, route: str, ref: int, answer: Answer) -> None:
        reply = {
            "op": "answer",
            "ref": ref,
            "status": answer.status,
            "error": answer.error,
            "accepted": answer.accepted,
            "retryAfter": answer.retry_after,
        }
        try:
            await self._publish(route, orjson.dumps(reply))
        except BusError:
            pass  # the asker answers 503 after ANSWER_TIMEOUT

    async def _publish(self, route: str, message: bytes) -> int:
        event = BusEvent(frame=message, origin=self._bus.instance_id, action=ACTION)
        return await self._bus.publish(relay_channel(route).key, event)
