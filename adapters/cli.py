"""``agentcast serve``: the reference server from the command line.

Every flag can also come from the environment, as ``AGENTCAST_`` + the flag in upper snake
case (``--heartbeat-interval`` is ``AGENTCAST_HEARTBEAT_INTERVAL``; a repeatable flag takes
a comma-separated list, ``AGENTCAST_TOKEN=t1=alice,t2=bob``); the command line wins.
Durations are seconds, sizes bytes. ``agentcast serve --help`` lists every default.

The flags are tables: :data:`SETTINGS_FLAGS` map one-to-one onto
:class:`~agentcast.protocol.Settings` fields, the rest are the adapter's own options.
:func:`build_config` turns parsed flags into a :class:`ServeConfig`; adding a flag is a line
in a table plus, for an adapter option, a line there.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from agentcast.protocol import (
    Authenticator,
    DevAuthenticator,
    Settings,
    StaticAuthenticator,
)

from .logs import LOG_FORMATS, LOG_LEVELS, LogFormat, configure_logging
from .server import DEFAULT_DRAIN_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT, Server

__all__ = [
    "ENV_PREFIX",
    "SETTINGS_FLAGS",
    "ConfigError",
    "ServeConfig",
    "build_config",
    "build_parser",
    "build_ssl_context",
    "main",
]

log = logging.getLogger("agentcast.server")

ENV_PREFIX = "AGENTCAST_"
BACKENDS = ("asyncio", "trio")
AUTH_MODES = ("dev", "static")


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
)

#: Flags whose value is a secret: --help never shows their (environment) default.
_SECRETS = {"api_key", "token"}


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest in _SECRETS:  # show whether there is a default, never its value
            shown = "from the environment" if action.default else "none"
            return f"{action.help} (default: {shown})"
        return super()._get_help_string(action)


class _TokenAppend(argparse.Action):
    """Repeatable ``--token``: values from the command line replace the environment's."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if not getattr(namespace, "_token_from_cli", False):
            namespace._token_from_cli = True
            setattr(namespace, self.dest, [])
        getattr(namespace, self.dest).append(values)


class _Flags:
    """Adds flags to a parser, with defaults taken from the environment when set there."""

    def __init__(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        self._parser = parser
        self._environ = environ

    def add(self, flag: str, *, default: Any, help: str, **kwargs: Any) -> None:
        env = _env_name(flag)
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
    flags.add_switch("--uvloop", help="run asyncio on uvloop (needs agentcast[uvloop])")
    flags.add(
        "--auth",
        type=_choice(AUTH_MODES),
        choices=AUTH_MODES,
        default="dev",
        help="authenticator: dev accepts any token as user_<token> (development only); "
        "static accepts the --token table",
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
    return parser


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

    def server(self) -> Server:
        return Server(
            self.settings,
            authenticator=self.authenticator,
            host=self.host,
            port=self.port,
            ssl_context=self.ssl_context,
            drain_timeout=self.drain_timeout,
            socket_send_buffer=self.socket_send_buffer,
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
        settings = Settings(**values, api_key=args.api_key or None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    authenticator: Authenticator
    if args.auth == "static":
        if not args.token:
            raise ConfigError("--auth static needs at least one --token TOKEN=USER")
        authenticator = StaticAuthenticator(dict(args.token))
    else:
        if args.token:
            raise ConfigError("--token is for --auth static")
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
    if args.uvloop:
        if args.backend != "asyncio":
            raise ConfigError("--uvloop needs --backend asyncio")
        if importlib.util.find_spec("uvloop") is None:
            raise ConfigError("--uvloop: uvloop is not installed (agentcast[uvloop])")
    return ServeConfig(
        settings=settings,
        authenticator=authenticator,
        host=args.host,
        port=args.port,
        ssl_context=context,
        drain_timeout=args.drain_timeout,
        socket_send_buffer=args.socket_send_buffer or None,
        backend=args.backend,
        uvloop=args.uvloop,
        log_level=args.log_level,
        log_format=args.log_format,
    )


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (task groups wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _serve(server: Server) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        for url in server.urls:
            print(f"agentcast listening on {url}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``agentcast`` console script. Returns the exit status (0 after a clean shutdown)."""
    try:
        parser = build_parser()
    except ConfigError as exc:
        print(f"agentcast: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"agentcast serve: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    server = config.server()
    options: dict[str, Any] = {"use_uvloop": True} if config.uvloop else {}
    log.info(
        "starting agentcast on %s:%d (backend=%s%s, auth=%s, tls=%s)",
        config.host,
        config.port,
        config.backend,
        "+uvloop" if config.uvloop else "",
        args.auth,
        "on" if config.ssl_context is not None else "off",
    )
    try:
        anyio.run(_serve, server, backend=config.backend, backend_options=options)
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
