"""Tokens in URLs are redacted from an ASGI server's log records."""

from __future__ import annotations

import logging

import pytest

from agentcast.adapters.redaction import RedactTokens, install, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ws?token=abc123", "/ws?token=[redacted]"),
        ("/ws?channels=a&token=abc123&since=5", "/ws?channels=a&token=[redacted]&since=5"),
        ('"WebSocket /ws?TOKEN=x.y-z" 403', '"WebSocket /ws?TOKEN=[redacted]" 403'),
        ("/cb?access_token=eyJ", "/cb?access_token=[redacted]"),
        ("/ws?token=", "/ws?token=[redacted]"),
        ("/ws?mytoken=keep", "/ws?mytoken=keep"),  # only the token parameter
        ("/healthz", "/healthz"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_the_filter_keeps_positional_arguments_for_uvicorns_formatters():
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1,
        '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "GET", "/ws?token=abc123", "1.1", 426), None,
    )  # fmt: skip
    assert RedactTokens().filter(record) is True
    assert record.args == ("127.0.0.1:5", "GET", "/ws?token=[redacted]", "1.1", 426)
    assert "abc123" not in record.getMessage()


def test_install_is_idempotent_and_filters_what_the_logger_emits(caplog):
    install(("test.redaction",))
    install(("test.redaction",))
    logger = logging.getLogger("test.redaction")
    assert sum(isinstance(f, RedactTokens) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, "test.redaction"):
        logger.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/ws?token=abc123")
    assert caplog.messages == ['127.0.0.1:5 - "WebSocket /ws?token=[redacted]" [accepted]']
