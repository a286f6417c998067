"""Keep tokens out of an ASGI server's logs.

A browser passes its token in the URL (``/ws?token=…``), and ASGI servers log that URL:
uvicorn writes ``"WebSocket /ws?token=abc123" [accepted]`` to ``uvicorn.error`` for every
WebSocket and the request line of every HTTP request to ``uvicorn.access``. agentcast's
own logs never hold a token; :class:`RedactTokens` makes the server's lines say
``token=[redacted]`` too.

The ASGI application installs it on uvicorn's loggers when it is created
(:func:`install`): a filter on a logger acts on every record logged there, whatever
handlers and formatters a log configuration gives them. To use it with a log
configuration file of your own, name the class as a filter factory::

    {"filters": {"redact": {"()": "agentcast.adapters.redaction.RedactTokens"}},
     "handlers": {"access": {"filters": ["redact"], ...}}}
"""

from __future__ import annotations

import logging
import re

__all__ = ["REDACTED", "UVICORN_LOGGERS", "RedactTokens", "install", "redact"]

REDACTED = "[redacted]"
#: The loggers uvicorn writes request targets to.
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")
# A token query parameter (``token=``, and ``access_token=`` as OAuth clients send it) in a
# URL's query string, up to the next parameter, space or quote.
_TOKEN = re.compile(r"([?&](?:access_)?token=)[^&\s\"']*", re.IGNORECASE)


def redact(text: str) -> str:
    """*text* with the value of every ``token`` query parameter replaced."""
    if "token=" not in text.lower():
        return text
    return _TOKEN.sub(rf"\g<1>{REDACTED}", text)


class RedactTokens(logging.Filter):
    """Replace token values in a record's message and arguments; never drops a record.

    The arguments are redacted one by one and stay a tuple, as formatters such as
    uvicorn's access formatter read them by position.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
        return True


def install(names: tuple[str, ...] = UVICORN_LOGGERS) -> None:
    """Add one :class:`RedactTokens` to each logger of *names*. Idempotent."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
