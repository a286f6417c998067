"""``agentcast serve`` and ``agentcast token``: the reference server from the command line.

Every flag can also come from the environment, as ``AGENTCAST_`` + the flag in upper snake
case (``--heartbeat-interval`` is ``AGENTCAST_HEARTBEAT_INTERVAL``; a repeatable flag takes
a comma-separated list, ``AGENTCAST_TOKEN=t1=alice,t2=bob``); the command line wins.
Durations are seconds, sizes bytes. ``agentcast serve --help`` lists every default.
Connection limits and optional timeouts take ``0`` for "unlimited" / "never".

``agentcast token --sub user_1 --ttl 1h`` prints a development HS256 token signed with the
configured secret (``--jwt-secret`` or ``AGENTCAST_JWT_SECRET``), for ``--auth jwt``.

The flags are tables: :data:`SETTINGS_FLAGS` map one-to-one onto
:class:`~agentcast.protocol.Settings` fields, the rest are the adapter's own options.
:func:`build_config` turns parsed flags into a :class:`ServeConfig`; adding a flag is a line
in a table plus, for an adapter option, a line there.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import math
import os
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from agentcast.protocol import (
    Authenticator,
    DevAuthenticator,
    Settings,
    StaticAuthenticator,
)

from .logs import LOG_FORMATS, LOG_LEVELS, LogFormat, configure_logging
from .server import DEFAULT_DRAIN_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT, Server

if TYPE_CHECKING:  # PyJWT is optional: the JWT modules are imported for --auth jwt only
    from .jwt_keyfile import JwtKeyFile

__all__ = [
    "ENV_PREFIX",
    "SETTINGS_FLAGS",
    "ConfigError",
    "ServeConfig",
    "build_config",
    "build_parser",
    "build_ssl_context",
    "main",
    "parse_duration",
]

log = logging.getLogger("agentcast.server")

ENV_PREFIX = "AGENTCAST_"
BACKENDS = ("asyncio", "trio")
AUTH_MODES = ("dev", "static", "jwt")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
# Same as DEFAULT_LEEWAY and DEFAULT_RELOAD_INTERVAL of the JWT modules, which this module
# cannot import without PyJWT (checked by a test).
DEFAULT_JWT_LEEWAY = 30.0
DEFAULT_JWT_RELOAD_INTERVAL = 2.0
DEFAULT_TOKEN_TTL = "1h"  # a working day's session needs a refresh or a new token


class ConfigError(Exception):
    """A configuration that cannot work; the message says why (never a secret)."""


# -- value types ------------------------------------------------------------------------


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (0-65535)")
    return value


def _token_pair(text: str) -> tuple[str, str]:
    token, sep, user = text.partition("=")
    if not sep or not token or not user:
        # Never echo the value: it holds a token.
        raise argparse.ArgumentTypeError("expected TOKEN=USER")
    return token, user


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    # argparse checks `choices` on the command line only; this also checks environment
    # values, which argparse feeds through `type` as string defaults.
    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    convert.__name__ = "choice"
    return convert


def _limit(text: str) -> int | None:
    """A count limit; ``0`` is unlimited (``None``)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative (0: unlimited)")
    return value or None


def _optional_number(text: str) -> float | None:
    """A rate or a duration; ``0`` is no limit (``None``)."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative number (0: no limit)")
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
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (30s, 15m, 1h, 2d or a number of seconds)"
        )
    return seconds


def _comma_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


# -- the flag tables --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SettingsFlag:
    flag: str
    field: str
    type: Callable[[str], Any]
    metavar: str
    help: str


#: Flags that are :class:`Settings` fields (the default is the field's default).
SETTINGS_FLAGS: tuple[_SettingsFlag, ...] = (
    _SettingsFlag("--path", "path", str, "PATH", "WebSocket endpoint path"),
    _SettingsFlag(
        "--heartbeat-interval",
        "heartbeat_interval",
        float,
        "SECONDS",
        "seconds between server pings",
    ),
    _SettingsFlag(
        "--heartbeat-timeout",
        "heartbeat_timeout",
        float,
        "SECONDS",
        "close a client silent for this many seconds (4000)",
    ),
    _SettingsFlag(
        "--presence-grace",
        "presence_grace",
        float,
        "SECONDS",
        "seconds before a user whose last connection closed is shown offline",
    ),
    _SettingsFlag(
        "--max-message-size",
        "max_message_size",
        int,
        "BYTES",
        "largest client message in bytes (bigger: close 1009)",
    ),
    _SettingsFlag(
        "--max-send-buffer",
        "max_send_buffer",
        int,
        "BYTES",
        "bytes a client may have pending before it is closed as too slow (1013)",
    ),
    _SettingsFlag(
        "--rate-limit",
        "rate_limit",
        float,
        "PER_SECOND",
        "client messages per second (token bucket refill)",
    ),
    _SettingsFlag(
        "--rate-burst", "rate_burst", int, "MESSAGES", "client messages allowed in a burst"
    ),
    _SettingsFlag(
        "--max-connections",
        "max_connections",
        _limit,
        "N",
        "open WebSocket connections per process; over it the upgrade gets 503 (0: unlimited)",
    ),
    _SettingsFlag(
        "--max-connections-per-ip",
        "max_connections_per_ip",
        _limit,
        "N",
        "connections per client address (IPv6: per /64); behind a reverse proxy every "
        "client has the proxy's address: raise it or use 0 there (0: unlimited)",
    ),
    _SettingsFlag(
        "--max-connections-per-user",
        "max_connections_per_user",
        _limit,
        "N",
        "connections per authenticated user (0: unlimited)",
    ),
    _SettingsFlag(
        "--connection-rate",
        "connection_rate",
        _optional_number,
        "PER_SECOND",
        "new WebSocket connections per second per process; over it 503 with Retry-After "
        "(0: unlimited)",
    ),
    _SettingsFlag(
        "--handshake-timeout",
        "handshake_timeout",
        float,
        "SECONDS",
        "time a client has to send its whole request (slower: 408, closed)",
    ),
    _SettingsFlag(
        "--unauthenticated-timeout",
        "unauthenticated_timeout",
        _optional_number,
        "SECONDS",
        "close a connection that has not authenticated after this long (1008; 0: never)",
    ),
    _SettingsFlag(
        "--max-header-size",
        "max_header_size",
        int,
        "BYTES",
        "largest request line + headers (bigger: 431, closed)",
    ),
)

#: Flags whose value is a secret: --help never shows their (environment) default.
_SECRETS = {"api_key", "token", "jwt_secret"}
#: What an unset optional flag means, for --help.
_UNSET = {
    "jwt_public_key": "none",
    "jwt_jwks": "none",
    "jwt_algorithms": "every algorithm the key can verify",
    "jwt_issuer": "not checked",
    "jwt_audience": "not checked; a token that names one is refused",
    "allowed_origin": "any origin, for development",
    "issuer": "none",
    "audience": "none",
    "sub": "none, required",
}


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest in _SECRETS:  # show whether there is a default, never its value
            shown = "from the environment" if action.default else "none"
            return f"{action.help} (default: {shown})"
        if action.dest in _UNSET and not action.default:
            return f"{action.help} (default: {_UNSET[action.dest]})"
        return super()._get_help_string(action)


class _TokenAppend(argparse.Action):
    """A repeatable flag (``--token``, ``--allowed-origin``): values from the command line
    replace the environment's."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        seen = f"_{self.dest}_from_cli"
        if not getattr(namespace, seen, False):
            setattr(namespace, seen, True)
            setattr(namespace, self.dest, [])
        getattr(namespace, self.dest).append(values)


class _Flags:
    """Adds flags to a parser, with defaults taken from the environment when set there."""

    def __init__(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        self._parser = parser
        self._environ = environ

    def add(
        self, flag: str, *, default: Any, help: str, env: str | None = None, **kwargs: Any
    ) -> None:
        env = env or _env_name(flag)
        value = self._environ.get(env)
        if value is not None:
            default = value  # a string: argparse converts it with `type` (and checks it)
        self._parser.add_argument(flag, default=default, help=f"{help} [env {env}]", **kwargs)

    def add_switch(self, flag: str, *, help: str) -> None:
        env = _env_name(flag)
        raw = self._environ.get(env, "").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ConfigError(f"{env} must be one of 1, 0, true, false, yes, no, on, off")
        self._parser.add_argument(
            flag, action="store_true", default=raw in _TRUE, help=f"{help} [env {env}]"
        )

    def add_tristate(self, flag: str, negative: str, *, help: str) -> None:
        """``flag`` (True), ``negative`` (False), or neither (``"auto"``: decide later)."""
        env = _env_name(flag)
        raw = self._environ.get(env, "").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ConfigError(f"{env} must be one of 1, 0, true, false, yes, no, on, off")
        default: bool | str = "auto" if raw == "" else raw in _TRUE
        dest = flag.lstrip("-").replace("-", "_")
        group = self._parser.add_mutually_exclusive_group()
        group.add_argument(
            flag,
            dest=dest,
            action="store_const",
            const=True,
            default=default,
            help=f"{help} [env {env}: 1 or 0, unset for auto]",
        )
        group.add_argument(negative, dest=dest, action="store_const", const=False)

    def add_repeatable(
        self, flag: str, *, type: Callable[[str], Any], metavar: str, help: str
    ) -> None:
        env = _env_name(flag)
        raw = self._environ.get(env, "")
        try:
            default = [type(item.strip()) for item in raw.split(",") if item.strip()]
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{env}: {exc}") from None
        self._parser.add_argument(
            flag,
            action=_TokenAppend,
            type=type,
            default=default,
            metavar=metavar,
            help=f"{help} [env {env}, comma-separated]",
        )


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``agentcast`` parser, with defaults from *environ* (``os.environ``)."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="agentcast", description="agentcast: a real-time WebSocket server for AI agents."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the agentcast server. Durations are seconds, sizes bytes; every flag "
        "can also be set in the environment variable shown with it.",
        formatter_class=_HelpFormatter,
    )
    flags = _Flags(serve, environ)
    flags.add("--host", default=DEFAULT_HOST, help="address to listen on")
    flags.add(
        "--port",
        type=_port,
        metavar="PORT",
        default=DEFAULT_PORT,
        help="port to listen on (0: any free)",
    )
    flags.add(
        "--backend",
        type=_choice(BACKENDS),
        choices=BACKENDS,
        default="asyncio",
        help="event loop",
    )
    flags.add_tristate(
        "--uvloop",
        "--no-uvloop",
        help="run asyncio on uvloop; by default it does when uvloop is installed "
        "(agentcast[uvloop]), --no-uvloop for the standard asyncio loop",
    )
    flags.add(
        "--auth",
        type=_choice(AUTH_MODES),
        choices=AUTH_MODES,
        default="dev",
        help="authenticator: dev accepts any token as user_<token> (development only); "
        "static accepts the --token table; jwt verifies JWTs (--jwt-*)",
    )
    flags.add_repeatable(
        "--token",
        type=_token_pair,
        metavar="TOKEN=USER",
        help="a token and its user id for --auth static (repeatable)",
    )
    flags.add(
        "--api-key",
        default=None,
        metavar="KEY",
        help="key for the publish API (Authorization: Bearer KEY); "
        "without one the API answers loopback clients only",
    )
    _add_jwt_flags(flags)
    flags.add_switch(
        "--require-auth",
        help="refuse the upgrade with 401 (no WebSocket) when the token is missing or invalid",
    )
    flags.add_repeatable(
        "--allowed-origin",
        type=str,
        metavar="ORIGIN",
        help="an Origin allowed to open a WebSocket, scheme://host[:port] or "
        "scheme://*.domain (repeatable); others get 403; requests without Origin "
        "(non-browser clients) are allowed",
    )
    defaults = Settings()
    for item in SETTINGS_FLAGS:
        flags.add(
            item.flag,
            type=item.type,
            default=getattr(defaults, item.field),
            metavar=item.metavar,
            help=item.help,
        )
    flags.add(
        "--tls-cert", default=None, metavar="FILE", help="certificate chain file (PEM) for wss://"
    )
    flags.add("--tls-key", default=None, metavar="FILE", help="private key file (PEM) for wss://")
    flags.add(
        "--socket-send-buffer",
        type=int,
        metavar="BYTES",
        default=0,
        help="SO_SNDBUF of client sockets in bytes (0: the kernel's autotuning, which can "
        "hold megabytes for a slow client before --max-send-buffer applies)",
    )
    flags.add(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        default=DEFAULT_DRAIN_TIMEOUT,
        help="at shutdown, wait this long for clients to finish the closing handshake",
    )
    flags.add(
        "--log-level",
        type=_choice(LOG_LEVELS),
        choices=LOG_LEVELS,
        default="info",
        help="log level",
    )
    flags.add(
        "--log-format",
        type=_choice(LOG_FORMATS),
        choices=LOG_FORMATS,
        default="text",
        help="log format: text for people, json (one object a line) for machines",
    )
    _add_token_command(commands, environ)
    return parser


def _add_jwt_flags(flags: _Flags) -> None:
    flags.add(
        "--jwt-secret",
        default=None,
        metavar="SECRET",
        help="HMAC secret (32+ bytes) for HS256/384/512 tokens; prefer the environment "
        "variable to the command line, which other users can see",
    )
    flags.add(
        "--jwt-public-key",
        default=None,
        metavar="FILE",
        help="PEM public key or certificate (RSA, EC, Ed25519) for RS*/PS*/ES*/EdDSA tokens",
    )
    flags.add(
        "--jwt-jwks",
        default=None,
        metavar="FILE",
        help="local JWKS file; the key is chosen by the token's kid",
    )
    flags.add(
        "--jwt-algorithms",
        default=None,
        metavar="LIST",
        help="accepted algorithms, comma-separated (none is never accepted)",
    )
    flags.add("--jwt-issuer", default=None, metavar="ISS", help="required iss claim")
    flags.add(
        "--jwt-audience",
        default=None,
        metavar="AUD",
        help="accepted aud values, comma-separated (a token must name one)",
    )
    flags.add(
        "--jwt-leeway",
        type=float,
        metavar="SECONDS",
        default=DEFAULT_JWT_LEEWAY,
        help="clock skew allowed for nbf and iat (exp is strict)",
    )
    flags.add(
        "--jwt-user-claim",
        default="sub",
        metavar="CLAIM",
        help="the claim holding the user id",
    )
    flags.add(
        "--jwt-reload-interval",
        type=float,
        metavar="SECONDS",
        default=DEFAULT_JWT_RELOAD_INTERVAL,
        help="look at --jwt-public-key / --jwt-jwks this often and re-read it when it "
        "changed (0: only on SIGHUP, which always re-reads it)",
    )


def _add_token_command(commands: Any, environ: Mapping[str, str]) -> None:
    token = commands.add_parser(
        "token",
        help="print a development JWT",
        description="Print an HS256/384/512 JWT for --auth jwt with a secret, signed with "
        "the configured secret. For development and tests: production tokens come from "
        "your identity provider.",
        formatter_class=_HelpFormatter,
    )
    flags = _Flags(token, environ)
    token.add_argument("--sub", required=True, help="the user id (sub claim)")
    flags.add(
        "--ttl",
        type=parse_duration,
        metavar="DURATION",
        default=DEFAULT_TOKEN_TTL,
        help="lifetime: 30s, 15m, 1h, 2d or seconds",
        env="AGENTCAST_TOKEN_TTL",
    )
    flags.add(
        "--jwt-secret", default=None, metavar="SECRET", help="the secret the server verifies with"
    )
    flags.add(
        "--issuer",
        default=None,
        metavar="ISS",
        help="iss claim",
        env="AGENTCAST_JWT_ISSUER",
    )
    audiences = _comma_list(environ.get("AGENTCAST_JWT_AUDIENCE"))
    token.add_argument(
        "--audience",
        default=audiences[0] if audiences else None,
        metavar="AUD",
        help="aud claim [env AGENTCAST_JWT_AUDIENCE, its first value]",
    )
    flags.add(
        "--algorithm",
        type=_choice([a.lower() for a in HMAC_ALGORITHMS]),
        choices=[a.lower() for a in HMAC_ALGORITHMS],
        default="hs256",
        help="signing algorithm (HS384 needs a 48-byte secret, HS512 64)",
        env="AGENTCAST_TOKEN_ALGORITHM",
    )


# -- from flags to a server -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``agentcast serve`` needs: core settings plus the adapter's options."""

    settings: Settings
    authenticator: Authenticator
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    drain_timeout: float
    socket_send_buffer: int | None
    backend: str
    uvloop: bool
    log_level: str
    log_format: LogFormat
    #: The JWT key file (``--jwt-public-key`` / ``--jwt-jwks``), re-read when it changes.
    jwt_key_file: JwtKeyFile | None = None
    #: What verifies tokens, for the start-up log (never a secret).
    auth_description: str = ""

    def server(self) -> Server:
        return Server(
            self.settings,
            authenticator=self.authenticator,
            host=self.host,
            port=self.port,
            ssl_context=self.ssl_context,
            drain_timeout=self.drain_timeout,
            socket_send_buffer=self.socket_send_buffer,
            jwt_key_file=self.jwt_key_file,
        )


def build_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context from PEM files (TLS 1.2+, the ssl module's secure defaults)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def build_config(args: argparse.Namespace) -> ServeConfig:
    """Check the parsed flags together and build the configuration; :class:`ConfigError`
    says what is wrong."""
    values = {item.field: getattr(args, item.field) for item in SETTINGS_FLAGS}
    try:
        settings = Settings(
            **values,
            api_key=args.api_key or None,
            require_auth=args.require_auth,
            allowed_origins=tuple(args.allowed_origin) or None,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    authenticator: Authenticator
    key_file: JwtKeyFile | None = None
    description = ""
    jwt_flags = [flag for flag in _JWT_ONLY if getattr(args, flag[2:].replace("-", "_"))]
    if args.auth != "jwt" and jwt_flags:
        # Not ignored: an operator who set a JWT key believes tokens are verified.
        raise ConfigError(f"{jwt_flags[0]} is for --auth jwt")
    if args.auth == "static":
        if not args.token:
            raise ConfigError("--auth static needs at least one --token TOKEN=USER")
        authenticator = StaticAuthenticator(dict(args.token))
    elif args.token:
        raise ConfigError("--token is for --auth static")
    elif args.auth == "jwt":
        authenticator, key_file, description = _jwt_config(args)
    else:
        authenticator = DevAuthenticator()
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    context = None
    if args.tls_cert is not None:
        try:
            context = build_ssl_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate or key: {exc}") from None
    if not args.drain_timeout >= 0:
        raise ConfigError("--drain-timeout must not be negative")
    if args.socket_send_buffer < 0:
        raise ConfigError("--socket-send-buffer must not be negative")
    uvloop = args.uvloop  # True, False or "auto"
    if uvloop is True:
        if args.backend != "asyncio":
            raise ConfigError("--uvloop needs --backend asyncio")
        if importlib.util.find_spec("uvloop") is None:
            raise ConfigError("--uvloop: uvloop is not installed (agentcast[uvloop])")
    elif uvloop == "auto":  # the default: uvloop whenever it can be had
        uvloop = args.backend == "asyncio" and importlib.util.find_spec("uvloop") is not None
    uvloop = bool(uvloop)
    return ServeConfig(
        settings=settings,
        authenticator=authenticator,
        host=args.host,
        port=args.port,
        ssl_context=context,
        drain_timeout=args.drain_timeout,
        socket_send_buffer=args.socket_send_buffer or None,
        backend=args.backend,
        uvloop=uvloop,
        log_level=args.log_level,
        log_format=args.log_format,
        jwt_key_file=key_file,
        auth_description=description,
    )


#: Flags that mean nothing without --auth jwt (those with a default aside).
_JWT_ONLY = (
    "--jwt-secret",
    "--jwt-public-key",
    "--jwt-jwks",
    "--jwt-algorithms",
    "--jwt-issuer",
    "--jwt-audience",
)


def _jwt_config(args: argparse.Namespace) -> tuple[Authenticator, JwtKeyFile | None, str]:
    """The JWT authenticator of ``--auth jwt``, its key file and a description."""
    sources = [
        (flag, value)
        for flag, value in (
            ("--jwt-secret", args.jwt_secret),
            ("--jwt-public-key", args.jwt_public_key),
            ("--jwt-jwks", args.jwt_jwks),
        )
        if value
    ]
    if len(sources) != 1:
        raise ConfigError(
            "--auth jwt needs exactly one of --jwt-secret, --jwt-public-key, --jwt-jwks"
        )
    if not args.jwt_reload_interval >= 0:
        raise ConfigError("--jwt-reload-interval must not be negative")
    try:
        # PyJWT is an optional dependency (agentcast[jwt]): import it only when asked to.
        from agentcast.protocol.jwt_auth import JwtAuthenticator, JwtKeySet  # noqa: PLC0415

        from .jwt_keyfile import JwtKeyFile, describe_keys  # noqa: PLC0415
    except ImportError:
        raise ConfigError("--auth jwt needs PyJWT: pip install 'agentcast[jwt]'") from None
    options: dict[str, Any] = {
        "algorithms": _comma_list(args.jwt_algorithms) or None,
        "issuer": args.jwt_issuer or None,
        "audience": _comma_list(args.jwt_audience) or None,
        "leeway": args.jwt_leeway,
        "user_claim": args.jwt_user_claim,
    }
    flag, value = sources[0]
    try:
        if flag == "--jwt-secret":
            authenticator = JwtAuthenticator(JwtKeySet.from_secret(value), **options)
            return authenticator, None, f"a secret ({describe_keys(authenticator)})"
        key_file = JwtKeyFile.open(
            value,
            format="jwks" if flag == "--jwt-jwks" else "pem",
            reload_interval=args.jwt_reload_interval or None,
            **options,
        )
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {value}: {exc.strerror or exc}") from None
    except ValueError as exc:  # the messages name the problem, never the secret
        raise ConfigError(f"{flag}: {exc}") from None
    return key_file.authenticator, key_file, key_file.describe()


def _token_command(args: argparse.Namespace) -> int:
    """``agentcast token``: print a development JWT. The exit status."""
    if not args.jwt_secret:
        print(
            "agentcast token: error: no secret: give --jwt-secret or set AGENTCAST_JWT_SECRET",
            file=sys.stderr,
        )
        return 2
    try:
        from agentcast.protocol.jwt_auth import make_dev_token  # noqa: PLC0415 (PyJWT)
    except ImportError:
        print("agentcast token: error: needs PyJWT: pip install 'agentcast[jwt]'", file=sys.stderr)
        return 2
    try:
        token = make_dev_token(
            args.jwt_secret,
            args.sub,
            args.ttl,
            time.time(),
            args.algorithm.upper(),
            issuer=args.issuer or None,
            audience=args.audience or None,
        )
    except ValueError as exc:  # never the secret itself
        print(f"agentcast token: error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (task groups wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _serve(server: Server) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        # What start-up created (modules, settings, the server) lives as long as the
        # process: keep it out of the garbage collector's full passes, so that their cost
        # follows the connections only (the whole process is ours here, not in an embedding).
        gc.freeze()
        for url in server.urls:
            print(f"agentcast listening on {url}", flush=True)


def serve(config: ServeConfig) -> None:
    """Run the server *config* describes until it shuts down, on the event loop it names."""
    options: dict[str, Any] = {"use_uvloop": True} if config.uvloop else {}
    anyio.run(_serve, config.server(), backend=config.backend, backend_options=options)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``agentcast`` console script. Returns the exit status (0 after a clean shutdown)."""
    try:
        parser = build_parser()
    except ConfigError as exc:
        print(f"agentcast: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token_command(args)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"agentcast serve: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    log.info(
        "starting agentcast on %s:%d (backend=%s%s, auth=%s%s, tls=%s)",
        config.host,
        config.port,
        config.backend,
        "+uvloop" if config.uvloop else "",
        args.auth,
        ", require-auth" if config.settings.require_auth else "",
        "on" if config.ssl_context is not None else "off",
    )
    if config.auth_description:
        log.info("JWT authentication with %s", config.auth_description)
    try:
        serve(config)
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 130
    except Exception as exc:
        cause = _leaf(exc)
        if not isinstance(cause, OSError):
            raise
        log.error("cannot serve on %s:%d: %s", config.host, config.port, cause)
        return 1
    log.info("stopped")
    return 0
