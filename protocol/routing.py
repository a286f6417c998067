"""Which endpoint an HTTP request is for (PROTOCOL.md sections 1 and 8), decided once.

:func:`route` is pure: method, path (without the query, relative to where the server is
mounted) and settings in, a :class:`Route` out. The core's HTTP phase and the ASGI
adapter both call it, so a path means the same on either; :func:`refusal` gives the
answer for the two routes that are answers by themselves (``404``, ``405``).

Adding an endpoint is a member of :class:`Route` and a line of :data:`_FIXED`; the two
endpoints whose path is configured (the WebSocket, ``settings.path``, and the event
stream, ``settings.events_path``) are matched first.
"""

from __future__ import annotations

from enum import Enum

from .answers import HttpAnswer
from .config import Settings

__all__ = ["STATIC_PATHS", "Route", "allowed_method", "refusal", "route"]


class Route(Enum):
    """Where a request goes."""

    #: The WebSocket endpoint (``settings.path``): an upgrade, or ``426``/``400``.
    WEBSOCKET = "websocket"
    #: ``GET`` the event stream (``settings.events_path``): the same session as
    #: Server-Sent Events (PROTOCOL.md 11), see :mod:`agentcast.protocol.sse`.
    EVENTS = "events"
    #: ``GET /healthz``.
    HEALTHZ = "healthz"
    #: ``GET /metrics``: the adapter's (it owns the metrics registry).
    METRICS = "metrics"
    #: ``POST /api/agent-status``, ``/api/chat-messages``, ``/api/notifications``.
    PUBLISH = "publish"
    #: ``GET /openapi.json``: the OpenAPI document of the HTTP API.
    OPENAPI = "openapi"
    #: ``GET``/``HEAD`` of the dashboard's files (:data:`STATIC_PATHS`), with
    #: ``settings.dashboard`` on: the adapter reads the file, :mod:`.static` answers.
    STATIC = "static"
    #: A path we do not serve: ``404``.
    NOT_FOUND = "not_found"
    #: A path we serve, with another method: ``405`` with ``Allow``.
    METHOD_NOT_ALLOWED = "method_not_allowed"


#: The dashboard's files: URL path -> file name in the package's ``static`` folder.
STATIC_PATHS: dict[str, str] = {
    "/": "index.html",
    "/dashboard.css": "dashboard.css",
    "/dashboard.js": "dashboard.js",
    "/agentcast.js": "agentcast.js",
    "/agentcast.d.ts": "agentcast.d.ts",
}

_STATIC_METHODS = "GET, HEAD"

#: Every fixed path, its route and the methods it takes.
_FIXED: dict[str, tuple[Route, str]] = {
    "/healthz": (Route.HEALTHZ, "GET"),
    "/metrics": (Route.METRICS, "GET"),
    "/api/agent-status": (Route.PUBLISH, "POST"),
    "/api/chat-messages": (Route.PUBLISH, "POST"),
    "/api/notifications": (Route.PUBLISH, "POST"),
    "/openapi.json": (Route.OPENAPI, "GET"),
    **dict.fromkeys(STATIC_PATHS, (Route.STATIC, _STATIC_METHODS)),
}

_NOT_FOUND = HttpAnswer.json(404, {"error": "not found"})


def route(method: str, path: str, settings: Settings) -> Route:
    """The route of a request for *path* with *method*.

    The WebSocket endpoint comes first (a deployment may mount it anywhere); its method
    is checked by the upgrade (a non-``GET`` is a bad upgrade, ``400``). The dashboard's
    files exist only with ``settings.dashboard`` on.
    """
    if path == settings.path:
        return Route.WEBSOCKET
    if path == settings.events_path:
        return Route.EVENTS if method == "GET" else Route.METHOD_NOT_ALLOWED
    fixed = _FIXED.get(path)
    if fixed is None:
        return Route.NOT_FOUND
    target, allowed = fixed
    if target is Route.STATIC and not settings.dashboard:
        return Route.NOT_FOUND
    return target if method in allowed.split(", ") else Route.METHOD_NOT_ALLOWED


def allowed_method(path: str) -> str | None:
    """The methods a fixed *path* takes (the ``Allow`` header: ``GET, HEAD`` for the
    dashboard's files), or ``None`` for a path not served."""
    fixed = _FIXED.get(path)
    return None if fixed is None else fixed[1]


def refusal(target: Route, path: str) -> HttpAnswer | None:
    """The answer to a request routed to *target* when the route is the answer:
    ``404`` for :attr:`Route.NOT_FOUND`, ``405`` for :attr:`Route.METHOD_NOT_ALLOWED`;
    ``None`` for a route that serves the request."""
    if target is Route.NOT_FOUND:
        return _NOT_FOUND
    if target is Route.METHOD_NOT_ALLOWED:
        # A fixed path's method, or the event stream's (its path is configured).
        allowed = allowed_method(path) or "GET"
        return HttpAnswer.json(405, {"error": "method not allowed"}, (("allow", allowed),))
    return None
