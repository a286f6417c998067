"""A connection's pending output, with the accounting the slow-client policy needs.

The pending output of every connection lives in the core (in an :class:`Outbox`), not in
the adapter, so the core knows each connection's backlog and decides what happens when a
client cannot keep up (PROTOCOL.md section 9, ``1013``). A broadcast appends the *same*
:class:`~agentcast.protocol.PreparedMessage` object to every recipient's outbox; the
adapter's writer takes everything pending in one piece when its previous write has
completed.

**Conflation.** ``agent_status`` is state, not a log: a dashboard needs the latest status
of each agent, not every intermediate one. When a connection's backlog is past the
conflation threshold, a pending, not yet written ``agent_status`` for an agent is
replaced by the newer one for the same ``agentName`` (the older one is removed and the
newer one appended, so what remains is still in publish order). Chat messages and
notifications are never dropped or merged.

**What counts toward the slow-client limit.** Every byte queued counts, control frames
included, except a snapshot the client needs whole (``presence_state``, pushed with
``counted=False``: its size follows the number of users online, not the client's
speed). Within a *batch* (one publish API request), the check measures what the
client had not drained when the batch began, plus the message at hand
(:meth:`Outbox.firm_backlog_at`), not what the batch itself queued in one step.

**Pongs.** While the backlog is past a limit given by the caller, a new Pong replaces
the one still pending instead of queuing behind it: RFC 6455 5.5.3 lets an endpoint
answer only the latest Ping.
"""

from __future__ import annotations

from collections.abc import Callable

from .messages import PreparedMessage

__all__ = ["Outbox"]


class Outbox:
    """Pending output of one connection: control bytes and prepared messages, in order."""

    __slots__ = (
        "_batch",
        "_batch_base",
        "_conflatable",
        "_inflight",
        "_items",
        "_latest",
        "_pending",
        "_pong",
        "_uncounted",
        "_uncounted_inflight",
        "events",
        "on_output",
    )

    def __init__(self, *, events: bool = False) -> None:
        self._items: list[bytes | PreparedMessage | None] = []
        self._pending = 0
        self._inflight = 0
        # Conflation key -> index in _items of the pending message with that key.
        self._latest: dict[str, int] = {}
        self._conflatable = 0  # bytes of the pending messages indexed in _latest
        self._uncounted = 0  # bytes pending outside the slow-client count (a snapshot)
        self._uncounted_inflight = 0  # ... of the write in flight
        self._pong = -1  # index in _items of the pending Pong, or -1
        self._batch = 0  # the batch firm_backlog_at() last saw, and the backlog then
        self._batch_base = 0
        #: Called when output becomes pending in an empty outbox (wakes the writer).
        self.on_output: Callable[[], None] | None = None
        #: The wire form of the messages: WebSocket frames, or (``True``) Server-Sent
        #: Events (:attr:`PreparedMessage.event`). Sizes and :meth:`take_bytes` use it.
        self.events = events

    @property
    def backlog(self) -> int:
        """Bytes queued plus the write in flight (what the last take returned)."""
        return self._pending + self._inflight

    @property
    def counted_backlog(self) -> int:
        """The part of :attr:`backlog` the slow-client limit counts (all but a snapshot)."""
        return self._pending + self._inflight - self._uncounted - self._uncounted_inflight

    @property
    def firm_backlog(self) -> int:
        """The part of :attr:`counted_backlog` that conflation cannot shrink."""
        # Written out (not counted_backlog - ...): this is on every delivery's path.
        return (
            self._pending
            + self._inflight
            - self._uncounted
            - self._uncounted_inflight
            - self._conflatable
        )

    def too_slow(self, size: int, limit: int, batch: int = 0) -> bool:
        """Whether queuing *size* more bytes makes this a client too slow for *limit*
        (``max_send_buffer``): its :attr:`firm_backlog` (within *batch*, a number, 0 for
        none: :meth:`firm_backlog_at`) would pass the limit, or its
        :attr:`counted_backlog` twice the limit (a hard stop, whatever conflation could
        shrink). One call on every delivery's path."""
        counted = self._pending + self._inflight - self._uncounted - self._uncounted_inflight
        firm = self.firm_backlog_at(batch) if batch else counted - self._conflatable
        return firm + size > limit or counted + size > 2 * limit

    def firm_backlog_at(self, batch: int) -> int:
        """:attr:`firm_backlog` as it was when *batch* (a number, never 0) began: what the
        client had not drained then. The first call with a new number records it."""
        if batch != self._batch:
            self._batch = batch
            self._batch_base = self.firm_backlog
        return self._batch_base

    def size_of(self, message: PreparedMessage) -> int:
        """The bytes *message* takes on this outbox's wire."""
        return len(message.event if self.events else message.frame)

    def __bool__(self) -> bool:
        return self._pending > 0

    def push(self, item: bytes | PreparedMessage, *, counted: bool = True) -> None:
        """Append *item*; a prepared message with a key becomes replaceable. An item
        pushed with ``counted=False`` is outside :attr:`counted_backlog`."""
        items = self._items
        if not self._pending and self.on_output is not None:
            self.on_output()
        if isinstance(item, PreparedMessage):
            # Inline (the hot path of every broadcast): size_of(item).
            size = len(item.event) if self.events else len(item.frame)
            key = item.key
            if key is not None:
                old = self._latest.get(key)
                if old is not None:
                    # Only the newest pending message per key stays replaceable.
                    prev = items[old]
                    assert isinstance(prev, PreparedMessage)
                    self._conflatable -= self.size_of(prev)
                self._latest[key] = len(items)
                self._conflatable += size
        else:
            size = len(item)
        items.append(item)
        self._pending += size
        if not counted:
            self._uncounted += size

    def push_pong(self, frame: bytes, coalesce_over: int) -> None:
        """Append a Pong *frame*; while :attr:`backlog` is past *coalesce_over*, replace
        the Pong still pending instead (only the latest Ping is answered)."""
        index = self._pong
        if index >= 0 and self.backlog > coalesce_over:
            old = self._items[index]
            assert isinstance(old, bytes)
            self._items[index] = frame
            self._pending += len(frame) - len(old)
            return
        self._pong = len(self._items)
        self.push(frame)

    def replace(self, message: PreparedMessage) -> bool:
        """Drop the pending message with *message*'s key, then append *message*.

        ``False`` (and nothing done) when no message with that key is pending.
        """
        key = message.key
        if key is None:
            return False
        index = self._latest.get(key)
        if index is None:
            return False
        old = self._items[index]
        assert isinstance(old, PreparedMessage)
        self._items[index] = None
        size = self.size_of(old)
        self._pending -= size
        self._conflatable -= size
        del self._latest[key]
        self.push(message)
        return True

    def take_bytes(self) -> bytes:
        """Everything pending as one ``bytes`` (frames of messages); it becomes in flight."""
        items = self._items
        if not items:
            self._inflight = self._uncounted_inflight = 0
            return b""
        if self.events:
            data = b"".join(
                item.event if isinstance(item, PreparedMessage) else item
                for item in items
                if item is not None
            )
        elif len(items) == 1:
            only = items[0]
            data = only.frame if isinstance(only, PreparedMessage) else (only or b"")
        else:
            data = b"".join(
                item.frame if isinstance(item, PreparedMessage) else item
                for item in items
                if item is not None
            )
        self._uncounted_inflight = self._uncounted
        self._reset()
        self._inflight = len(data)
        return data

    def take_messages(self) -> list[PreparedMessage]:
        """Everything pending as messages (for transports that send text, e.g. ASGI)."""
        messages: list[PreparedMessage] = []
        for item in self._items:
            if isinstance(item, PreparedMessage):
                if item.parts:
                    messages.extend(item.parts)  # a group: each message of its own
                else:
                    messages.append(item)
        self._inflight = self._pending
        self._uncounted_inflight = self._uncounted
        self._reset()
        return messages

    def sent(self) -> None:
        """The write in flight has completed (for transports that take messages)."""
        self._inflight = 0
        self._uncounted_inflight = 0

    def discard(self) -> None:
        """Drop everything pending (the socket failed)."""
        self._reset()

    def discard_messages(self) -> None:
        """Drop the pending messages (a client too slow to keep up). Raw bytes (the
        ``101`` response, control frames) stay, so what is written is still a valid
        stream for the close frame that follows."""
        kept = [item for item in self._items if isinstance(item, bytes)]
        self._reset()
        for item in kept:
            self.push(item)

    def _reset(self) -> None:
        self._items = []
        self._pending = 0
        self._latest.clear()
        self._conflatable = 0
        self._uncounted = 0
        self._pong = -1
