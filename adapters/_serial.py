"""A byte stream whose sends are serialized, for the socket under a TLS stream.

anyio's TLS stream writes from ``receive()`` too (TLS records of its own) while another
task may be sending; the server's writer and the client's sender both wrap the raw socket
in :class:`SerialSend` before the TLS layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream

__all__ = ["SerialSend"]


class SerialSend(ByteStream):
    """*stream* with one send (or EOF) at a time."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._lock = anyio.Lock()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        async with self._lock:
            await self._stream.send(item)

    async def send_eof(self) -> None:
        async with self._lock:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes
