"""The `websockets` peer: the benchmark workload served the way a `websockets` user would.

This is the yardstick agentcast is measured against, not a second implementation of the
protocol: it does what the benchmark scenarios exercise, with the same bytes on the wire
as agentcast, and nothing else (no rate limit, no heartbeat, no resume, no
agent_status/chat_message API).

* ``ws://HOST:PORT/<any path>?token=T``: the dev authenticator's rule (1-128 characters of
  ``[A-Za-z0-9_.-]`` authenticate as ``user_T``); then ``auth``, ``presence_state`` (the
  users online before this connection), and, when the user comes online, ``user_presence``
  to every authenticated connection (the newcomer's included), through ``broadcast()``.
  Presence is per user: ``online`` when its first connection authenticates, ``offline``
  ``--presence-grace`` seconds after its last one closed (at once for 0).
* ``{"type":"ping"}`` from a client is answered with ``pong``.
* ``POST /api/notifications`` on ``--pub-port`` (``websockets`` does not read request
  bodies, so a minimal asyncio HTTP/1.1 handler serves it, one request per connection):
  a JSON array of up to 1,000 ``{"level","message"}`` objects (or one object), checked,
  then each published with one ``websockets.broadcast()`` to every authenticated
  connection; answer ``202 {"ids": [...], "delivered": N}`` like PROTOCOL.md section 8.

Messages are compact JSON in agentcast's key order, with the same ``timestamp`` form and
the same fixed-width hexadecimal ``id`` counter shared by every broadcast.

Run: ``python benchmarks/peer_websockets.py --port 8001 --pub-port 8002 --api-key K``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve

_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_LEVELS = frozenset(("info", "success", "warning", "error"))
_MAX_BATCH = 1000
_MAX_BODY = 1024 * 1024
_dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode


def iso(wall: float) -> str:
    """JavaScript's ``toISOString()`` form, as agentcast sends it."""
    ms = int(wall * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class Peer:
    def __init__(self, api_key: str | None, presence_grace: float) -> None:
        self.api_key = api_key
        self.presence_grace = presence_grace
        self.authenticated: set[ServerConnection] = set()
        self.users: dict[str, set[ServerConnection]] = {}
        self.leaving: dict[str, asyncio.TimerHandle] = {}
        self.seq = 0

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.seq:016x}"

    def presence(self, user_id: str, status: str) -> None:
        message = {
            "type": "user_presence",
            "data": {"userId": user_id, "status": status},
            "timestamp": iso(time.time()),
            "id": self.next_id(),
        }
        broadcast(self.authenticated, _dumps(message))

    def gone(self, user_id: str) -> None:
        self.leaving.pop(user_id, None)
        self.users.pop(user_id, None)
        self.presence(user_id, "offline")

    # -- WebSocket ---------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        token = query.get("token", [""])[0]
        user_id = f"user_{token}" if _TOKEN.fullmatch(token) else None
        now = iso(time.time())
        if user_id is None:
            auth = {"success": False, "error": "Invalid token"}
            await ws.send(_dumps({"type": "auth", "data": auth, "timestamp": now}))
            await self.serve_pings(ws)
            return
        auth = {"success": True, "userId": user_id}
        await ws.send(_dumps({"type": "auth", "data": auth, "timestamp": now}))
        online = [{"userId": u, "status": "online"} for u in self.users]
        await ws.send(
            _dumps({"type": "presence_state", "data": {"users": online}, "timestamp": now})
        )
        self.authenticated.add(ws)
        sessions = self.users.setdefault(user_id, set())
        sessions.add(ws)
        pending = self.leaving.pop(user_id, None)
        if pending is not None:
            pending.cancel()  # back within the grace period: still online, no message
        elif len(sessions) == 1:
            self.presence(user_id, "online")
        try:
            await self.serve_pings(ws)
        finally:
            self.authenticated.discard(ws)
            sessions.discard(ws)
            if not sessions:
                if self.presence_grace <= 0:
                    self.gone(user_id)
                else:
                    loop = asyncio.get_running_loop()
                    self.leaving[user_id] = loop.call_later(self.presence_grace, self.gone, user_id)

    async def serve_pings(self, ws: ServerConnection) -> None:
        async for message in ws:
            try:
                kind = json.loads(message).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == "ping":
                await ws.send(_dumps({"type": "pong", "timestamp": iso(time.time())}))

    # -- the publish API ---------------------------------------------------------------

    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, answer = await self.http_answer(reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, answer = 400, {"error": "bad request"}
        body = _dumps(answer).encode()
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

    async def http_answer(self, reader: asyncio.StreamReader) -> tuple[int, object]:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length > _MAX_BODY:
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
        if not items or len(items) > _MAX_BATCH:
            return 400, {"error": "a batch holds 1 to 1000 items"}
        for index, item in enumerate(items):
            if not (
                isinstance(item, dict)
                and item.get("level") in _LEVELS
                and isinstance(item.get("message"), str)
            ):
                return 400, {"error": f"item {index}: invalid notification"}
        now = iso(time.time())
        ids = []
        delivered = 0
        for item in items:
            message_id = self.next_id()
            data = {"level": item["level"], "message": item["message"]}
            message = {"type": "notification", "data": data, "timestamp": now, "id": message_id}
            broadcast(self.authenticated, _dumps(message))
            ids.append(message_id)
            delivered += len(self.authenticated)
        return 202, {"ids": ids, "delivered": delivered}


async def main(args: argparse.Namespace) -> None:
    peer = Peer(args.api_key, args.presence_grace)
    http = await asyncio.start_server(peer.http, args.host, args.pub_port, backlog=4096)
    async with serve(
        peer.handler,
        args.host,
        args.port,
        compression=None,
        ping_interval=None,  # agentcast runs with a heartbeat far beyond the benchmark too
        backlog=4096,
    ):
        print(
            f"websockets peer listening on ws://{args.host}:{args.port}/ws, "
            f"publish API on http://{args.host}:{args.pub_port}",
            flush=True,
        )
        async with http:
            await http.serve_forever()


def cli() -> None:
    import _gclog  # noqa: PLC0415 (next to this script; see _gclog.py)

    _gclog.install()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--pub-port", type=int, default=8002)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--presence-grace", type=float, default=5.0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop  # noqa: PLC0415

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
