"""The `picows` peer: the benchmark workload served the way a `picows` user would.

The same workload as ``peer_websockets.py`` (see there and ``_peers.py``), on picows
(a Cython WebSocket library for asyncio: a listener object per connection, frames handed
to ``on_ws_frame``, ``transport.send`` writing at once), with its defaults (no
compression; picows answers protocol Pings itself):

* ``ws://HOST:PORT/<any path>?token=T``: the dev authenticator's rule; ``auth``,
  ``presence_state``, and ``user_presence`` to every authenticated connection when the
  user comes online (or goes offline, ``--presence-grace`` after its last connection);
* ``{"type":"ping"}`` is answered with ``pong``;
* ``POST /api/notifications`` on ``--pub-port`` (:class:`_peers.PublishApi`), each item
  sent to every authenticated connection, its text encoded once;
* with ``--inproc-count``, the in-process publisher of the latency scenario (SIGUSR2).

picows is installed by ``run.py`` itself (``pip install picows``), not a project
dependency. Run: ``python benchmarks/peer_picows.py --port 8001 --pub-port 8002 --api-key K``.
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
from picows import WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

_TEXT = WSMsgType.TEXT


class Peer:
    def __init__(self, presence_grace: float) -> None:
        self.presence_grace = presence_grace
        self.authenticated: set[WSTransport] = set()
        self.users: dict[str, set[WSTransport]] = {}
        self.leaving: dict[str, asyncio.TimerHandle] = {}
        self.ids = Ids()

    def broadcast(self, text: str) -> int:
        data = text.encode()
        for transport in self.authenticated:
            transport.send(_TEXT, data)
        return len(self.authenticated)

    def presence(self, user_id: str, status: str) -> None:
        message = {
            "type": "user_presence",
            "data": {"userId": user_id, "status": status},
            "timestamp": iso(time.time()),
            "id": self.ids.next(),
        }
        self.broadcast(dumps(message))

    def gone(self, user_id: str) -> None:
        self.leaving.pop(user_id, None)
        self.users.pop(user_id, None)
        self.presence(user_id, "offline")

    def listener(self, request: WSUpgradeRequest) -> Client:
        query = parse_qs(urlsplit(request.path.decode("latin-1")).query)
        token = query.get("token", [""])[0]
        return Client(self, f"user_{token}" if TOKEN.fullmatch(token) else None)


class Client(WSListener):  # type: ignore[misc]
    def __init__(self, peer: Peer, user_id: str | None) -> None:
        super().__init__()
        self.peer = peer
        self.user_id = user_id

    def on_ws_connected(self, transport: WSTransport) -> None:
        peer = self.peer
        now = iso(time.time())
        if self.user_id is None:
            auth: dict[str, object] = {"success": False, "error": "Invalid token"}
            transport.send(_TEXT, dumps({"type": "auth", "data": auth, "timestamp": now}).encode())
            return
        auth = {"success": True, "userId": self.user_id}
        transport.send(_TEXT, dumps({"type": "auth", "data": auth, "timestamp": now}).encode())
        online = [{"userId": u, "status": "online"} for u in peer.users]
        state = {"type": "presence_state", "data": {"users": online}, "timestamp": now}
        transport.send(_TEXT, dumps(state).encode())
        peer.authenticated.add(transport)
        sessions = peer.users.setdefault(self.user_id, set())
        sessions.add(transport)
        pending = peer.leaving.pop(self.user_id, None)
        if pending is not None:
            pending.cancel()
        elif len(sessions) == 1:
            peer.presence(self.user_id, "online")

    def on_ws_frame(self, transport: WSTransport, frame: object) -> None:
        kind = frame.msg_type  # type: ignore[attr-defined]
        if kind == WSMsgType.TEXT:
            try:
                message = json.loads(frame.get_payload_as_utf8_text())  # type: ignore[attr-defined]
                kind = message.get("type")
            except (ValueError, AttributeError):
                return
            if kind == "ping":
                pong = {"type": "pong", "timestamp": iso(time.time())}
                transport.send(_TEXT, dumps(pong).encode())
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())  # type: ignore[attr-defined]
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        peer = self.peer
        user_id = self.user_id
        if user_id is None or transport not in peer.authenticated:
            return
        peer.authenticated.discard(transport)
        sessions = peer.users.get(user_id, set())
        sessions.discard(transport)
        if not sessions:
            if peer.presence_grace <= 0:
                peer.gone(user_id)
            else:
                loop = asyncio.get_running_loop()
                peer.leaving[user_id] = loop.call_later(peer.presence_grace, peer.gone, user_id)


async def main(args: argparse.Namespace) -> None:
    peer = Peer(args.presence_grace)
    api = PublishApi(args.api_key, peer.ids, peer.broadcast)
    http = await asyncio.start_server(api.handle, args.host, args.pub_port, backlog=4096)
    start_inproc_publisher(
        asyncio.get_running_loop(),
        lambda text: peer.broadcast(notification(peer.ids, "info", text, iso(time.time()))),
        rate=args.inproc_rate,
        count=args.inproc_count,
        msg_bytes=args.msg_bytes,
    )
    server = await ws_create_server(
        peer.listener, args.host, args.port, websocket_handshake_timeout=None, backlog=4096
    )
    print(f"picows peer listening on ws://{args.host}:{args.port}/ws", flush=True)
    async with http, server:
        await asyncio.gather(http.serve_forever(), server.serve_forever())


def cli() -> None:
    run_peer(__doc__, main)


if __name__ == "__main__":
    cli()
