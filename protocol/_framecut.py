"""Cut the inbound WebSocket byte stream right after the frame headers that need it.

wsproto parses a frame's header and whatever payload has arrived in one step, and only
then checks the frame against the message in progress (RFC 6455 5.4) or its UTF-8. The
transport refuses a too-big message (1009) from the header's declared length, before its
payload is buffered. Fed through :class:`HeaderCutter`, wsproto sees a header on its own
first whenever that header could make the message too big, so that check always comes
first, and an input that is too big *and* invalid gets the same close code however TCP
split it (found by ``fuzz/fuzz_frames.py``).

Every other header is left in one piece with what follows: a read of several small
frames (the usual case) goes to wsproto in one pass, and a lone frame is not copied. A
header "could make the message too big" when the declared lengths of the data frames of
the message so far, its own included, pass the budget (``max_message_size``). That sum
is never less than what the frame phase counts for the message (it counts bytes
received), so a header the check could refuse is always cut after; counting a frame
wsproto will refuse anyway (a new message while one is in progress, a reserved opcode)
only adds cuts, which are always harmless.
"""

from __future__ import annotations

__all__ = ["HeaderCutter"]


class HeaderCutter:
    """Tracks frame boundaries (RFC 6455 5.2) across the chunks of one stream."""

    __slots__ = ("_budget", "_head", "_left", "_message")

    def __init__(self, budget: int) -> None:
        self._budget = budget  # the largest message allowed (max_message_size)
        self._head = bytearray()  # the header received so far
        self._left = 0  # payload bytes of the current frame still to come
        self._message = 0  # declared bytes of the data frames of the message so far

    def split(self, data: bytes) -> tuple[bytes, ...] | list[bytes]:
        """*data* (not empty) in consecutive pieces, each piece that ends before the end
        of *data* ending right after a header that could make its message too big.

        All at once (the usual read, small frames, is one piece: ``(data,)``, not
        copied); a reader that stops early (the connection is closing) drops the rest."""
        end = len(data)
        head = self._head
        size = end - 6
        if 0 <= size < 126 and data[1] == 0x80 | size and not head and not self._left:
            # The usual read: one whole masked frame with a short payload (a message from
            # a browser). Its header alone is accounted here, as _passed() would.
            if data[0] & 0x08:
                return (data,)  # a control frame
            total = self._message + size
            if total <= self._budget:
                self._message = 0 if data[0] & 0x80 else total
                return (data,)
        pieces: list[bytes] = []
        start = pos = 0
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                self._left -= step
                pos += step
                continue
            if not head and end - pos >= 2:
                # The usual case: a whole header at hand, read without copying it byte by byte.
                size = _header_size(data[pos : pos + 2])
                if end - pos >= size:
                    cut = self._passed(data[pos : pos + size])
                    pos += size
                    if cut:
                        pieces.append(data[start:pos])
                        start = pos
                    continue
            head.append(data[pos])
            pos += 1
            if len(head) == _header_size(head):
                cut = self._passed(head)
                head.clear()
                if cut:
                    pieces.append(data[start:pos])
                    start = pos
        if not pieces:
            return (data,)
        if start < end:
            pieces.append(data[start:])
        return pieces

    def _passed(self, header: bytes | bytearray) -> bool:
        """Account for one whole *header*: whether its frame could take the message past
        the budget (then wsproto must see it on its own)."""
        length = _payload_length(header)
        self._left = length
        if header[0] & 0x08:
            return False  # a control frame: not part of a message (wsproto checks its size)
        total = self._message + length
        self._message = 0 if header[0] & 0x80 else total  # FIN: the next frame starts anew
        return total > self._budget


def _header_size(head: bytes | bytearray) -> int:
    """The full size of the header that starts with *head* (2 until that is known)."""
    if len(head) < 2:
        return 2
    code = head[1] & 0x7F
    extended = 2 if code == 126 else 8 if code == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def _payload_length(head: bytes | bytearray) -> int:
    code = head[1] & 0x7F
    if code < 126:
        return code
    size = 2 if code == 126 else 8
    return int.from_bytes(head[2 : 2 + size], "big")
