"""The ``timestamp`` field: JavaScript's ``Date.prototype.toISOString()`` form.

The core never reads a clock. The wall-clock time arrives as an argument (``wall``,
seconds since the Unix epoch, what ``time.time()`` returns in the adapter) and is kept
apart from the monotonic ``now`` that drives deadlines.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["format_timestamp", "is_iso_timestamp"]

# One formatted second, reused while the second does not change: a burst of broadcasts
# within one second then costs a slice and an f-string instead of a datetime each; and the
# last whole timestamp, reused within its millisecond.
_cache_second: int = -1
_cache_prefix: str = ""
_cache_millis: int | None = None
_cache_text: str = ""

_ISO_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def format_timestamp(wall: float) -> str:
    """Format *wall* (Unix seconds) as ``2025-12-26T13:00:00.000Z`` (UTC, milliseconds).

    Milliseconds are truncated, not rounded, as JavaScript does.
    """
    global _cache_second, _cache_prefix, _cache_millis, _cache_text
    millis = int(wall * 1000) if wall >= 0 else -int(-wall * 1000)
    if millis == _cache_millis:
        return _cache_text
    second, ms = divmod(millis, 1000)
    if second != _cache_second:
        _cache_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _cache_second = second
    _cache_millis = millis
    _cache_text = f"{_cache_prefix}.{ms:03d}Z"
    return _cache_text


def is_iso_timestamp(value: object) -> bool:
    """Whether *value* is a string in ISO 8601 date-time form with a zone designator."""
    return isinstance(value, str) and _ISO_RE.fullmatch(value) is not None
