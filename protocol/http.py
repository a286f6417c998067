"""Answers to the plain HTTP requests on the server's port (PROTOCOL.md sections 1 and 8).

:func:`answer` gives the response to ``GET /healthz`` and to the publish API
(``POST /api/agent-status``, ``/api/chat-messages``, ``/api/notifications``), and the
``404``/``405`` of :func:`~agentcast.protocol.routing.refusal` for any other request. It
is pure: the adapter passes the :class:`~agentcast.protocol.events.HttpRequest`, the hub
and the time, and writes the returned :class:`~agentcast.protocol.HttpAnswer`.
``GET /metrics`` is the adapter's (it owns the metrics registry).
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from .answers import JSON, HttpAnswer
from .events import HttpRequest
from .hub import Hub
from .messages import AgentStatus, ChatMessage, Notification
from .openapi import openapi_json
from .routing import Route, refusal, route
from .scope import split_scope

__all__ = ["PUBLISH_PATHS", "answer", "healthz", "is_loopback"]

#: The publish API's paths and the payload each takes.
PUBLISH_PATHS: dict[str, type[AgentStatus | ChatMessage | Notification]] = {
    "/api/agent-status": AgentStatus,
    "/api/chat-messages": ChatMessage,
    "/api/notifications": Notification,
}

_json = HttpAnswer.json


def healthz(hub: Hub) -> HttpAnswer:
    """``200 {"status":"ok","clients":N,"authenticated":M}``; while the server cannot
    accept connections (out of file descriptors: see
    :mod:`agentcast.protocol.accepting`), ``"status":"degraded"`` with
    ``"accepting":false`` and the reason (still ``200``: the server serves the clients
    it has, and a liveness probe must not restart it for that)."""
    body: dict[str, object] = {
        "status": "ok",
        "clients": hub.clients_count(),
        "authenticated": hub.authenticated_clients_count(),
    }
    shortage = hub.accepting.shortage
    if shortage is not None:
        body["status"] = "degraded"
        body["accepting"] = False
        body["acceptError"] = shortage.reason
    return _json(200, body)


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
    """The response to ``GET /healthz``, ``GET /openapi.json`` or a publish API request
    (``404``/``405`` for
    a request routed elsewhere: the adapter answers ``/metrics`` and upgrades itself)."""
    target = route(request.method, request.path, hub.settings)
    if target is Route.HEALTHZ:
        return healthz(hub)
    if target is Route.OPENAPI:
        return HttpAnswer(200, (("content-type", JSON),), openapi_json(hub.settings))
    if target is not Route.PUBLISH:
        return refusal(target, request.path) or _json(404, {"error": "not found"})
    kind = PUBLISH_PATHS[request.path]
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
            data, scope = split_scope(item)  # userIds, channel (PROTOCOL.md 4a)
            validated.append((kind.from_data(data), scope))
        except ValueError as exc:
            where = f"item {index}: " if batch else ""
            return _json(400, {"error": f"{where}{exc}"})
    published = [hub.publish(item, now=now, wall=wall, scope=scope) for item, scope in validated]
    delivered = sum(p.delivered for p in published)
    if batch:
        return _json(202, {"ids": [p.id for p in published], "delivered": delivered})
    return _json(202, {"id": published[0].id, "delivered": delivered})
