"""The ASGI adapter: agentcast under uvicorn, hypercorn, Starlette and FastAPI.

An ASGI 3 application serving the same surface as the reference server: the WebSocket
endpoint at ``settings.path`` (other paths: ``404``), the same session as Server-Sent
Events at ``GET settings.events_path`` (:mod:`._asgi_events`), ``GET /healthz``,
``GET /metrics``, the publish API (``POST /api/...``) and the dashboard (``GET /``,
``/agentcast.js``), from the same
:class:`~agentcast.adapters.service.Service` the reference server holds, so server code
publishes the same way::

    from agentcast.adapters.asgi import create_app
    from agentcast.protocol import Settings

    app = create_app(settings=Settings(heartbeat_interval=30.0))
    app.service.send_notification("success", "Build finished")   # from the event loop

Run it with any ASGI server; ``uvicorn agentcast.adapters.asgi:app`` serves the
module-level ``app``, configured from the ``AGENTCAST_*`` environment variables exactly
as ``agentcast serve`` is (host, port, TLS and the loop are then the ASGI server's).

Mounted in a Starlette or FastAPI application, everything moves under the mount point::

    api = FastAPI(lifespan=agentcast.lifespan)      # starts the presence timer
    api.mount("/realtime", agentcast)               # ws://host/realtime/ws, /realtime/healthz

or only the WebSocket endpoint, at a path of the application's router:
``api.add_websocket_route("/ws", agentcast.websocket_endpoint)``. Paths are matched
relative to ``scope["root_path"]`` (what a mount or ``--root-path`` adds).

**What the ASGI server does here.** It does the HTTP upgrade and the framing, so
``max_message_size`` is enforced twice over: pass it to the server (uvicorn
``ws_max_size``; :func:`uvicorn_options` gives every matching option), which refuses a
bigger message before buffering it, and a message that still arrives bigger is closed
``1009`` by the session. Protocol Pings are the server's too (uvicorn
``ws_ping_interval``/``ws_ping_timeout``, hypercorn ``websocket_ping_interval``), and
their Pongs never reach an ASGI application: a browser (or the seed's Node client), which
answers protocol Pings but never JSON pings, would look silent. So by default the session
does not close silent clients (``4000``) under ASGI; the server's keepalive closes dead
peers (uvicorn with ``1011``). ``create_app(close_silent_clients=True)`` restores the
``4000`` rule for deployments whose clients all send JSON pings or messages.

**Lifespan.** The service's background work (:meth:`Service.run
<agentcast.adapters.service.Service.run>`: the presence timer, a user turns ``offline``
after the grace period, and the JWT key-file watch) runs for the ASGI ``lifespan`` (or
:meth:`AgentcastASGI.lifespan` in the host application's lifespan). Without lifespan
events (an application mounted in Starlette, say) it runs inside the task group of an
open WebSocket, handed to another one when that one closes, and with no WebSocket open
each request first turns offline the users whose grace period ended meanwhile. At
lifespan shutdown every WebSocket still open is closed with ``1001`` (uvicorn closes its
own first, with ``1012``). Each WebSocket is served by an
:class:`~._asgi_driver.AsgiDriver`, each event stream by an
:class:`~._asgi_events.AsgiEventStream`.

**Event streams and the ASGI server's shutdown.** An ASGI server has no way to tell an
application that it is stopping before its lifespan shutdown, and uvicorn and hypercorn
wait for open HTTP responses before that (uvicorn up to ``--timeout-graceful-shutdown``,
then cancels them). An event stream is such a response: to end every stream with its
``close`` event (``1001``) before the server stops, call :meth:`AgentcastASGI.shutdown`
first (from the host application's signal handling), or set the graceful-shutdown timeout
so that the streams are cut, and their clients reconnect after ``retry``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from agentcast.protocol import (
    Authenticator,
    CloseCode,
    HttpAnswer,
    HttpRequest,
    Route,
    Settings,
    route,
)
from agentcast.protocol.answers import body_too_large, not_an_upgrade, wrong_path
from agentcast.protocol.auth import ChannelAuthorizer
from agentcast.protocol.http import authorize
from agentcast.protocol.routing import refusal

from . import redaction
from ._asgi_driver import AsgiDriver, Receive, Scope, Send, peer_of, send_answer
from ._asgi_events import AsgiEventStream
from .config import config_from_environment
from .options import ConfigError
from .server import Server
from .service import Service, clock

__all__ = ["AgentcastASGI", "create_app", "from_environment", "route_path", "uvicorn_options"]

log = logging.getLogger("agentcast.server")


def route_path(scope: Scope) -> str:
    """The request path relative to where the application is mounted.

    ASGI servers and routers put the mount point in ``root_path``; most keep it in
    ``path`` too (Starlette's ``Mount``, uvicorn's ``--root-path``), some strip it (a
    proxy that removed the prefix): both are handled.
    """
    path = str(scope.get("path") or "/")
    root = str(scope.get("root_path") or "").rstrip("/")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        path = path[len(root) :]
    return path or "/"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Options for ``uvicorn.run``/``uvicorn.Config`` that match *settings*: the largest
    message (``ws_max_size``); the keepalive, a protocol Ping every heartbeat interval and
    a close when no Pong came back within the heartbeat timeout of the last one; and no
    per-message compression (``ws_per_message_deflate``, on in uvicorn by default), which
    would compress every broadcast once per recipient, as the reference server never does.
    """
    interval = settings.heartbeat_interval
    timeout = settings.heartbeat_timeout
    return {
        "ws_max_size": settings.max_message_size,
        "ws_ping_interval": interval,
        "ws_ping_timeout": timeout - interval if timeout > interval else timeout,
        "ws_per_message_deflate": False,
    }


class _HttpExchange:
    """A plain HTTP request being answered, counted among the service's connections."""

    __slots__ = ("__weakref__",)
    backlog = 0

    def start_close(self, code: int, reason: str) -> None:
        """An HTTP answer is never interrupted: it ends by itself."""

    def abort(self) -> None:
        """An HTTP answer is never interrupted: it ends by itself."""


class AgentcastASGI:
    """The ASGI application (see the module doc). Build it with :func:`create_app`."""

    def __init__(self, service: Service, *, close_silent_clients: bool = False) -> None:
        #: The service: publishing API, hub, authenticator, metrics, live connections.
        self.service = service
        #: Close a client that sent no message for ``heartbeat_timeout`` with 4000 (see
        #: the module doc: under ASGI, Pongs are invisible, so off by default).
        self.close_silent_clients = close_silent_clients
        #: The WebSockets being served, and the task group of each.
        self._serving: dict[AsgiDriver, TaskGroup] = {}
        #: Without lifespan events: the open WebSocket whose task group runs the
        #: service's background work.
        self._host: AsgiDriver | None = None

    @property
    def server(self) -> Service:
        """The former name of :attr:`service`, kept for existing code."""
        return self.service

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            self.service.catch_up()
            if route("GET", route_path(scope), self.service.settings) is Route.WEBSOCKET:
                await self._websocket(scope, receive, send)
            else:
                await _refuse_websocket(scope, receive, send, self.service.settings.path)
        elif kind == "http":
            self.service.catch_up()
            path = route_path(scope)
            method = str(scope.get("method") or "GET")
            if route(method, path, self.service.settings) is Route.EVENTS:
                await AsgiEventStream(self.service, scope, receive, send).run()
            else:
                await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan_events(receive, send)

    @property
    def websocket_endpoint(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """An ASGI application serving only the WebSocket endpoint, at whatever path a
        router matched (``add_websocket_route("/ws", app.websocket_endpoint)``)."""
        return _Endpoint(self)

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the service's background work while the context is open; close the
        WebSockets still open with 1001 on the way out. Usable as a Starlette/FastAPI
        ``lifespan``."""
        if self.service.running:  # already running in this loop
            yield
            return
        async with anyio.create_task_group() as tg:
            await tg.start(self.service.run)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await self.shutdown()
                tg.cancel_scope.cancel()

    async def shutdown(self) -> None:
        """Close every open WebSocket with 1001 and wait (up to the service's
        ``drain_timeout``) until they are closed; drop the ones left."""
        await self.service.drain()

    # -- internals ----------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        driver = AsgiDriver(
            self.service,
            scope,
            receive,
            send,
            close_silent=self.close_silent_clients,
            on_serving=self._driver_serving,
        )
        try:
            await driver.run()
        finally:
            self._driver_ended(driver)

    def _driver_serving(self, driver: AsgiDriver, tg: TaskGroup) -> None:
        self._serving[driver] = tg
        self._offer_host(driver, tg)

    def _driver_ended(self, driver: AsgiDriver) -> None:
        self._serving.pop(driver, None)
        if self._host is driver:  # its task group, and the background work, are gone
            self._host = None
            for other, tg in self._serving.items():
                if other.serving:
                    self._offer_host(other, tg)
                    break

    def _offer_host(self, driver: AsgiDriver, tg: TaskGroup) -> None:
        """Without lifespan events, the service's background work runs in the task group
        of an open WebSocket, *driver*'s (there is no other scope to own it); when it
        ends, another open one takes it over (:meth:`_driver_ended`)."""
        if self._host is None and not self.service.running:
            self._host = driver
            tg.start_soon(self._background)

    async def _background(self) -> None:
        try:
            await self.service.run()
        except Exception:  # pragma: no cover - its tasks catch their own errors
            log.exception("error in a background task")

    async def _lifespan_events(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message.get("type") != "lifespan.startup":
            return
        started = False
        try:
            async with self.lifespan():
                await send({"type": "lifespan.startup.complete"})
                started = True
                while (await receive()).get("type") != "lifespan.shutdown":
                    pass
        except Exception as exc:
            log.exception("lifespan failed")
            failed = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": failed, "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = _HttpExchange()
        self.service.register(exchange)
        try:
            await self._answer_http(scope, receive, send)
        except Exception:
            log.exception("internal error answering %s", peer_of(scope)[1])
            try:
                await send_answer(send, HttpAnswer.json(500, {"error": "internal error"}))
            except Exception:  # the response had started, or the client is gone
                log.debug("could not answer 500", exc_info=True)
        finally:
            self.service.unregister(exchange)

    async def _answer_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        path = route_path(scope)
        method = str(scope.get("method") or "GET")
        target = route(method, path, service.settings)
        if target is Route.WEBSOCKET:
            await send_answer(send, not_an_upgrade(method))
            return
        refused = refusal(target, path)
        if refused is not None:
            await send_answer(send, refused)
            return
        if target is Route.METRICS:
            metrics = service.metrics
            content_type = (("content-type", metrics.content_type),)
            await send_answer(send, HttpAnswer(200, content_type, metrics.render()))
            return
        headers = tuple(
            (bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1"))
            for k, v in scope.get("headers") or ()
        )
        if target is Route.STATIC:
            if_none_match = next((v for k, v in headers if k == "if-none-match"), None)
            await send_answer(send, service.static.answer(method, path, if_none_match))
            return
        if target is Route.PUBLISH:
            # Refused from the head, before the body is read.
            given = next((v for k, v in headers if k == "authorization"), None)
            refused = authorize(given, peer_of(scope)[0], service.settings.api_key)
            if refused is not None:
                await send_answer(send, refused)
                return
        limit = service.settings.max_body_size
        length = next((v for k, v in headers if k == "content-length"), None)
        body = None
        if length is None or not length.isdigit() or int(length) <= limit:
            try:
                body = await _read_body(receive, limit)
            except _ClientGone:
                return
        if body is None:
            await send_answer(send, body_too_large(limit))
            return
        request = HttpRequest(
            method=method,
            path=path,
            query=bytes(scope.get("query_string") or b"").decode("latin-1"),
            headers=headers,
            body=body,
            client=peer_of(scope)[0],
        )
        reply = await service.answer_async(request, clock(), time.time())
        # The path only: a query string may hold a token.
        log.debug("http %s %s -> %d", method, path, reply.status)
        await send_answer(send, reply)


class _Endpoint:
    """:attr:`AgentcastASGI.websocket_endpoint`: the WebSocket at the router's path."""

    __slots__ = ("_app",)

    def __init__(self, app: AgentcastASGI) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "websocket":
            self._app.service.catch_up()
            await self._app._websocket(scope, receive, send)
        elif scope.get("type") == "http":
            await send_answer(send, not_an_upgrade(str(scope.get("method"))))


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, read as it arrives; ``None`` as soon as it passes *limit* (the
    rest is never read)."""
    body = bytearray()
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            raise _ClientGone
        body += message.get("body") or b""
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            return bytes(body)


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
    """An upgrade for another path: ``404`` (or a close before accepting: ``403``)."""
    if (await receive()).get("type") != "websocket.connect":
        return
    try:
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send_answer(send, wrong_path(endpoint), websocket=True)
        else:
            await send({"type": "websocket.close", "code": CloseCode.POLICY})
    except Exception:
        log.debug("could not refuse an upgrade", exc_info=True)


# -- building the application ------------------------------------------------------------


def create_app(
    service: Service | Server | None = None,
    *,
    settings: Settings | None = None,
    authenticator: Authenticator | None = None,
    authorizer: ChannelAuthorizer | None = None,
    close_silent_clients: bool = False,
) -> AgentcastASGI:
    """The ASGI application for *service* (or a reference server's service), or for a
    new :class:`~agentcast.adapters.service.Service` built from *settings*,
    *authenticator* (the development authenticator by default) and *authorizer* (who may
    subscribe to what; default: the token says).

    It also keeps tokens out of uvicorn's logs, which show every request's URL, query
    string included (``/ws?token=…``): see :mod:`agentcast.adapters.redaction`."""
    if service is None:
        service = Service(settings, authenticator=authenticator, authorizer=authorizer)
    elif settings is not None or authenticator is not None or authorizer is not None:
        raise ValueError("pass a service, or settings and an authenticator, not both")
    elif isinstance(service, Server):
        service = service.service
    service.warn_about_defaults()
    redaction.install()
    return AgentcastASGI(service, close_silent_clients=close_silent_clients)


def from_environment(environ: Mapping[str, str] | None = None) -> AgentcastASGI:
    """The application configured from ``AGENTCAST_*`` variables, read as
    ``agentcast serve`` reads them (:func:`agentcast.adapters.config.config_from_environment`);
    the listening options (host, port, TLS, backend) are the ASGI server's and are
    ignored here."""
    return create_app(config_from_environment(environ).service())


_app: AgentcastASGI | None = None


def __getattr__(name: str) -> AgentcastASGI:
    """``app``: built from the environment on first use (``uvicorn
    agentcast.adapters.asgi:app``), so importing this module has no side effects."""
    global _app
    if name == "app":
        if _app is None:
            try:
                _app = from_environment()
            except ConfigError as exc:
                # The ASGI server is importing us: say what is wrong in one line (a missing
                # extra, a bad AGENTCAST_* value) instead of a traceback through its loader.
                raise SystemExit(f"agentcast: error: {exc}") from None
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
