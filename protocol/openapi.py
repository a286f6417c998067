"""An OpenAPI 3.1 description of the server's plain HTTP requests, for machines.

:func:`openapi_document` describes ``GET /healthz``, ``GET /metrics``,
``GET /openapi.json`` (itself) and the publish API
(``POST /api/agent-status``, ``/api/chat-messages``, ``/api/notifications``): request
bodies (one item or a batch), every answer and its body. It is built from the same
constants the validation uses (states, levels, field lengths, the settings' batch and
body limits), so it cannot drift from what the server accepts; a test sends real
requests to a running server and checks its answers against it.

The document is a plain ``dict`` (JSON-ready); :func:`openapi_json` is its encoded form.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from .answers import PLAIN_TEXT
from .config import Settings
from .messages import AGENT_STATES, MAX_FIELD_LENGTH, NOTIFICATION_LEVELS
from .scope import MAX_USER_ID_LENGTH, MAX_USER_IDS
from .timestamps import _ISO_RE

__all__ = ["openapi_document", "openapi_json"]

_ORDER = {"idle": 0, "working": 1, "stopped": 2, "info": 0, "success": 1, "warning": 2}


def _enum(values: frozenset[str]) -> list[str]:
    return sorted(values, key=lambda v: (_ORDER.get(v, 9), v))


def _text(min_length: int = 0, *, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"] if nullable else "string"}
    if min_length:
        schema["minLength"] = min_length
    schema["maxLength"] = MAX_FIELD_LENGTH
    return schema


def _scope() -> dict[str, Any]:
    """The scope fields any item may add: ``userIds`` and ``channel``."""
    return {
        "userIds": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_LENGTH},
            "minItems": 1,
            "maxItems": MAX_USER_IDS,
            "description": "Only the connections of these users receive it.",
        },
        "channel": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_.:@/-]{1,128}$",
            "description": "Only the connections subscribed to this channel receive it.",
        },
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schemas(settings: Settings) -> dict[str, Any]:
    return {
        "AgentStatus": {
            "type": "object",
            "description": "An agent's state: the data of an agent_status message.",
            "properties": {
                "agentName": _text(1),
                "state": {"enum": _enum(AGENT_STATES)},
                "currentTask": _text(nullable=True),
                "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
                **_scope(),
            },
            "required": ["agentName", "state"],
            "additionalProperties": False,
        },
        "ChatMessage": {
            "type": "object",
            "description": "A message of a conversation: the data of a chat_message message.",
            "properties": {
                "conversationId": _text(1),
                "messageId": _text(1),
                "content": _text(),
                "sender": _text(1),
                "timestamp": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "pattern": f"^{_ISO_RE.pattern}$",
                    "description": "When it was written; default: the publishing time.",
                    "examples": ["2025-12-26T13:00:00.000Z"],
                },
                **_scope(),
            },
            "required": ["conversationId", "messageId", "content", "sender"],
            "additionalProperties": False,
        },
        "Notification": {
            "type": "object",
            "description": "A notification; with userId, for that user's connections only "
            "(userId and userIds exclude each other).",
            "properties": {
                "level": {"enum": _enum(NOTIFICATION_LEVELS)},
                "message": _text(1),
                "userId": _text(1, nullable=True),
                **_scope(),
            },
            "required": ["level", "message"],
            "additionalProperties": False,
        },
        "Published": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "The message id."},
                "delivered": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Connections of this process it was queued for.",
                },
            },
            "required": ["id", "delivered"],
            "additionalProperties": False,
        },
        "PublishedBatch": {
            "type": "object",
            "properties": {
                "ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "delivered": {"type": "integer", "minimum": 0},
            },
            "required": ["ids", "delivered"],
            "additionalProperties": False,
        },
        "Error": {
            "type": "object",
            "properties": {"error": {"type": "string", "minLength": 1}},
            "required": ["error"],
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {
                    "enum": ["ok", "degraded"],
                    "description": "degraded: accepting new connections fails (out of "
                    "file descriptors), or a process of a cluster cannot reach Redis; the "
                    "connected clients are still served.",
                },
                "clients": {"type": "integer", "minimum": 0},
                "authenticated": {"type": "integer", "minimum": 0},
                "unauthenticated": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Open WebSockets without a valid token.",
                },
                "accepting": {"const": False, "description": "Only while degraded."},
                "acceptError": {
                    "type": "string",
                    "description": "Only while degraded: why accept() fails "
                    "(emfile, enfile, enobufs, enomem, or the error's name).",
                },
                "cluster": {
                    "type": "object",
                    "description": "With a Redis URL: the figures over every process.",
                    "properties": {
                        "clients": {"type": "integer", "minimum": 0},
                        "authenticated": {"type": "integer", "minimum": 0},
                        "processes": {"type": "integer", "minimum": 1},
                    },
                    "required": ["clients", "authenticated", "processes"],
                    "additionalProperties": False,
                },
            },
            "required": ["status", "clients", "authenticated", "unauthenticated"],
            "additionalProperties": False,
        },
    }


def _plain(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PLAIN_TEXT: {"schema": {"type": "string"}}}}


def _publish(item: str, summary: str, settings: Settings) -> dict[str, Any]:
    error = _ref("Error")
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}, {}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                _ref(item),
                                {
                                    "type": "array",
                                    "items": _ref(item),
                                    "minItems": 1,
                                    "maxItems": settings.max_batch,
                                    "description": "A batch, published in array order.",
                                },
                            ]
                        }
                    }
                },
            },
            "responses": {
                "202": {
                    "description": "Published (one item, or every item of a batch).",
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [_ref("Published"), _ref("PublishedBatch")]}
                        }
                    },
                },
                "400": _json(
                    error,
                    "Not JSON, an empty or oversized batch, or an invalid item (the first one "
                    "is named as 'item N: ...'); nothing is published.",
                ),
                "401": _json(error, "An API key is configured and the request lacks it."),
                "403": _json(error, "No API key is configured and the client is not local."),
                "405": _json(error, "A method other than POST."),
                "413": _json(error, f"A body over {settings.max_body_size} bytes."),
                "503": _json(
                    error,
                    "Request bodies being received past the server's budget "
                    f"({settings.max_pending_body_bytes} bytes); answered after the head, "
                    "with Retry-After.",
                ),
            },
        }
    }


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP requests a server with *settings* answers."""
    settings = settings if settings is not None else Settings()
    not_get = _json(_ref("Error"), "A method other than GET.")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentcast HTTP API",
            "version": "1",
            "description": (
                "Health, metrics, the event stream and the publish API of an agentcast "
                f"server. The WebSocket endpoint ({settings.path}), and the messages it and "
                "the event stream carry, are described in docs/protocol.md."
            ),
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness and connection counts.",
                    "responses": {
                        "200": _json(_ref("Health"), "The server is up."),
                        "405": not_get,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition.",
                    "responses": {
                        "200": {
                            "description": "Every metric, named agentcast_*.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "405": not_get,
                    },
                }
            },
            settings.events_path: {
                "get": {
                    "summary": "The session as Server-Sent Events, downstream only.",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "The client's token (or Authorization: Bearer, "
                            "or the agentcast_token cookie).",
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "schema": {"type": "string"},
                            "description": "The resume point (as since on a WebSocket).",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The event stream: auth, presence_state, then "
                            "every message of the session, one event each.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "401": _plain("No good token, with require_auth."),
                        "403": _plain("The Origin is not on the allow-list."),
                        "405": not_get,
                        "503": _plain("A connection limit."),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": {
                        "200": _json({"type": "object"}, "The OpenAPI 3.1 document."),
                        "405": not_get,
                    },
                }
            },
            "/api/agent-status": _publish(
                "AgentStatus", "Publish agent_status to every authenticated client.", settings
            ),
            "/api/chat-messages": _publish(
                "ChatMessage", "Publish chat_message to every authenticated client.", settings
            ),
            "/api/notifications": _publish(
                "Notification",
                "Publish a notification to every authenticated client, or to one user's.",
                settings,
            ),
        },
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's API key. Without one configured, the "
                    "publish API answers loopback clients only.",
                }
            },
        },
    }


@lru_cache(maxsize=8)
def openapi_json(settings: Settings | None = None) -> bytes:
    """:func:`openapi_document` as UTF-8 JSON (what ``GET /openapi.json`` answers)."""
    return json.dumps(openapi_document(settings), separators=(",", ":")).encode()
