"""Answers to the plain HTTP requests on the server's port (PROTOCOL.md sections 1 and 8).

:func:`refuse` routes a request: ``404`` for an unknown path, ``405`` for a wrong method
on ``/healthz`` or ``/metrics``, else ``None``. :func:`answer` then gives the response to
``GET /healthz`` and to the publish API (``POST /api/agent-status``,
``/api/chat-messages``, ``/api/notifications``). Both are pure: the adapter passes the
:class:`~agentcast.protocol.events.HttpRequest`, the hub and the time, and writes the
returned :class:`HttpAnswer`. ``GET /metrics`` is the adapter's (it owns the metrics
registry).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass

from .events import HttpRequest
from .hub import Hub
from .messages import AgentStatus, ChatMessage, Notification

__all__ = ["HTTP_ROUTES", "PUBLISH_PATHS", "HttpAnswer", "answer", "healthz", "refuse"]

#: The plain HTTP paths besides the publish API (``/api/...``), and their method.
HTTP_ROUTES = {"/healthz": "GET", "/metrics": "GET"}

PUBLISH_PATHS: dict[str, type[AgentStatus | ChatMessage | Notification]] = {
    "/api/agent-status": AgentStatus,
    "/api/chat-messages": ChatMessage,
    "/api/notifications": Notification,
}


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


def _json(status: int, obj: object, headers: tuple[tuple[str, str], ...] = ()) -> HttpAnswer:
    return HttpAnswer(status, json.dumps(obj, separators=(",", ":")).encode(), headers)


def refuse(method: str, path: str) -> HttpAnswer | None:
    """``404`` for a path we do not serve, ``405`` for a wrong method on a route of
    :data:`HTTP_ROUTES`; ``None``: answer the request (:func:`answer`, or ``/metrics``)."""
    allowed = HTTP_ROUTES.get(path)
    if allowed is None and not path.startswith("/api/"):
        return _json(404, {"error": "not found"})
    if allowed is not None and method != allowed:
        return _json(405, {"error": "method not allowed"}, (("allow", allowed),))
    return None


def healthz(hub: Hub) -> HttpAnswer:
    """``200 {"status":"ok","clients":N,"authenticated":M}``."""
    return _json(
        200,
        {
            "status": "ok",
            "clients": hub.clients_count(),
            "authenticated": hub.authenticated_clients_count(),
        },
    )


def is_loopback(client: str | None) -> bool:
    """Whether *client* (an address as the adapter reports it) is a loopback address."""
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _authorized(request: HttpRequest, api_key: str | None) -> HttpAnswer | None:
    if api_key is None:
        if is_loopback(request.client):
            return None
        return _json(403, {"error": "without an API key the publish API accepts loopback only"})
    header = request.header("authorization") or ""
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), api_key.encode()):
        return None
    return _json(401, {"error": "missing or invalid API key"}, (("www-authenticate", "Bearer"),))


def answer(request: HttpRequest, hub: Hub, *, now: float, wall: float) -> HttpAnswer:
    """The response to ``GET /healthz`` or a publish API request."""
    if request.path == "/healthz":
        return healthz(hub)
    kind = PUBLISH_PATHS.get(request.path)
    if kind is None:
        return _json(404, {"error": "not found"})
    if request.method != "POST":
        return _json(405, {"error": "method not allowed"}, (("allow", "POST"),))
    refused = _authorized(request, hub.settings.api_key)
    if refused is not None:
        return refused
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError):
        return _json(400, {"error": "body is not valid JSON"})
    batch = isinstance(body, list)
    items = body if batch else [body]
    if batch and not items:
        return _json(400, {"error": "empty batch"})
    if len(items) > hub.settings.max_batch:
        return _json(400, {"error": f"a batch holds at most {hub.settings.max_batch} items"})
    validated = []
    for index, item in enumerate(items):
        try:
            validated.append(kind.from_data(item))
        except ValueError as exc:
            where = f"item {index}: " if batch else ""
            return _json(400, {"error": f"{where}{exc}"})
    published = [hub.publish(item, now=now, wall=wall) for item in validated]
    delivered = sum(p.delivered for p in published)
    if batch:
        return _json(202, {"ids": [p.id for p in published], "delivered": delivered})
    return _json(202, {"id": published[0].id, "delivered": delivered})
