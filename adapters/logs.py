"""Logging for the reference server: plain text for people, one JSON object a line for machines.

The server logs exactly one line when a WebSocket connection opens (after its token has
been judged: user and peer address) and one when it closes (user, peer, close code,
duration, messages in and out), plus start-up warnings and internal errors. Nothing is
logged per message at ``INFO``, and never a token: the request's query string is never
logged, and authenticators never put a token in their reasons.

Structured fields travel in the ``agentcast`` attribute of a record (``extra={"agentcast":
{...}}``): the text format shows the message, the JSON format adds the fields as keys.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Literal

from agentcast.protocol import format_timestamp

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "configure_logging",
    "log_close",
    "log_open",
    "logger",
]

#: The package's logger; children: ``agentcast.server``, ``agentcast.connection``.
logger = logging.getLogger("agentcast")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_connection_log = logging.getLogger("agentcast.connection")


def log_open(user: str | None, peer: str) -> None:
    """The one line for a WebSocket connection that opened (its token judged)."""
    if not _connection_log.isEnabledFor(logging.INFO):
        return
    user = user or "-"
    _connection_log.info(
        "connection open user=%s peer=%s",
        user,
        peer,
        extra={"agentcast": {"event": "open", "user": user, "peer": peer}},
    )


def log_close(
    user: str | None,
    peer: str,
    *,
    code: int,
    duration: float,
    messages_in: int,
    messages_out: int,
) -> None:
    """The one line for a WebSocket connection that closed."""
    if not _connection_log.isEnabledFor(logging.INFO):
        return
    user = user or "-"
    _connection_log.info(
        "connection closed user=%s peer=%s code=%d duration=%.3fs in=%d out=%d",
        user,
        peer,
        code,
        duration,
        messages_in,
        messages_out,
        extra={
            "agentcast": {
                "event": "close",
                "user": user,
                "peer": peer,
                "code": code,
                "duration": round(duration, 3),
                "messages_in": messages_in,
                "messages_out": messages_out,
            }
        },
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the
    record's ``agentcast`` fields, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "time": format_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "agentcast", None)
        if isinstance(fields, dict):
            obj.update(fields)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def configure_logging(
    level: str = "info", fmt: LogFormat = "text", stream: IO[str] | None = None
) -> None:
    """Send the ``agentcast`` logs to *stream* (stderr by default) at *level*, as text or
    JSON. Replaces handlers installed by an earlier call; leaves the root logger alone."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    for old in list(logger.handlers):
        if getattr(old, "_agentcast", False):
            logger.removeHandler(old)
    handler._agentcast = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
