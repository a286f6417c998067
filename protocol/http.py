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
from collections.abc import Sequence
from dataclasses import dataclass

from .answers import JSON, HttpAnswer
from .events import HttpRequest
from .hub import Hub, Published
from .messages import AgentStatus, ChatMessage, Notification
from .openapi import openapi_json
from .routing import Route, refusal, route
from .scope import Scope, split_scope

__all__ = [
    "PUBLISH_PATHS",
    "PublishRequest",
    "answer",
    "authorize",
    "healthz",
    "is_loopback",
    "publish_request",
    "published",
]

#: The publish API's paths and the payload each takes.
PUBLISH_PATHS: dict[str, type[AgentStatus | ChatMessage | Notification]] = {
    "/api/agent-status": AgentStatus,
    "/api/chat-messages": ChatMessage,
    "/api/notifications": Notification,
}

_json = HttpAnswer.json


def healthz(hub: Hub) -> HttpAnswer:
    """``200`` with :meth:`Hub.health <agentcast.protocol.Hub.health>`: ``{"status":
    "ok", "clients": N, "authenticated": M, "unauthenticated": U}``, ``"degraded"``
    while the server cannot accept connections (and, in a cluster, while it cannot
    reach the others), with the cluster's figures in a cluster. Still ``200`` when
    degraded: the server serves the clients it has, and a liveness probe must not
    restart it for that."""
    return _json(200, hub.health())


def is_loopback(client: str | None) -> bool:
    """Whether *client* (an address as the adapter reports it) is a loopback address."""
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def authorize(
    authorization: str | None, client: str | None, api_key: str | None
) -> HttpAnswer | None:
    """Whether a publish API request may publish: ``None``, or its ``401``/``403``.
    Asked from the request's head (its ``Authorization`` header and the client's
    address), so a refused request is answered before its body is read."""
    if api_key is None:
        if is_loopback(client):
            return None
        return _json(403, {"error": "without an API key the publish API accepts loopback only"})
    header = authorization or ""
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), api_key.encode()):
        return None
    return _json(401, {"error": "missing or invalid API key"}, (("www-authenticate", "Bearer"),))


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A valid publish API request: the validated items with their scopes, in order, and
    whether the body was a batch (an array)."""

    items: list[tuple[AgentStatus | ChatMessage | Notification, Scope]]
    batch: bool


def answer(request: HttpRequest, hub: Hub, *, now: float, wall: float) -> HttpAnswer:
    """The response to ``GET /healthz``, ``GET /openapi.json`` or a publish API request
    (``404``/``405`` for
    a request routed elsewhere: the adapter answers ``/metrics`` and upgrades itself)."""
    parsed = publish_request(request, hub)
    if isinstance(parsed, HttpAnswer):
        return parsed
    # One batch: a client is judged by what it had not drained when the batch began.
    with hub.publishing_batch():
        results = [hub.publish(it, now=now, wall=wall, scope=scope) for it, scope in parsed.items]
    return published(results, batch=parsed.batch)


def publish_request(request: HttpRequest, hub: Hub) -> HttpAnswer | PublishRequest:
    """What a request asks to publish, or the answer when it asks for nothing to be
    published (``/healthz``, a refusal, an invalid body: nothing of it is published)."""
    target = route(request.method, request.path, hub.settings)
    if target is Route.HEALTHZ:
        return healthz(hub)
    if target is Route.OPENAPI:
        return HttpAnswer(200, (("content-type", JSON),), openapi_json(hub.settings))
    if target is not Route.PUBLISH:
        return refusal(target, request.path) or _json(404, {"error": "not found"})
    kind = PUBLISH_PATHS[request.path]
    refused = authorize(request.header("authorization"), request.client, hub.settings.api_key)
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
    validated: list[tuple[AgentStatus | ChatMessage | Notification, Scope]] = []
    for index, item in enumerate(items):
        try:
            data, scope = split_scope(item)  # userIds, channel (PROTOCOL.md 4a)
            validated.append((kind.from_data(data), scope))
        except ValueError as exc:
            where = f"item {index}: " if batch else ""
            return _json(400, {"error": f"{where}{exc}"})
    return PublishRequest(validated, batch)


def published(results: Sequence[Published], *, batch: bool) -> HttpAnswer:
    """``202`` with the id(s) and the local recipients of what was published."""
    delivered = sum(p.delivered for p in results)
    if batch:
        return _json(202, {"ids": [p.id for p in results], "delivered": delivered})
    return _json(202, {"id": results[0].id, "delivered": delivered})
