"""``agentcast serve``, ``agentcast token`` and ``agentcast connect``: the command line.

``agentcast connect URL --token T`` is a terminal client (:mod:`agentcast.adapters.terminal`).

Every flag can also come from the environment, as ``AGENTCAST_`` + the flag in upper snake
case (``--heartbeat-interval`` is ``AGENTCAST_HEARTBEAT_INTERVAL``; a repeatable flag takes
a comma-separated list, ``AGENTCAST_TOKEN=t1=alice,t2=bob``); the command line wins.
Durations are seconds, sizes bytes. ``agentcast serve --help`` lists every default.
Connection limits and optional timeouts take ``0`` for "unlimited" / "never".

``agentcast token --sub user_1 --ttl 1h`` prints a development HS256 token signed with the
configured secret (``--jwt-secret`` or ``AGENTCAST_JWT_SECRET``), for ``--auth jwt``.

The flags are the option table of :mod:`agentcast.adapters.options` (adding a flag is a
line there, plus its use in :mod:`agentcast.adapters.config`); this module renders it as
an argument parser, with each environment variable as its flag's default, and runs the
commands.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .cluster_options import BackplaneUnavailable
from .collector import Collector
from .config import ConfigError, ServeConfig, build_config, build_ssl_context
from .logs import configure_logging
from .options import (
    DEFAULT_JWT_LEEWAY,
    DEFAULT_JWT_RELOAD_INTERVAL,
    ENV_PREFIX,
    SERVE_OPTIONS,
    SETTINGS_FLAGS,
    Option,
    choice,
    comma_list,
    invalid_value_message,
    parse_duration,
)
from .server import Server
from .terminal import add_connect_command, connect_command

__all__ = [
    "DEFAULT_JWT_LEEWAY",
    "DEFAULT_JWT_RELOAD_INTERVAL",
    "ENV_PREFIX",
    "SETTINGS_FLAGS",
    "ConfigError",
    "ServeConfig",
    "build_config",
    "build_parser",
    "build_ssl_context",
    "main",
    "parse_duration",
    "serve",
]

log = logging.getLogger("agentcast.server")

HMAC_ALGORITHMS = ("hs256", "hs384", "hs512")
DEFAULT_TOKEN_TTL = "1h"  # a working day's session needs a refresh or a new token

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

#: ``agentcast token``'s options (their variables are named, not derived from the flag).
TOKEN_OPTIONS = (
    Option(
        "--ttl",
        "lifetime: 30s, 15m, 1h, 2d or seconds",
        DEFAULT_TOKEN_TTL,
        parse_duration,
        "DURATION",
        env="AGENTCAST_TOKEN_TTL",
    ),
    Option("--jwt-secret", "the secret the server verifies with", metavar="SECRET"),
    Option("--issuer", "iss claim", metavar="ISS", env="AGENTCAST_JWT_ISSUER"),
    Option(
        "--algorithm",
        "signing algorithm (HS384 needs a 48-byte secret, HS512 64)",
        "hs256",
        choice(HMAC_ALGORITHMS),
        choices=HMAC_ALGORITHMS,
        env="AGENTCAST_TOKEN_ALGORITHM",
    ),
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest in _SECRETS:  # show whether there is a default, never its value
            shown = "from the environment" if action.default else "none"
            return f"{action.help} (default: {shown})"
        if action.dest in _UNSET and not action.default:
            return f"{action.help} (default: {_UNSET[action.dest]})"
        return super()._get_help_string(action)


class _Repeat(argparse.Action):
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


class _FromEnvironment(str):
    """An option's default read from its environment variable: a bad value is reported
    under the variable's name, not the flag's (the user never typed the flag)."""

    variable: str


def _argparse_type(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """*convert* reporting a bad value with a message that says what was expected: for a
    flag the way argparse shows it, for an environment variable as a :class:`ConfigError`
    naming the variable."""

    @wraps(convert)
    def wrapped(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            message = invalid_value_message(convert, text, exc)
            if isinstance(text, _FromEnvironment):
                raise ConfigError(f"{text.variable}: {message}") from None
            raise argparse.ArgumentTypeError(message) from None

    return wrapped


def _environment_default(option: Option, environ: Mapping[str, str]) -> Any:
    value = option.from_environment(environ)  # a string: argparse converts it
    if isinstance(value, str) and option.variable in environ:
        value = _FromEnvironment(value)
        value.variable = option.variable
    return value


class _Parser(argparse.ArgumentParser):
    """The top-level parser. An unknown flag after a command is that command's error,
    with its usage and the closest flag it has, not the top level's."""

    commands: dict[str, argparse.ArgumentParser]

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self.commands.get(getattr(parsed, "command", None) or "", self)
            message = f"unrecognized arguments: {' '.join(extras)}"
            flags = [s for a in command._actions for s in a.option_strings]
            close = difflib.get_close_matches(extras[0].split("=", 1)[0], flags, n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
            command.error(message)
        return parsed


def version() -> str:
    """The installed package's version (``unknown`` when run from a bare source tree)."""
    try:
        return importlib.metadata.version("agentcast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _add_options(
    parser: argparse.ArgumentParser, options: Sequence[Option], environ: Mapping[str, str]
) -> None:
    """Add *options* to *parser*, each with its environment variable as its default."""
    for option in options:
        env = option.variable
        default = _environment_default(option, environ)
        if option.kind == "switch":
            parser.add_argument(
                option.flag,
                action="store_true",
                default=default,
                help=f"{option.help} [env {env}]",
            )
        elif option.kind == "toggle":
            parser.add_argument(
                option.flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{option.help} [env {env}: 1 or 0]",
            )
        elif option.kind == "tristate":
            assert option.negative is not None
            group = parser.add_mutually_exclusive_group()
            group.add_argument(
                option.flag,
                dest=option.dest,
                action="store_const",
                const=True,
                default=default,
                help=f"{option.help} [env {env}: 1 or 0, unset for auto]",
            )
            group.add_argument(option.negative, dest=option.dest, action="store_const", const=False)
        else:
            kwargs: dict[str, Any] = {"default": default}
            if option.type is not None:
                kwargs["type"] = _argparse_type(option.type)
            if option.metavar is not None:
                kwargs["metavar"] = option.metavar
            if option.choices is not None:
                kwargs["choices"] = option.choices
            if option.kind == "repeatable":
                kwargs["action"] = _Repeat
                help = f"{option.help} [env {env}, comma-separated]"
            else:
                help = f"{option.help} [env {env}]"
            parser.add_argument(option.flag, help=help, **kwargs)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``agentcast`` parser, with defaults from *environ* (``os.environ``)."""
    environ = os.environ if environ is None else environ
    parser = _Parser(
        prog="agentcast", description="agentcast: a real-time WebSocket server for AI agents."
    )
    parser.add_argument("--version", action="version", version=f"agentcast {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the agentcast server. Durations are seconds, sizes bytes; every flag "
        "can also be set in the environment variable shown with it.",
        formatter_class=_HelpFormatter,
    )
    _add_options(serve, SERVE_OPTIONS, environ)
    token = commands.add_parser(
        "token",
        help="print a development JWT",
        description="Print an HS256/384/512 JWT for --auth jwt with a secret, signed with "
        "the configured secret. For development and tests: production tokens come from "
        "your identity provider.",
        formatter_class=_HelpFormatter,
    )
    token.add_argument("--sub", required=True, help="the user id (sub claim)")
    token.add_argument(
        "--channel",
        action="append",
        default=None,
        metavar="PATTERN",
        help="a channel name or prefix* pattern the token may subscribe to (repeatable; "
        "the channels claim); without it the token may subscribe to none",
    )
    _add_options(token, TOKEN_OPTIONS[:3], environ)
    audiences = comma_list(environ.get("AGENTCAST_JWT_AUDIENCE"))
    token.add_argument(
        "--audience",
        default=audiences[0] if audiences else None,
        metavar="AUD",
        help="aud claim [env AGENTCAST_JWT_AUDIENCE, its first value]",
    )
    _add_options(token, TOKEN_OPTIONS[3:], environ)
    connect = add_connect_command(commands)
    parser.commands = {"serve": serve, "token": token, "connect": connect}
    return parser


# -- the commands -----------------------------------------------------------------------


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
            channels=args.channel,
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


async def _serve(server: Server, gc_postpone: float) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(_run_server, server, tg.cancel_scope)
        # The whole process is ours here (not in an embedding): the garbage collector's
        # full passes wait while connections are opening (adapters/collector.py).
        if gc_postpone:
            collector = Collector(server.hub, gc_postpone)
            collector.start()
            tg.start_soon(collector.run)
        for url in server.urls:
            print(f"agentcast listening on {url}", flush=True)
        if server.settings.dashboard:
            for url in server.urls:
                page = url.replace("ws", "http", 1).removesuffix(server.settings.path) + "/"
                print(f"agentcast dashboard at {page}", flush=True)


async def _run_server(
    server: Server, others: anyio.CancelScope, *, task_status: TaskStatus[None]
) -> None:
    """Serve until the server stops, then stop the other tasks of :func:`_serve` (an
    error stops them too, as the task group's)."""
    await server.run(task_status=task_status)
    others.cancel()


#: The package each event loop needs, and the extra that installs it.
_BACKEND_EXTRAS = {"trio": ("trio", "agentcast[trio]")}


def _check_backend(backend: str) -> None:
    """A :class:`ConfigError` naming the extra to install when *backend* is missing."""
    needed = _BACKEND_EXTRAS.get(backend)
    if needed is not None and importlib.util.find_spec(needed[0]) is None:
        raise ConfigError(f"--backend {backend} needs {needed[0]}: pip install '{needed[1]}'")


def serve(config: ServeConfig) -> None:
    """Run the server *config* describes until it shuts down, on the event loop it names."""
    options: dict[str, Any] = {"use_uvloop": True} if config.uvloop else {}
    anyio.run(
        _serve, config.server(), config.gc_postpone, backend=config.backend, backend_options=options
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``agentcast`` console script. Returns the exit status (0 after a clean shutdown)."""
    try:
        parser = build_parser()
    except ConfigError as exc:
        print(f"agentcast: error: {exc}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except ConfigError as exc:  # a bad AGENTCAST_* value
        print(f"agentcast: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return _token_command(args)
    if args.command == "connect":
        return connect_command(args)
    try:
        config = build_config(args)
        _check_backend(config.backend)
    except ConfigError as exc:
        print(f"agentcast serve: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    if config.workers > 1:
        from .workers import run_workers  # noqa: PLC0415

        log.info("starting %d workers on %s:%d", config.workers, config.host, config.port)
        # Each worker is this command with one worker (the last flag wins).
        given = list(sys.argv[1:] if argv is None else argv)
        return run_workers(config.workers, [*given, "--workers", "1"])
    log.info(
        "starting agentcast on %s:%d (backend=%s%s, auth=%s%s, tls=%s)",
        config.host,
        config.port,
        config.backend,
        "+uvloop" if config.uvloop else "",
        config.auth,
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
        if isinstance(cause, BackplaneUnavailable):
            log.error("%s", cause)
            return 1
        if not isinstance(cause, OSError):
            raise
        log.error("cannot serve on %s:%d: %s", config.host, config.port, cause)
        return 1
    log.info("stopped")
    return 0
