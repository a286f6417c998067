"""An echo application on the reference server's own machinery, for RFC 6455 conformance.

Used only by ``fuzz/autobahn`` (the Autobahn|Testsuite fuzzing client needs a server that
echoes every message). What runs is the real stack with the message layer swapped out:

* each TCP connection is served by the reference server's own connection driver,
  unchanged: on asyncio :class:`agentcast.adapters._asyncio_driver.AsyncioDriver` (protocol
  callbacks, one write of everything ``data_to_send()`` holds per pass of the loop), on
  trio :class:`agentcast.adapters._socket_driver.SocketDriver` (one task per connection
  that reads until ``next_deadline()``, writes batched per pass by one flusher task);
  their timers and linger/close handling;
* the object it drives is :class:`EchoConnection`, which has the interface of
  :class:`~agentcast.protocol.ServerConnection` but composes the same
  :class:`~agentcast.protocol.WebSocketTransport` with an echo in place of the
  session: every upgrade to ``--path`` is accepted (no token, no admission), a text
  message comes back as text (``send_text``, our own framer), a binary one as binary
  (``send_bytes``, wsproto's framer).

``max_message_size`` is raised to 16 MiB and ``max_message_frames`` to 2**20 here
(Autobahn's 9.* cases send messages of up to 16 MiB, and of up to 65,536 fragments; the
server's defaults are far lower). Nothing else differs from the server's
defaults (close timeout, handshake timeout, header limit).

    python fuzz/autobahn_echo.py --port 0 [--backend trio]   # prints "listening on PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import Callable

import anyio
from anyio.abc import SocketAttribute

from agentcast.adapters import Service
from agentcast.adapters._asyncio_driver import AsyncioDriver, Flusher
from agentcast.adapters._driver import format_peer
from agentcast.adapters._socket_driver import SocketDriver, SocketFlusher
from agentcast.adapters.service import clock
from agentcast.protocol import (
    BytesReceived,
    ConnectionClosed,
    HttpAnswer,
    Settings,
    TextReceived,
    UpgradeRequested,
    WebSocketTransport,
)
from agentcast.protocol.events import Event, HttpRequest

#: Autobahn's largest messages (9.1.6, 9.2.6) are exactly 16 MiB.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: ... and its most fragmented (9.3.*, 9.4.*) come in up to 4 MiB / 64 B = 65,536 frames.
MAX_MESSAGE_FRAMES = 1 << 20


class _EchoSession:
    """What the adapter reads of a session (for its open/close log lines)."""

    __slots__ = ("closed", "messages_in", "messages_out")

    user_id = None

    def __init__(self) -> None:
        self.closed = False
        self.messages_in = 0
        self.messages_out = 0


class EchoConnection:
    """A :class:`~agentcast.protocol.ServerConnection` look-alike that echoes messages."""

    def __init__(self, settings: Settings, *, now: float, client: str | None) -> None:
        self._ws = WebSocketTransport(
            now=now,
            path=settings.path,
            max_message_size=settings.max_message_size,
            max_message_frames=settings.max_message_frames,
            max_send_buffer=settings.max_send_buffer,
            max_header_size=settings.max_header_size,
            max_body_size=settings.max_body_size,
            handshake_timeout=settings.handshake_timeout,
            close_timeout=settings.close_timeout,
            client=client,
        )
        self._ws.on_message = self._on_message
        self._session: _EchoSession | None = None
        self._events: list[Event] = []

    # -- the interface Connection drives -------------------------------------------------

    @property
    def transport(self) -> WebSocketTransport:
        return self._ws

    @property
    def session(self) -> _EchoSession | None:
        return self._session

    @property
    def closed(self) -> bool:
        return self._ws.closed

    @property
    def wants_input(self) -> bool:
        return self._ws.wants_input

    @property
    def on_output(self) -> Callable[[], None] | None:
        return self._ws.on_output

    @on_output.setter
    def on_output(self, callback: Callable[[], None] | None) -> None:
        self._ws.on_output = callback

    def data_to_send(self) -> bytes:
        return self._ws.data_to_send()

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def take_events(self) -> list[Event] | None:
        return self.events_received() or None

    def next_deadline(self) -> float | None:
        return self._ws.next_deadline()

    def receive_data(self, data: bytes, now: float, wall: float) -> None:
        self._ws.receive_data(data, now)
        self._dispatch(now)

    def receive_eof(self, now: float, wall: float) -> None:
        self._ws.receive_eof(now)
        self._dispatch(now)

    def handle_timer(self, now: float, wall: float) -> None:
        self._ws.handle_timer(now)
        self._dispatch(now)

    def send_failed(self, now: float, wall: float) -> None:
        self._ws.send_failed()
        self._dispatch(now)

    def close(self, code: int, reason: str, now: float, wall: float) -> None:
        self._ws.close(code, reason, now)
        self._dispatch(now)

    def respond(self, answer: HttpAnswer) -> None:
        self._ws.respond(answer)

    # -- echo ----------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        for event in self._ws.events_received():
            if isinstance(event, UpgradeRequested):
                self._ws.accept(now, None, self._opened)
            elif isinstance(event, HttpRequest):
                self._ws.respond(HttpAnswer.plain(404, "echo server: WebSocket only"))
            elif isinstance(event, ConnectionClosed):
                if self._session is not None:
                    self._session.closed = True
                self._events.append(event)

    def _opened(self) -> None:
        self._session = _EchoSession()

    def _on_message(self, event: TextReceived | BytesReceived, now: float) -> None:
        session = self._session
        assert session is not None
        session.messages_in += 1
        if isinstance(event, TextReceived):
            self._ws.send_text(event.text)
        else:
            self._ws.send_bytes(event.data)
        session.messages_out += 1


class EchoProtocol(AsyncioDriver):
    """The asyncio driver, running an :class:`EchoConnection`."""

    __slots__ = ()

    def _open(self, service: Service, *, host: str | None, peer: str, now: float) -> None:
        super()._open(service, host=host, peer=peer, now=now)
        self.conn = EchoConnection(service.settings, now=now, client=host)  # type: ignore[assignment]
        self.conn.on_output = self.wake


async def serve(host: str, port: int, max_message_size: int) -> None:
    settings = Settings(
        max_message_size=max_message_size,
        max_message_frames=MAX_MESSAGE_FRAMES,
        # The echo takes no part in admission (the test suite connects over and over).
        max_connections_per_ip=None,
    )
    # The service is only the connections' context (settings, hub, logging hooks); the
    # reference server's accept loop would build ServerConnections, so this one builds
    # the echo.
    service = Service(settings)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio: the socket driver, one task per connection
        pass
    else:  # asyncio: the protocol driver, as the reference server runs it
        flusher = Flusher(loop)
        listening = await loop.create_server(
            lambda: EchoProtocol(service, flusher, loop), host=host, port=port
        )
        print(f"listening on {listening.sockets[0].getsockname()[1]}", flush=True)
        await listening.serve_forever()
        return

    flusher = SocketFlusher()

    async def handle(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host_, peer = format_peer(sock.getpeername())
        connection = SocketDriver(service, sock, flusher, host=host_, peer=peer)
        connection.conn = EchoConnection(settings, now=clock(), client=host_)  # type: ignore[assignment]
        connection.conn.on_output = connection.wake
        await connection.run()  # closes the socket

    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = listener.extra(SocketAttribute.local_port)
    raw = listener.listeners[0].extra(SocketAttribute.raw_socket)
    print(f"listening on {bound}", flush=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(flusher.run)
        while True:
            await anyio.wait_readable(raw)
            try:
                client, _ = raw.accept()
            except BlockingIOError:
                continue
            client.setblocking(False)
            tg.start_soon(handle, client)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001, help="0 picks a free port")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--max-message-size", type=int, default=MAX_MESSAGE_SIZE)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.Formatter.converter = time.gmtime
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve, args.host, args.port, args.max_message_size, backend=args.backend)


if __name__ == "__main__":
    main()
