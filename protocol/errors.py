"""The exceptions of the protocol core.

Two families, as in h11 and wsproto:

* :class:`LocalProtocolError` means *you* (the adapter or server code) called the core
  in a way its state does not allow. It is raised at once, so the bug is found where it is.
* Faults of the *peer* never escape :meth:`receive_data`: they become an ``error`` message
  (PROTOCOL.md section 6) or a close with the code of section 9.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError"]


class ProtocolError(Exception):
    """Base class of every error the core raises."""


class LocalProtocolError(ProtocolError):
    """The core was called in a way its current state does not allow (API misuse)."""
