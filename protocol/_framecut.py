"""Cut the inbound WebSocket byte stream right after each frame header.

wsproto parses a frame's header and whatever payload has arrived in one step, and only
then checks the frame against the message in progress (RFC 6455 5.4) or its UTF-8. The
transport refuses a too-big message (1009) from the header's declared length, before its
payload is buffered. Fed through :class:`HeaderCutter`, wsproto sees every header on its
own first, so that check always comes first, and an input that is too big *and* invalid
gets the same close code however TCP split it (found by ``fuzz/fuzz_frames.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["HeaderCutter"]


class HeaderCutter:
    """Tracks frame boundaries (RFC 6455 5.2) across the chunks of one stream."""

    __slots__ = ("_head", "_left")

    def __init__(self) -> None:
        self._head = bytearray()  # the header received so far
        self._left = 0  # payload bytes of the current frame still to come

    def split(self, data: bytes) -> Iterator[bytes]:
        """*data* in consecutive pieces, each header-completing piece ending with it.

        Lazily: a reader that stops early (the connection is closing) costs nothing for
        the rest, and must not call again (the cut positions are then lost)."""
        start = pos = 0
        end = len(data)
        head = self._head
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                self._left -= step
                pos += step
                continue
            if not head and end - pos >= 2:
                # The usual case: a whole header at hand, cut without copying it byte by byte.
                size = _header_size(data[pos : pos + 2])
                if end - pos >= size:
                    self._left = _payload_length(data[pos : pos + size])
                    pos += size
                    yield data[start:pos]
                    start = pos
                    continue
            head.append(data[pos])
            pos += 1
            if len(head) == _header_size(head):
                self._left = _payload_length(head)
                head.clear()
                yield data[start:pos]
                start = pos
        if start < end:
            yield data[start:]


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
