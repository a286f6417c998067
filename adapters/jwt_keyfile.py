"""JWT verification keys from a file, re-read when it changes, so keys rotate without a restart.

The protocol core's :class:`~agentcast.protocol.jwt_auth.JwtAuthenticator` reads no
file: this adapter module does. A :class:`JwtKeyFile` holds the path of a PEM public key
(or certificate) or of a local JWKS document and the authenticator that verifies with its
keys, and calls :meth:`~agentcast.protocol.jwt_auth.JwtAuthenticator.replace_keys` when
the file changes:

* :meth:`JwtKeyFile.watch`, a task the server runs, looks at the file every
  ``reload_interval`` seconds (a ``stat``: inode, modification time and size) and re-reads
  it when any of them changed, so ``mv new.json jwks.json`` is picked up within a poll;
* :meth:`JwtKeyFile.reload` re-reads it at once: the server calls it on ``SIGHUP``.

Rotating keys: publish a JWKS holding the old and the new key (by ``kid``), switch the
issuer to the new key, and drop the old one once the tokens it signed have expired. A file
that cannot be read or parsed (half written, wrong format, no usable key) changes nothing:
the current keys stay in use and the error is logged; the next change is tried again.

Files are read in a worker thread, so a slow disk never stalls the event loop. Needs the
``jwt`` extra (PyJWT): import this module only when JWT authentication is configured.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Literal

import anyio

from agentcast.protocol.jwt_auth import JwtAuthenticator, JwtKeySet, parse_jwks

__all__ = ["DEFAULT_RELOAD_INTERVAL", "JwtKeyFile", "KeyFormat"]

log = logging.getLogger("agentcast.server")

KeyFormat = Literal["pem", "jwks"]

#: Seconds between two looks at the key file. A rotated key is used within this time;
#: a ``stat`` every two seconds costs nothing, and SIGHUP reloads at once anyway.
DEFAULT_RELOAD_INTERVAL = 2.0

# What identifies one version of the file: (inode, mtime in ns, size). An atomic
# replacement (rename) changes the inode, an in-place write the time and usually the size.
_Signature = tuple[int, int, int]
_MISSING: _Signature = (-1, -1, -1)


def _read(path: Path) -> tuple[_Signature, bytes]:
    """The file's signature and content, taken from the same open file."""
    with path.open("rb") as file:
        st = os.fstat(file.fileno())
        return (st.st_ino, st.st_mtime_ns, st.st_size), file.read()


def _signature(path: Path) -> _Signature:
    try:
        st = path.stat()
    except OSError:
        return _MISSING
    return st.st_ino, st.st_mtime_ns, st.st_size


def _parse(data: bytes, fmt: KeyFormat) -> JwtKeySet:
    return parse_jwks(data) if fmt == "jwks" else JwtKeySet.from_pem(data)


def describe_keys(authenticator: JwtAuthenticator) -> str:
    """``"2 keys, algorithms ES256, RS256"``: for logs (never any key material)."""
    count = len(authenticator.keys.keys)
    algorithms = ", ".join(sorted(authenticator.algorithms))
    return f"{count} key{'' if count == 1 else 's'}, algorithms {algorithms}"


class JwtKeyFile:
    """A PEM or JWKS file and the :class:`JwtAuthenticator` that verifies with its keys.

    Build it with :meth:`open` (reads the file once and creates the authenticator), then
    give it to the server: ``Server(settings, jwt_key_file=key_file)``. ``reload_interval``
    ``None`` (or 0) turns the polling off; :meth:`reload` (SIGHUP) still works.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        authenticator: JwtAuthenticator,
        *,
        format: KeyFormat,
        reload_interval: float | None = DEFAULT_RELOAD_INTERVAL,
    ) -> None:
        if format not in ("pem", "jwks"):
            raise ValueError("format is 'pem' or 'jwks'")
        if reload_interval is not None and not (
            math.isfinite(reload_interval) and reload_interval >= 0
        ):
            raise ValueError("reload_interval must be a non-negative number of seconds")
        self.path = Path(path)
        self.authenticator = authenticator
        self.format: KeyFormat = format
        self.reload_interval = reload_interval or None
        #: Successful reloads, and attempts that failed (the old keys were kept).
        self.reloads = 0
        self.failures = 0
        # The version last loaded or last refused; None: unknown, load at the first look.
        self._seen: _Signature | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        format: KeyFormat,
        reload_interval: float | None = DEFAULT_RELOAD_INTERVAL,
        **options: Any,
    ) -> JwtKeyFile:
        """Read *path* now and build its authenticator; *options* go to
        :class:`JwtAuthenticator` (``algorithms``, ``issuer``, ``audience``, ``leeway``,
        ``user_claim``). Raises :class:`OSError` or :class:`ValueError`."""
        file = Path(path)
        signature, data = _read(file)
        authenticator = JwtAuthenticator(_parse(data, format), **options)
        key_file = cls(file, authenticator, format=format, reload_interval=reload_interval)
        key_file._seen = signature
        return key_file

    def describe(self) -> str:
        """Where the keys come from and what they verify, for the start-up log."""
        kind = "JWKS file" if self.format == "jwks" else "public key file"
        when = "on SIGHUP"
        if self.reload_interval is not None:
            when += f" and when it changes (checked every {self.reload_interval:g} s)"
        return f"{kind} {self.path} ({describe_keys(self.authenticator)}), reloaded {when}"

    async def reload(self) -> bool:
        """Re-read the file now, changed or not (SIGHUP). Whether the keys were replaced;
        on failure the current keys stay and the error is logged."""
        try:
            signature, data = await anyio.to_thread.run_sync(_read, self.path)
        except OSError as exc:
            self._seen = _MISSING
            return self._failed(exc.strerror or type(exc).__name__)
        self._seen = signature
        try:
            self.authenticator.replace_keys(_parse(data, self.format))
        except ValueError as exc:  # messages name the problem, never key material
            return self._failed(str(exc))
        self.reloads += 1
        log.info("reloaded the JWT keys from %s: %s", self.path, describe_keys(self.authenticator))
        return True

    async def check(self) -> bool:
        """Re-read the file if it changed since it was last read; whether keys changed."""
        signature = await anyio.to_thread.run_sync(_signature, self.path)
        if signature == self._seen:
            return False
        if signature == _MISSING:
            self._seen = _MISSING
            return self._failed("the file is missing")
        return await self.reload()

    async def watch(self) -> None:
        """Poll the file every ``reload_interval`` seconds until cancelled."""
        interval = self.reload_interval
        if interval is None:
            return
        while True:
            await anyio.sleep(interval)
            try:
                await self.check()
            except Exception:  # never let a key file stop the server
                log.exception("error checking the JWT key file %s", self.path)

    def _failed(self, reason: str) -> bool:
        self.failures += 1
        log.error(
            "cannot load the JWT keys from %s, keeping the current keys: %s", self.path, reason
        )
        return False
