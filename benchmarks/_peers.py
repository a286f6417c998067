"""What the Python peers of the benchmark share: the message forms, the publish API, and
the in-process publisher of the latency scenario.

* Messages are compact JSON in agentcast's key order, with the same ``timestamp`` form
  (:func:`iso`) and the same fixed-width hexadecimal ``id`` counter (:class:`Ids`).
* :class:`PublishApi`: ``POST /api/notifications`` on its own port, a minimal asyncio
  HTTP/1.1 handler (one request per connection, like agentcast's API): a JSON array of up
  to 1,000 ``{"level","message"}`` objects, or one object; each item is published with one
  broadcast; the answer is ``202 {"ids": [...], "delivered": N}``.
* :func:`inproc_text` and :func:`start_inproc_publisher`: the latency scenario's
  in-process publishing. On ``SIGUSR2`` the server publishes ``count`` notifications
  itself, one at a time, ``rate`` a second, notification *i* scheduled at ``t0 + i/rate``
  and carrying that time (``t=`` microseconds of ``CLOCK_MONOTONIC``, which is
  ``time.monotonic()`` on Linux) so that the load generator measures publish -> delivery
  from when the publish was due.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import re
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
LEVELS = frozenset(("info", "success", "warning", "error"))
MAX_BATCH = 1000
MAX_BODY = 1024 * 1024
dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode
#: The envelope of a notification frame (type, level, timestamp, id) is ~115 bytes: the
#: load generator sizes texts the same way.
ENVELOPE = 115


def iso(wall: float) -> str:
    """JavaScript's ``toISOString()`` form, as agentcast sends it."""
    ms = int(wall * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class Ids:
    """agentcast's broadcast ids: a counter in 16 hexadecimal digits."""

    def __init__(self) -> None:
        self.seq = 0

    def next(self) -> str:
        self.seq += 1
        return f"{self.seq:016x}"


def notification(ids: Ids, level: str, text: str, now: str) -> str:
    data = {"level": level, "message": text}
    return dumps({"type": "notification", "data": data, "timestamp": now, "id": ids.next()})


class PublishApi:
    """``POST /api/notifications``; *broadcast* sends one message text to every
    authenticated connection and returns how many it was sent to."""

    def __init__(self, api_key: str | None, ids: Ids, broadcast: Callable[[str], int]) -> None:
        self.api_key = api_key
        self.ids = ids
        self.broadcast = broadcast

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, answer = await self.answer(reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, answer = 400, {"error": "bad request"}
        body = dumps(answer).encode()
        reason = {202: "Accepted", 400: "Bad Request", 401: "Unauthorized"}.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        try:
            await writer.drain()
        finally:
            writer.close()

    async def answer(self, reader: asyncio.StreamReader) -> tuple[int, object]:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length > MAX_BODY:
            return 413, {"error": "body too large"}
        body = await reader.readexactly(length)
        if method != "POST" or target != "/api/notifications":
            return 404, {"error": "not found"}
        if self.api_key is not None:
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return 401, {"error": "missing or invalid API key"}
        items = json.loads(body)
        if not isinstance(items, list):
            items = [items]
        if not items or len(items) > MAX_BATCH:
            return 400, {"error": "a batch holds 1 to 1000 items"}
        for index, item in enumerate(items):
            if not (
                isinstance(item, dict)
                and item.get("level") in LEVELS
                and isinstance(item.get("message"), str)
            ):
                return 400, {"error": f"item {index}: invalid notification"}
        now = iso(time.time())
        ids = []
        delivered = 0
        for item in items:
            text = notification(self.ids, item["level"], item["message"], now)
            ids.append(f"{self.ids.seq:016x}")
            delivered += self.broadcast(text)
        return 202, {"ids": ids, "delivered": delivered}


def inproc_text(seq: int, at: float, msg_bytes: int) -> str:
    """The text of in-process notification *seq*, due at *at* (``time.monotonic()``),
    padded like the load generator's so that the frame is ~*msg_bytes*."""
    text = f"seq={seq:08d} t={at * 1e6:.0f} "
    size = msg_bytes - ENVELOPE
    return text + "".join(chr(97 + k % 26) for k in range(len(text), size))


def start_inproc_publisher(
    loop: asyncio.AbstractEventLoop,
    publish: Callable[[str], object],
    *,
    rate: float,
    count: int,
    msg_bytes: int,
) -> None:
    """On SIGUSR2, call *publish* with :func:`inproc_text` *count* times, *rate* a second,
    each as soon as it is due (a late one goes out at once, without waiting)."""
    if count <= 0:
        return

    def run() -> None:
        t0 = time.monotonic()
        seq = 0

        def step() -> None:
            nonlocal seq
            now = time.monotonic()
            while seq < count and t0 + seq / rate <= now:
                publish(inproc_text(seq, t0 + seq / rate, msg_bytes))
                seq += 1
                now = time.monotonic()
            if seq < count:
                loop.call_at(loop.time() + max(0.0, t0 + seq / rate - now), step)

        step()

    loop.add_signal_handler(signal.SIGUSR2, run)


def run_peer(
    doc: str | None, main: Callable[[argparse.Namespace], Coroutine[Any, Any, None]]
) -> None:
    """A Python peer's command line (the same options for each), then *main* on asyncio
    or uvloop."""
    import _gclog  # noqa: PLC0415 (next to this script; see _gclog.py)

    _gclog.install()
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--pub-port", type=int, default=8002)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--presence-grace", type=float, default=5.0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--inproc-rate", type=float, default=1000.0)
    parser.add_argument("--inproc-count", type=int, default=0, help="on SIGUSR2")
    parser.add_argument("--msg-bytes", type=int, default=200)
    args = parser.parse_args()
    if args.uvloop:
        import uvloop  # noqa: PLC0415

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
