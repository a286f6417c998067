"""The configuration of a served agentcast: option values checked together, JWT set up.

:func:`build_config` turns option values (``{dest: value}``, or the namespace the command
line parsed) into a :class:`ServeConfig`: the core's
:class:`~agentcast.protocol.Settings`, the authenticator (and the JWT key file it is
reloaded from), TLS, and the reference server's own options. It is the one place where
options are checked against each other; :class:`ConfigError` says what is wrong, never
with a secret in it.

Both ways of running agentcast use it: ``agentcast serve`` with the values its parser
read (:mod:`agentcast.adapters.cli`), and the ASGI application with
:func:`config_from_environment`, which reads the ``AGENTCAST_*`` variables through the
same option table (:mod:`agentcast.adapters.options`) without any argument parser.
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentcast.protocol import Authenticator, DevAuthenticator, Settings, StaticAuthenticator

from .cluster_options import ClusterOptions
from .collector import DEFAULT_GC_POSTPONE
from .logs import LogFormat
from .options import SERVE_OPTIONS, SETTINGS_FLAGS, ConfigError, comma_list, read_environment
from .server import Server
from .service import Service
from .workers import worker_index

if TYPE_CHECKING:  # PyJWT is optional: the JWT modules are imported for --auth jwt only
    from .jwt_keyfile import JwtKeyFile

__all__ = [
    "ConfigError",
    "ServeConfig",
    "build_config",
    "build_ssl_context",
    "config_from_environment",
]


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
    #: The ``--auth`` mode, for the start-up log.
    auth: str = "dev"
    #: How to join a cluster (``--redis-url``...), or ``None``: one process.
    cluster: ClusterOptions | None = None
    #: ``--workers``: server processes sharing the port.
    workers: int = 1
    #: ``--gc-postpone``: how long Python's full garbage collections may be held back
    #: while connections are opening (:mod:`~agentcast.adapters.collector`); 0: never.
    gc_postpone: float = DEFAULT_GC_POSTPONE

    def service(self) -> Service:
        """A new service with this configuration (for the ASGI application)."""
        return Service(
            self.settings,
            authenticator=self.authenticator,
            jwt_key_file=self.jwt_key_file,
            drain_timeout=self.drain_timeout,
            cluster=self.cluster,
        )

    def server(self) -> Server:
        """A new reference server (and its service) with this configuration."""
        return Server(
            service=self.service(),
            host=self.host,
            port=self.port,
            ssl_context=self.ssl_context,
            socket_send_buffer=self.socket_send_buffer,
            # A worker of `--workers N` shares the port with its siblings.
            reuse_port=worker_index() is not None,
        )


def build_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context from PEM files (TLS 1.2+, the ssl module's secure defaults)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def config_from_environment(environ: Mapping[str, str] | None = None) -> ServeConfig:
    """The configuration the ``AGENTCAST_*`` variables of *environ* (``os.environ``)
    describe, read exactly as ``agentcast serve`` reads them with no flag given."""
    environ = os.environ if environ is None else environ
    return build_config(read_environment(SERVE_OPTIONS, environ))


def build_config(values: Mapping[str, Any] | object) -> ServeConfig:
    """Check the option *values* (``{dest: value}`` or an ``argparse.Namespace``)
    together and build the configuration; :class:`ConfigError` says what is wrong."""
    args: Mapping[str, Any] = values if isinstance(values, Mapping) else vars(values)
    fields = {item.dest: args[item.dest] for item in SETTINGS_FLAGS}
    try:
        settings = Settings(
            **fields,
            api_key=args["api_key"] or None,
            require_auth=args["require_auth"],
            dashboard=args["dashboard"],
            allowed_origins=tuple(args["allowed_origin"]) or None,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    authenticator: Authenticator
    key_file: JwtKeyFile | None = None
    description = ""
    jwt_flags = [flag for flag in _JWT_ONLY if args[flag[2:].replace("-", "_")]]
    if args["auth"] != "jwt" and jwt_flags:
        # Not ignored: an operator who set a JWT key believes tokens are verified.
        raise ConfigError(f"{jwt_flags[0]} is for --auth jwt")
    if args["auth"] == "static":
        if not args["token"]:
            raise ConfigError("--auth static needs at least one --token TOKEN=USER")
        authenticator = StaticAuthenticator(dict(args["token"]))
    elif args["token"]:
        raise ConfigError("--token is for --auth static")
    elif args["auth"] == "jwt":
        authenticator, key_file, description = _jwt_config(args)
    else:
        authenticator = DevAuthenticator()
    if (args["tls_cert"] is None) != (args["tls_key"] is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    context = None
    if args["tls_cert"] is not None:
        try:
            context = build_ssl_context(args["tls_cert"], args["tls_key"])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate or key: {exc}") from None
    if not args["drain_timeout"] >= 0:
        raise ConfigError("--drain-timeout must not be negative")
    if args["socket_send_buffer"] < 0:
        raise ConfigError("--socket-send-buffer must not be negative")
    if not args["gc_postpone"] >= 0:
        raise ConfigError("--gc-postpone must not be negative")
    cluster = None
    if args["redis_url"]:
        try:
            cluster = ClusterOptions(
                args["redis_url"],
                stream=args["redis_stream"],
                lease=args["presence_lease"],
                buffer=args["redis_buffer"],
                optional=args["redis_optional"],
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    elif args["redis_optional"]:
        raise ConfigError("--redis-optional is for --redis-url")
    workers = args["workers"]
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if workers > 1 and cluster is None:
        raise ConfigError(
            f"--workers {workers} needs --redis-url: the workers are one server through Redis"
        )
    if workers > 1 and args["port"] == 0:
        raise ConfigError("--workers needs a fixed --port (the workers share it)")
    return ServeConfig(
        settings=settings,
        authenticator=authenticator,
        host=args["host"],
        port=args["port"],
        ssl_context=context,
        drain_timeout=args["drain_timeout"],
        socket_send_buffer=args["socket_send_buffer"] or None,
        backend=args["backend"],
        uvloop=_uvloop(args["uvloop"], args["backend"]),
        log_level=args["log_level"],
        log_format=args["log_format"],
        jwt_key_file=key_file,
        auth_description=description,
        auth=args["auth"],
        cluster=cluster,
        workers=workers,
        gc_postpone=args["gc_postpone"],
    )


def _uvloop(wanted: bool | str, backend: str) -> bool:
    """``--uvloop`` (True), ``--no-uvloop`` (False) or neither (``"auto"``)."""
    if wanted is True:
        if backend != "asyncio":
            raise ConfigError("--uvloop needs --backend asyncio")
        if importlib.util.find_spec("uvloop") is None:
            raise ConfigError("--uvloop: uvloop is not installed (agentcast[uvloop])")
        return True
    if wanted == "auto":  # the default: uvloop whenever it can be had
        return backend == "asyncio" and importlib.util.find_spec("uvloop") is not None
    return False


#: Flags that mean nothing without --auth jwt (those with a default aside).
_JWT_ONLY = (
    "--jwt-secret",
    "--jwt-public-key",
    "--jwt-jwks",
    "--jwt-algorithms",
    "--jwt-issuer",
    "--jwt-audience",
)


def _jwt_config(args: Mapping[str, Any]) -> tuple[Authenticator, JwtKeyFile | None, str]:
    """The JWT authenticator of ``--auth jwt``, its key file and a description."""
    sources = [
        (flag, args[flag[2:].replace("-", "_")])
        for flag in ("--jwt-secret", "--jwt-public-key", "--jwt-jwks")
        if args[flag[2:].replace("-", "_")]
    ]
    if len(sources) != 1:
        raise ConfigError(
            "--auth jwt needs exactly one of --jwt-secret, --jwt-public-key, --jwt-jwks"
        )
    if not args["jwt_reload_interval"] >= 0:
        raise ConfigError("--jwt-reload-interval must not be negative")
    try:
        # PyJWT is an optional dependency (agentcast[jwt]): import it only when asked to.
        from agentcast.protocol.jwt_auth import JwtAuthenticator, JwtKeySet  # noqa: PLC0415

        from .jwt_keyfile import JwtKeyFile, describe_keys  # noqa: PLC0415
    except ImportError:
        raise ConfigError("--auth jwt needs PyJWT: pip install 'agentcast[jwt]'") from None
    options: dict[str, Any] = {
        "algorithms": comma_list(args["jwt_algorithms"]) or None,
        "issuer": args["jwt_issuer"] or None,
        "audience": comma_list(args["jwt_audience"]) or None,
        "leeway": args["jwt_leeway"],
        "user_claim": args["jwt_user_claim"],
        "channels_claim": args["jwt_channels_claim"],
    }
    flag, value = sources[0]
    try:
        if flag == "--jwt-secret":
            authenticator = JwtAuthenticator(JwtKeySet.from_secret(value), **options)
            return authenticator, None, f"a secret ({describe_keys(authenticator)})"
        key_file = JwtKeyFile.open(
            value,
            format="jwks" if flag == "--jwt-jwks" else "pem",
            reload_interval=args["jwt_reload_interval"] or None,
            **options,
        )
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {value}: {exc.strerror or exc}") from None
    except ValueError as exc:  # the messages name the problem, never the secret
        raise ConfigError(f"{flag}: {exc}") from None
    return key_file.authenticator, key_file, key_file.describe()
