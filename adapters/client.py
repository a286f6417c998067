"""The Python client: connect, receive typed messages, reconnect and resume by itself.

::

    from agentcast.adapters.client import ChatMessage, Resume, connect

    async with connect("ws://127.0.0.1:3000/ws", token="abc123") as client:
        await client.set_presence("away")
        async for message in client:
            if isinstance(message, ChatMessage):
                print(message.sender, message.content)
            elif isinstance(message, Resume) and not message.complete:
                ...  # messages were lost while disconnected: reload the state

It runs on asyncio and trio (anyio) and speaks WebSocket with wsproto over an anyio
stream (TLS by anyio for ``wss://``). The rules (when to reconnect, the back-off, resuming
from the last id, answering the JSON heartbeat, refreshing a token before it expires) are
:class:`~agentcast.protocol.client.ClientSession`'s; this module moves bytes and time.

Besides server messages, the iterator yields :class:`Connected` and :class:`Disconnected`
events. It ends when the application closes the client, and raises
:class:`ConnectionStopped` when the server ends the session for good (``1008``,
``4500``+, a refused handshake). Callbacks: ``client.on("chat_message", fn)`` (plain or
``async`` functions; ``"*"`` for every item).
"""

from __future__ import annotations

import inspect
import math
import random as _random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeAlias

import anyio
from anyio.abc import ByteStream, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.tls import TLSStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsLocalProtocolError

from agentcast.protocol.client import (
    Backoff,
    ClientSession,
    Connected,
    Decision,
    Disconnected,
    Reconnect,
    Stop,
    Target,
    TokenPlacement,
)
from agentcast.protocol.client_messages import (
    AgentState,
    AgentStatus,
    AuthResult,
    ChatMessage,
    Error,
    Notification,
    PresenceState,
    Resume,
    ServerMessage,
    Subscribed,
    Unknown,
    Unsubscribed,
    UserPresence,
)
from agentcast.protocol.client_messages import Ping as ServerPing
from agentcast.protocol.client_messages import Pong as ServerPong

from ._serial import SerialSend

__all__ = [
    "AgentState",
    "AgentStatus",
    "AuthResult",
    "ChatMessage",
    "Client",
    "ClientEvent",
    "Connected",
    "ConnectionStopped",
    "Disconnected",
    "Error",
    "NotConnected",
    "Notification",
    "PresenceState",
    "Resume",
    "ServerMessage",
    "ServerPing",
    "ServerPong",
    "Subscribed",
    "Unknown",
    "Unsubscribed",
    "UserPresence",
    "connect",
]

#: What the iterator yields and callbacks receive.
ClientEvent: TypeAlias = ServerMessage | Connected | Disconnected
Callback: TypeAlias = Callable[[Any], Awaitable[None] | None]
TokenProvider: TypeAlias = Callable[[], Awaitable[str] | str]

DEFAULT_OPEN_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
CLOSE_TIMEOUT = 5.0
#: Each attempt's TCP connect, TLS and upgrade must finish within this (a server that
#: accepts and says nothing is retried like a refused one).
HANDSHAKE_TIMEOUT = 10.0
_READ_SIZE = 65536


class ConnectionStopped(Exception):
    """The server ended the session for good: a close code that means "do not reconnect"
    (``1008``, ``4500``+), a refused handshake, or no reconnecting allowed. ``code`` is
    the close code (``None`` for a refused handshake, whose HTTP status is ``status``)."""

    def __init__(self, code: int | None, reason: str, status: int | None = None) -> None:
        what = f"HTTP {status}" if status is not None else f"close {code}"
        super().__init__(f"{what}: {reason}" if reason else what)
        self.code = code
        self.reason = reason
        self.status = status


class NotConnected(Exception):
    """A message cannot be sent: no connection is open right now."""


class _Handshake(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_CONNECT_ERRORS = (OSError, ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream)
_STREAM_ERRORS = (
    OSError,
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class Client:
    """A connected client; made by :func:`connect`. See the module doc."""

    def __init__(
        self,
        session: ClientSession,
        *,
        token_provider: TokenProvider | None,
        ssl_context: ssl.SSLContext | None,
        max_message_size: int,
        queue_size: int,
        iterate: bool,
        rng: Callable[[], float],
    ) -> None:
        self.session = session
        self._token_provider = token_provider
        self._ssl_context = ssl_context
        self._max_message_size = max_message_size
        self._rng = rng
        self._callbacks: dict[str, list[Callback]] = {}
        self._iterate = iterate
        send, receive = anyio.create_memory_object_stream[ClientEvent](queue_size)
        self._queue_in: MemoryObjectSendStream[ClientEvent] = send
        self._queue_out: MemoryObjectReceiveStream[ClientEvent] = receive
        self._stream: ByteStream | None = None
        self._ws: WSConnection | None = None
        self._send_lock = anyio.Lock()
        self._pings: deque[tuple[float, anyio.Event, list[float]]] = deque()
        self._ready = anyio.Event()  # the first auth answer, or a stop
        self._online = anyio.Event()  # set while a connection is open
        self._done = anyio.Event()
        self._user_id: str | None = None
        self._closing = False
        self._parts: list[str] = []  # a fragmented text message being received
        self._size = 0
        self._run_scope = anyio.CancelScope()

    # -- state ----------------------------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        """The user the server authenticated this client as (``None``: not, or not yet)."""
        return self._user_id

    @property
    def last_id(self) -> str | None:
        """The id of the last broadcast received: where a reconnect resumes from."""
        return self.session.last_id

    @property
    def connected(self) -> bool:
        return self.session.connected and self._ws is not None

    @property
    def stopped(self) -> Stop | None:
        """Why the client stopped (``None`` while it runs or reconnects)."""
        return self.session.stopped

    # -- the application's side -----------------------------------------------------------

    def on(self, kind: str, callback: Callback) -> Callback:
        """Call *callback* with every item of type *kind* (``"chat_message"``,
        ``"resume"``, ``"connected"``, ``"disconnected"``, … or ``"*"`` for all).
        Callbacks run in the order registered, before the item is queued for ``async for``.
        The first items (``connected``, ``auth``) arrive before :func:`connect` returns:
        to see them in a callback, pass it as ``connect(on={...})``."""
        self._callbacks.setdefault(kind, []).append(callback)
        return callback

    def __aiter__(self) -> AsyncIterator[ClientEvent]:
        return self._items()

    async def _items(self) -> AsyncIterator[ClientEvent]:
        if not self._iterate:
            raise RuntimeError("this client was connected with iterate=False")
        async for item in self._queue_out:
            yield item
        stop = self.session.stopped
        if stop is not None and not self._closing:
            raise ConnectionStopped(stop.code, stop.reason, stop.status)

    async def set_presence(self, status: str) -> None:
        """Set this client's presence (``online``, ``away``, ``busy``, ``offline``). It is
        sent now if connected, and again after every reconnect."""
        self.session.set_presence(status)
        await self._flush()

    async def subscribe(self, channel: str, *, since: str | None = None) -> None:
        """Subscribe to *channel* (answered ``subscribed``, or an :class:`Error` naming it);
        the subscription is asked for again on every reconnect, before any replay. With
        *since* (the id of a message seen earlier), the channel's messages after it come
        first, then :class:`Subscribed` with ``complete`` (``False``: the server could not
        replay them, reload) and ``replayed``."""
        self.session.subscribe(channel, since)
        await self._flush()

    async def unsubscribe(self, channel: str) -> None:
        self.session.unsubscribe(channel)
        await self._flush()

    async def ping(self, timeout: float = DEFAULT_OPEN_TIMEOUT) -> float:
        """Send a JSON ``ping`` and wait for the ``pong``; the round trip in seconds."""
        with anyio.fail_after(timeout):
            await self._online.wait()
            done = anyio.Event()
            result: list[float] = []
            sent = anyio.current_time()
            self._pings.append((sent, done, result))
            self._send_json_now(self.session.send_ping)
            await self._flush()
            await done.wait()
        return result[0]

    async def send(self, message: Any) -> None:
        """Send any JSON value as it is (raises :class:`NotConnected` when offline)."""
        self._send_json_now(lambda: self.session.send_json(message))
        await self._flush()

    async def wait_closed(self) -> Stop:
        """Wait until the client has stopped for good; why."""
        await self._done.wait()
        return self.session.stopped or Stop(None, "the client's task ended")

    async def close(self) -> None:
        """Close the connection (``1000``) and stop reconnecting."""
        if self._closing:
            await self._done.wait()
            return
        self._closing = True
        self.session.close()
        ws = self._ws
        if ws is not None and ws.state is ConnectionState.OPEN:
            with suppress(*_STREAM_ERRORS):
                await self._write(ws.send(CloseConnection(code=1000, reason="")))
        if self._ws is None:  # not connected (waiting to reconnect): stop at once
            self._run_scope.cancel()
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await self._done.wait()
        self._run_scope.cancel()

    # -- the connection loop --------------------------------------------------------------

    async def _run(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        refresh = False
        try:
            with self._run_scope:
                await self._loop(refresh)
        finally:
            self._done.set()
            self._ready.set()
            self._queue_in.close()

    async def _loop(self, refresh: bool) -> None:
        while True:
            if refresh:
                self.session.set_token(await self._fresh_token())
            decision = await self._connection()
            if decision is None:  # closed by the application
                break
            reconnect_in = decision.delay if isinstance(decision, Reconnect) else None
            await self._emit(
                Disconnected(
                    code=decision.code,
                    reason=decision.reason,
                    reconnect_in=reconnect_in,
                    status=decision.status if isinstance(decision, Stop) else None,
                )
            )
            if isinstance(decision, Stop):
                break
            refresh = decision.refresh_token
            await anyio.sleep(decision.delay)

    async def _connection(self) -> Decision | None:
        """One connection, from opening to its end; what to do next."""
        session = self.session
        if session.stopped is not None:
            return None if self._closing else session.stopped
        target = session.target()
        try:
            stream = await self._open(target)
        except _Handshake as exc:
            return session.handshake_refused(exc.status, exc.reason, self._rng())
        except _CONNECT_ERRORS as exc:
            return session.connect_failed(_describe(exc), self._rng())
        except TimeoutError:
            return session.connect_failed("timed out opening the connection", self._rng())
        code: int | None = None
        reason = ""
        try:
            code, reason = await self._read(stream)
        finally:
            self._ws = None
            self._stream = None
            self._online = anyio.Event()
            self._pings.clear()  # their pongs will never come; ping() times out
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        decision = session.connection_lost(code, reason, anyio.current_time(), self._rng())
        if self._closing:
            return None
        return decision

    async def _open(self, target: Target) -> ByteStream:
        """TCP (and TLS), then the WebSocket handshake; the open stream."""
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            stream: ByteStream = await anyio.connect_tcp(target.host, target.port)
            if target.secure:
                context = self._ssl_context or ssl.create_default_context()
                try:
                    stream = await TLSStream.wrap(
                        SerialSend(stream),
                        hostname=target.host,
                        ssl_context=context,
                        standard_compatible=False,
                    )
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                    raise
            try:
                ws = WSConnection(ConnectionType.CLIENT)
                request = Request(
                    host=target.host_header,
                    target=target.resource,
                    extra_headers=[(k.encode(), v.encode()) for k, v in target.headers],
                    subprotocols=list(target.subprotocols),
                )
                await stream.send(ws.send(request))
                await self._handshake(stream, ws)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                raise
        self._stream = stream
        self._ws = ws
        return stream

    async def _handshake(self, stream: ByteStream, ws: WSConnection) -> None:
        status = 0
        body = b""
        while True:
            data = await stream.receive(_READ_SIZE)
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise _Handshake(status, f"HTTP {status}")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished or len(body) > 1024:
                        text = body.decode("utf-8", "replace").strip().splitlines()
                        raise _Handshake(status, text[0][:200] if text else f"HTTP {status}")

    async def _read(self, stream: ByteStream) -> tuple[int | None, str]:
        """Read until the connection ends; its close code (``None``: none) and reason."""
        session = self.session
        ws = self._ws
        assert ws is not None
        connected = session.opened(anyio.current_time(), time.time())
        self._online.set()
        await self._emit(connected)
        self._parts = []
        self._size = 0
        # The bytes that came with the 101 (the auth message, often) are already decoded.
        ended = await self._events(ws)
        while ended is None:
            deadline = session.next_deadline()
            data: bytes | None = None
            wait = math.inf if deadline is None else max(0.0, deadline - anyio.current_time())
            with anyio.move_on_after(wait) as scope:
                try:
                    data = await stream.receive(_READ_SIZE)
                except _STREAM_ERRORS:
                    data = None
            if scope.cancelled_caught:
                action = session.handle_timer(anyio.current_time())
                if action == "abort":
                    return None, "no message from the server within the idle timeout"
                if action == "refresh":
                    token = await self._fresh_token()
                    session.refresh(token, anyio.current_time(), time.time())
                    await self._flush()
                continue
            try:
                ws.receive_data(data)
            except WsLocalProtocolError:
                return None, "connection lost"
            ended = await self._events(ws)
            if ended is None and data is None:
                return None, "connection lost"
        return ended

    async def _events(self, ws: WSConnection) -> tuple[int | None, str] | None:
        """Handle what wsproto decoded; the close code and reason once the connection
        has ended, else ``None``."""
        session = self.session
        for event in ws.events():
            now = anyio.current_time()
            if isinstance(event, TextMessage):
                self._parts.append(event.data)
                self._size += len(event.data)
                if self._size > self._max_message_size:
                    await self._close_frame(ws, 1009, "message too big")
                    return 1009, "message from the server too big"
                if event.message_finished:
                    text = "".join(self._parts)
                    self._parts.clear()
                    self._size = 0
                    message = session.receive_text(text, now, time.time())
                    await self._flush()
                    await self._received(message, now)
            elif isinstance(event, BytesMessage | Pong):
                session.touch(now)
            elif isinstance(event, Ping):
                session.touch(now)
                await self._write_quietly(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._write_quietly(ws.send(event.response()))
                return event.code, event.reason or ""
        return None

    async def _received(self, message: ServerMessage, now: float) -> None:
        if isinstance(message, AuthResult):
            if message.success and message.user_id is not None:
                self._user_id = message.user_id
            self._ready.set()
        elif isinstance(message, ServerPong) and self._pings:
            sent, done, result = self._pings.popleft()
            result.append(now - sent)
            done.set()
        await self._emit(message)

    # -- helpers --------------------------------------------------------------------------

    async def _emit(self, item: ClientEvent) -> None:
        for kind in (item.type, "*"):
            for callback in self._callbacks.get(kind, ()):
                result = callback(item)
                if inspect.isawaitable(result):
                    await result
        if self._iterate:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self._queue_in.send(item)  # raises once nobody iterates any more

    async def _fresh_token(self) -> str:
        provider = self._token_provider
        assert provider is not None
        result = provider()
        if inspect.isawaitable(result):
            return await result
        return result

    def _send_json_now(self, queue: Callable[[], None]) -> None:
        try:
            queue()
        except Exception as exc:
            if not self.session.connected:
                raise NotConnected("not connected") from exc
            raise

    async def _flush(self) -> None:
        texts = self.session.texts_to_send()
        ws = self._ws
        if not texts or ws is None or ws.state is not ConnectionState.OPEN:
            return
        await self._write_quietly(b"".join(ws.send(Message(data=text)) for text in texts))

    async def _close_frame(self, ws: WSConnection, code: int, reason: str) -> None:
        if ws.state is ConnectionState.OPEN:
            await self._write_quietly(ws.send(CloseConnection(code=code, reason=reason)))

    async def _write(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            return
        async with self._send_lock:
            await stream.send(data)

    async def _write_quietly(self, data: bytes) -> None:
        # A write to a connection that just died: the reader sees the end and decides.
        with suppress(*_STREAM_ERRORS):
            await self._write(data)


def _describe(exc: BaseException) -> str:
    """Why a connection could not be opened, in one line: the first underlying error
    (anyio says "All connection attempts failed" and chains each address's error)."""
    while True:
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    text = str(exc) or type(exc).__name__
    return text[:200]


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: str | None = None,
    token_provider: TokenProvider | None = None,
    token_in: TokenPlacement = "query",
    since: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    reconnect: bool = True,
    backoff: Backoff | None = None,
    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    idle_timeout: float | None = 90.0,
    refresh_margin: float = 30.0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    queue_size: int = 1024,
    iterate: bool = True,
    on: Mapping[str, Callback] | None = None,
    rng: Callable[[], float] = _random.random,
) -> AsyncIterator[Client]:
    """Connect to the agentcast server at *url* (``ws://`` or ``wss://``, any path).

    *token* is sent as *token_in* says (``query``, ``header`` or ``subprotocol``);
    *token_provider* (a function, or a coroutine function, returning a token) is asked
    for the first token when *token* is ``None``, for a fresh one after a ``4001`` close
    or a ``401``, and before the token's ``exp``. *since* resumes from an id saved
    earlier. Returns once the server has answered ``auth``; a first connection that
    fails is retried like a reconnect for up to *open_timeout* seconds (``None``: for
    ever), then ``TimeoutError``. A refused connection raises
    :class:`ConnectionStopped`. *queue_size* bounds the messages waiting for ``async
    for`` (when full, the client stops reading the socket); with ``iterate=False`` only
    callbacks receive them (*on*: ``{kind: callback}``, registered before the first
    connection, so they also see the first items and every failed attempt).
    *idle_timeout*: a server silent that long (it pings every
    30 s by default) is presumed gone and the client reconnects.
    """
    if token is None and token_provider is not None:
        first = token_provider()
        token = await first if inspect.isawaitable(first) else first
    session = ClientSession(
        url,
        token=token,
        token_in=token_in,
        can_refresh=token_provider is not None,
        since=since,
        reconnect=reconnect,
        backoff=backoff,
        refresh_margin=refresh_margin,
        idle_timeout=idle_timeout,
        headers=headers,
    )
    client = Client(
        session,
        token_provider=token_provider,
        ssl_context=ssl_context,
        max_message_size=max_message_size,
        queue_size=queue_size,
        iterate=iterate,
        rng=rng,
    )
    for kind, callback in (on or {}).items():
        client.on(kind, callback)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(client._run)
            with anyio.fail_after(open_timeout):
                await client._ready.wait()
            stop = session.stopped
            if stop is not None and client.user_id is None:
                raise ConnectionStopped(stop.code, stop.reason, stop.status)
            try:
                yield client
            finally:
                with anyio.CancelScope(shield=True):
                    await client.close()
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The task group wraps what its body raised: give the application its own
        # exception (or the client's), as if there were no task group.
        leaf = _single(group)
        if leaf is None:
            raise
        raise leaf from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
