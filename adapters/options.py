"""What ``agentcast serve`` can be told: every option, its flag, its variable, its type.

One table (:data:`SERVE_OPTIONS`) describes each option once: the command-line flag, the
environment variable (``AGENTCAST_`` + the flag in upper snake case unless named), the
value type, the default and the help text. Two readers use it:

* :func:`read_environment` turns ``AGENTCAST_*`` variables into values, with no command
  line and no argument parser (the ASGI application's path);
* the command line (:mod:`agentcast.adapters.cli`) builds its parser from the same
  table, with each variable as the default of its flag, so the command line wins.

Value types raise :class:`InvalidValue` with a message that names the problem and never
echoes a secret. :data:`SETTINGS_FLAGS` are the options that map one-to-one onto
:class:`~agentcast.protocol.Settings` fields (the default is the field's default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentcast.protocol import Settings

from .cluster_options import DEFAULT_BUFFER, DEFAULT_LEASE, DEFAULT_STREAM
from .collector import DEFAULT_GC_POSTPONE
from .logs import LOG_FORMATS, LOG_LEVELS
from .server import DEFAULT_HOST, DEFAULT_PORT
from .service import DEFAULT_DRAIN_TIMEOUT

__all__ = [
    "AUTH_MODES",
    "BACKENDS",
    "DEFAULT_JWT_LEEWAY",
    "DEFAULT_JWT_RELOAD_INTERVAL",
    "ENV_PREFIX",
    "SERVE_OPTIONS",
    "SETTINGS_FLAGS",
    "ConfigError",
    "InvalidValue",
    "Option",
    "choice",
    "comma_list",
    "invalid_value_message",
    "parse_duration",
    "read_environment",
]

ENV_PREFIX = "AGENTCAST_"
BACKENDS = ("asyncio", "trio")
AUTH_MODES = ("dev", "static", "jwt")
# Same as DEFAULT_LEEWAY and DEFAULT_RELOAD_INTERVAL of the JWT modules, which this module
# cannot import without PyJWT (checked by a test).
DEFAULT_JWT_LEEWAY = 30.0
DEFAULT_JWT_RELOAD_INTERVAL = 2.0


class ConfigError(Exception):
    """A configuration that cannot work; the message says why (never a secret)."""


class InvalidValue(ValueError):
    """A value that is not of its option's type; the message says why (never the value,
    when it may be a secret)."""


# -- value types ------------------------------------------------------------------------


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise InvalidValue(f"{text!r} is not a port number (0-65535)")
    return value


def token_pair(text: str) -> tuple[str, str]:
    token, sep, user = text.partition("=")
    if not sep or not token or not user:
        # Never echo the value: it holds a token.
        raise InvalidValue("expected TOKEN=USER")
    return token, user


#: What a value of a plain type should have been, for the message that refuses it.
_EXPECTED = {int: "a whole number", float: "a number"}


def invalid_value_message(convert: Callable[[str], Any], text: str, exc: ValueError) -> str:
    """Why *text* is not a value of *convert*'s type: the type's own message when it gave
    one (:class:`InvalidValue`), else the kind of value expected (the text is shown only
    for numbers: no secret is one)."""
    if isinstance(exc, InvalidValue):
        return str(exc)
    expected = _EXPECTED.get(convert)  # type: ignore[call-overload]
    if expected is None:
        return "not a valid value"
    return f"{text!r} is not {expected}"


def choice(choices: Sequence[str]) -> Callable[[str], str]:
    """One of *choices*, case-insensitive (also checks environment values, which an
    argument parser would not check against its ``choices``)."""

    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise InvalidValue(f"{text!r} is not one of {', '.join(choices)}")
        return value

    convert.__name__ = "choice"
    return convert


def limit(text: str) -> int | None:
    """A count limit; ``0`` is unlimited (``None``)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidValue(f"{text!r} is not a whole number of 0 or more (0: unlimited)")
    return value or None


def optional_number(text: str) -> float | None:
    """A rate or a duration; ``0`` is no limit (``None``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise InvalidValue(f"{text!r} is not a non-negative number (0: no limit)")
    return value or None


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``30s``, ``15m``, ``1h``, ``2d`` or a plain number of seconds."""
    value = text.strip().lower()
    unit = _DURATION_UNITS.get(value[-1:], 1)
    if value[-1:] in _DURATION_UNITS:
        value = value[:-1]
    try:
        seconds = float(value) * unit
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidValue(f"{text!r} is not a duration (30s, 15m, 1h, 2d or a number of seconds)")
    return seconds


def comma_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})


# -- options ----------------------------------------------------------------------------

Kind = Literal["value", "switch", "toggle", "tristate", "repeatable"]


@dataclass(frozen=True, slots=True)
class Option:
    """One option: ``kind`` is ``value`` (``--flag VALUE``), ``switch`` (``--flag``, on or
    off), ``toggle`` (``--flag``/``--no-flag``, *default* when neither), ``tristate``
    (``--flag``/``negative``/neither: ``"auto"``) or ``repeatable``
    (``--flag A --flag B``; in the environment ``A,B``)."""

    flag: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: Sequence[str] | None = None
    kind: Kind = "value"
    negative: str | None = None
    env: str | None = None

    @property
    def dest(self) -> str:
        """The option's name in a configuration (``--jwt-secret``: ``jwt_secret``)."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def variable(self) -> str:
        return self.env or ENV_PREFIX + self.flag.lstrip("-").upper().replace("-", "_")

    def from_environment(self, environ: Mapping[str, str]) -> Any:
        """The option's value from *environ* (its default when the variable is unset).
        For a ``value`` option this is the raw string, converted by :meth:`convert`."""
        name = self.variable
        if self.kind in ("switch", "toggle", "tristate"):
            raw = environ.get(name, "").strip().lower()
            if raw not in TRUE | FALSE:
                raise ConfigError(f"{name} must be one of 1, 0, true, false, yes, no, on, off")
            if self.kind == "toggle" and raw == "":
                return self.default
            if self.kind == "tristate" and raw == "":
                return "auto"
            return raw in TRUE
        if self.kind == "repeatable":
            convert = self.type or str
            try:
                return [convert(item) for item in comma_list(environ.get(name))]
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        value = environ.get(name)
        return self.default if value is None else value

    def convert(self, value: Any) -> Any:
        """*value* as the option's type, when it is a string from the environment."""
        if isinstance(value, str) and self.type is not None:
            try:
                return self.type(value)
            except ValueError as exc:
                detail = invalid_value_message(self.type, value, exc)
                raise ConfigError(f"{self.variable}: {detail}") from None
        return value


def read_environment(options: Sequence[Option], environ: Mapping[str, str]) -> dict[str, Any]:
    """Every option's value from *environ*, as the command line would have them with no
    flag given: ``{dest: value}``. A bad value is a :class:`ConfigError` naming the
    variable."""
    return {option.dest: option.convert(option.from_environment(environ)) for option in options}


#: Options that are :class:`Settings` fields (the default is the field's default).
SETTINGS_FLAGS: tuple[Option, ...] = tuple(
    Option(flag, help, getattr(Settings(), flag[2:].replace("-", "_")), kind_type, metavar)
    for flag, kind_type, metavar, help in (
        ("--path", str, "PATH", "WebSocket endpoint path"),
        ("--events-path", str, "PATH", "Server-Sent Events endpoint path (the same session)"),
        (
            "--events-retry",
            float,
            "SECONDS",
            "reconnect delay told to Server-Sent Events clients (retry:)",
        ),
        ("--heartbeat-interval", float, "SECONDS", "seconds between server pings"),
        (
            "--heartbeat-timeout",
            float,
            "SECONDS",
            "close a client silent for this many seconds (4000)",
        ),
        (
            "--presence-grace",
            float,
            "SECONDS",
            "seconds before a user whose last connection closed is shown offline",
        ),
        (
            "--presence-interval",
            float,
            "SECONDS",
            "a user's presence goes out at most once per this many seconds, the latest "
            "status winning (0: every change at once)",
        ),
        (
            "--presence-window",
            float,
            "SECONDS",
            "presence changes within this many seconds of the last ones sent go out "
            "together when it ends, one write per client (0: each at once)",
        ),
        (
            "--history-size",
            int,
            "MESSAGES",
            "broadcasts kept for clients that reconnect with ?since= (0: no resume)",
        ),
        ("--history-ttl", float, "SECONDS", "seconds a broadcast is kept for resuming clients"),
        (
            "--max-message-size",
            int,
            "BYTES",
            "largest client message in bytes (bigger: close 1009)",
        ),
        (
            "--max-message-frames",
            int,
            "N",
            "frames (fragments) one client message may arrive in (more: close 1008)",
        ),
        (
            "--max-send-buffer",
            int,
            "BYTES",
            "bytes a client may have pending before it is closed as too slow (1013)",
        ),
        ("--rate-limit", float, "PER_SECOND", "client messages per second (token bucket refill)"),
        ("--rate-burst", int, "MESSAGES", "client messages allowed in a burst"),
        (
            "--max-connections",
            limit,
            "N",
            "open WebSocket connections per process; over it the upgrade gets 503 (0: unlimited)",
        ),
        (
            "--max-connections-per-ip",
            limit,
            "N",
            "connections per client address (IPv6: per /64); behind a reverse proxy every "
            "client has the proxy's address: raise it or use 0 there (0: unlimited)",
        ),
        (
            "--max-connections-per-user",
            limit,
            "N",
            "connections per authenticated user (0: unlimited)",
        ),
        (
            "--max-unauthenticated-connections",
            limit,
            "N",
            "connections without a valid token per process; over it the upgrade gets 503 "
            "(0: unlimited)",
        ),
        (
            "--connection-rate",
            optional_number,
            "PER_SECOND",
            "new WebSocket connections per second per process; over it 503 with Retry-After "
            "(0: unlimited)",
        ),
        (
            "--handshake-timeout",
            float,
            "SECONDS",
            "time a client has to send its whole request (slower: 408, closed)",
        ),
        (
            "--unauthenticated-timeout",
            optional_number,
            "SECONDS",
            "close a connection that has not authenticated after this long (1008; 0: never)",
        ),
        ("--max-header-size", int, "BYTES", "largest request line + headers (bigger: 431, closed)"),
        (
            "--max-subscriptions",
            int,
            "N",
            "channel subscriptions per connection (more: error too_many_subscriptions)",
        ),
        (
            "--max-pending-body-bytes",
            int,
            "BYTES",
            "request bodies being received at once, over every connection; a request past "
            "it gets 503 after its head",
        ),
        (
            "--agent-state-ttl",
            float,
            "SECONDS",
            "leave an agent out of the agent_state snapshot after this long without a status",
        ),
        (
            "--agent-state-max",
            int,
            "N",
            "agent statuses kept for the agent_state snapshot (one per agent and scope; "
            "past it the oldest update is dropped)",
        ),
    )
)

_JWT_OPTIONS = (
    Option(
        "--jwt-secret",
        "HMAC secret (32+ bytes) for HS256/384/512 tokens; prefer the environment "
        "variable to the command line, which other users can see",
        metavar="SECRET",
    ),
    Option(
        "--jwt-public-key",
        "PEM public key or certificate (RSA, EC, Ed25519) for RS*/PS*/ES*/EdDSA tokens",
        metavar="FILE",
    ),
    Option("--jwt-jwks", "local JWKS file; the key is chosen by the token's kid", metavar="FILE"),
    Option(
        "--jwt-algorithms",
        "accepted algorithms, comma-separated (none is never accepted)",
        metavar="LIST",
    ),
    Option("--jwt-issuer", "required iss claim", metavar="ISS"),
    Option(
        "--jwt-audience",
        "accepted aud values, comma-separated (a token must name one)",
        metavar="AUD",
    ),
    Option(
        "--jwt-leeway",
        "clock skew allowed for nbf and iat (exp is strict)",
        DEFAULT_JWT_LEEWAY,
        float,
        "SECONDS",
    ),
    Option("--jwt-user-claim", "the claim holding the user id", "sub", metavar="CLAIM"),
    Option(
        "--jwt-channels-claim",
        "the claim listing the channels a token may subscribe to (names and prefix* "
        "patterns); a token without it may subscribe to none",
        "channels",
        metavar="CLAIM",
    ),
    Option(
        "--jwt-reload-interval",
        "look at --jwt-public-key / --jwt-jwks this often and re-read it when it "
        "changed (0: only on SIGHUP, which always re-reads it)",
        DEFAULT_JWT_RELOAD_INTERVAL,
        float,
        "SECONDS",
    ),
)

#: Every option of ``agentcast serve``, in ``--help`` order.
SERVE_OPTIONS: tuple[Option, ...] = (
    Option("--host", "address to listen on", DEFAULT_HOST),
    Option("--port", "port to listen on (0: any free)", DEFAULT_PORT, port, "PORT"),
    Option("--backend", "event loop", "asyncio", choice(BACKENDS), choices=BACKENDS),
    Option(
        "--uvloop",
        "run asyncio on uvloop; by default it does when uvloop is installed "
        "(agentcast[uvloop]), --no-uvloop for the standard asyncio loop",
        kind="tristate",
        negative="--no-uvloop",
    ),
    Option(
        "--auth",
        "authenticator: dev accepts any token as user_<token> (development only); "
        "static accepts the --token table; jwt verifies JWTs (--jwt-*)",
        "dev",
        choice(AUTH_MODES),
        choices=AUTH_MODES,
    ),
    Option(
        "--token",
        "a token and its user id for --auth static (repeatable)",
        type=token_pair,
        metavar="TOKEN=USER",
        kind="repeatable",
    ),
    Option(
        "--api-key",
        "key for the publish API (Authorization: Bearer KEY); "
        "without one the API answers loopback clients only",
        metavar="KEY",
    ),
    *_JWT_OPTIONS,
    Option(
        "--require-auth",
        "refuse the upgrade with 401 (no WebSocket) when the token is missing or invalid",
        kind="switch",
    ),
    Option(
        "--allowed-origin",
        "an Origin allowed to open a WebSocket, scheme://host[:port] or "
        "scheme://*.domain (repeatable); others get 403; requests without Origin "
        "(non-browser clients) are allowed",
        type=str,
        metavar="ORIGIN",
        kind="repeatable",
    ),
    *SETTINGS_FLAGS,
    Option(
        "--dashboard",
        "serve the live dashboard at / and the browser client at /agentcast.js "
        "(--no-dashboard: those paths are 404)",
        True,
        kind="toggle",
    ),
    Option("--tls-cert", "certificate chain file (PEM) for wss://", metavar="FILE"),
    Option("--tls-key", "private key file (PEM) for wss://", metavar="FILE"),
    Option(
        "--socket-send-buffer",
        "SO_SNDBUF of client sockets in bytes (0: the kernel's autotuning, which can "
        "hold megabytes for a slow client before --max-send-buffer applies)",
        0,
        int,
        "BYTES",
    ),
    Option(
        "--drain-timeout",
        "at shutdown, wait this long for clients to finish the closing handshake",
        DEFAULT_DRAIN_TIMEOUT,
        float,
        "SECONDS",
    ),
    Option(
        "--gc-postpone",
        "hold Python's full garbage collections back while connections are opening (a "
        "storm is served first, collected after), for at most this long in a row; 0: "
        "Python's collector untouched (its full passes can stop the server for 100+ ms "
        "in a storm)",
        DEFAULT_GC_POSTPONE,
        float,
        "SECONDS",
    ),
    Option(
        "--redis-url",
        "join a cluster through this Redis (redis://[:password@]host:port[/db]): "
        "broadcasts, presence and counts are cluster-wide",
        metavar="URL",
    ),
    Option(
        "--redis-stream",
        "name of the Redis stream (and prefix of the keys) the cluster shares",
        DEFAULT_STREAM,
        metavar="NAME",
    ),
    Option(
        "--presence-lease",
        "a process that stops writing to Redis (killed, cut off) is forgotten, its users "
        "offline, within this many seconds",
        DEFAULT_LEASE,
        float,
        "SECONDS",
    ),
    Option(
        "--redis-buffer",
        "messages kept for the cluster while Redis is unreachable (the oldest dropped beyond it)",
        DEFAULT_BUFFER,
        int,
        "MESSAGES",
    ),
    Option(
        "--redis-optional",
        "start even when Redis is unreachable: serve this process's clients alone and "
        "join the cluster when Redis is reachable",
        kind="switch",
    ),
    Option(
        "--workers",
        "run this many server processes sharing the port (SO_REUSEPORT); more than one "
        "needs --redis-url",
        1,
        int,
        "N",
    ),
    Option("--log-level", "log level", "info", choice(LOG_LEVELS), choices=LOG_LEVELS),
    Option(
        "--log-format",
        "log format: text for people, json (one object a line) for machines",
        "text",
        choice(LOG_FORMATS),
        choices=LOG_FORMATS,
    ),
)
