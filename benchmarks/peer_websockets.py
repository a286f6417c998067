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
import json
import time
from urllib.parse import parse_qs, urlsplit

from _peers import (
    TOKEN,
    Ids,
    PublishApi,
    dumps,
    iso,
    notification,
    run_peer,
    start_inproc_publisher,
)
from websockets.asyncio.server import ServerConnection, broadcast, serve


class Peer:
    def __init__(self, presence_grace: float) -> None:
        self.presence_grace = presence_grace
        self.authenticated: set[ServerConnection] = set()
        self.users: dict[str, set[ServerConnection]] = {}
        self.leaving: dict[str, asyncio.TimerHandle] = {}
        self.ids = Ids()

    def next_id(self) -> str:
        return self.ids.next()

    def broadcast(self, text: str) -> int:
        broadcast(self.authenticated, text)
        return len(self.authenticated)

    def presence(self, user_id: str, status: str) -> None:
        message = {
            "type": "user_presence",
            "data": {"userId": user_id, "status": status},
            "timestamp": iso(time.time()),
            "id": self.next_id(),
        }
        broadcast(self.authenticated, dumps(message))

    def gone(self, user_id: str) -> None:
        self.leaving.pop(user_id, None)
        self.users.pop(user_id, None)
        self.presence(user_id, "offline")

    # -- WebSocket ---------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        token = query.get("token", [""])[0]
        user_id = f"user_{token}" if TOKEN.fullmatch(token) else None
        now = iso(time.time())
        if user_id is None:
            auth = {"success": False, "error": "Invalid token"}
            await ws.send(dumps({"type": "auth", "data": auth, "timestamp": now}))
            await self.serve_pings(ws)
            return
        auth = {"success": True, "userId": user_id}
        await ws.send(dumps({"type": "auth", "data": auth, "timestamp": now}))
        online = [{"userId": u, "status": "online"} for u in self.users]
        await ws.send(
            dumps({"type": "presence_state", "data": {"users": online}, "timestamp": now})
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
                await ws.send(dumps({"type": "pong", "timestamp": iso(time.time())}))


def dumps_notification(peer: Peer, text: str) -> str:
    return notification(peer.ids, "info", text, iso(time.time()))


async def main(args: argparse.Namespace) -> None:
    peer = Peer(args.presence_grace)
    api = PublishApi(args.api_key, peer.ids, peer.broadcast)
    http = await asyncio.start_server(api.handle, args.host, args.pub_port, backlog=4096)
    start_inproc_publisher(
        asyncio.get_running_loop(),
        lambda text: peer.broadcast(dumps_notification(peer, text)),
        rate=args.inproc_rate,
        count=args.inproc_count,
        msg_bytes=args.msg_bytes,
    )
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
    run_peer(__doc__, main)


if __name__ == "__main__":
    cli()
