"""`agentcast serve`: flags and environment, --help, graceful shutdown, `scripts/serve`."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys

import anyio
import pytest

from agentcast.adapters.cli import ConfigError, build_config, build_parser, main
from agentcast.adapters.config import config_from_environment
from agentcast.protocol import DevAuthenticator, StaticAuthenticator

#: The flags every deployment may need; --help lists each with its environment variable.
DOCUMENTED_FLAGS = [
    "--host",
    "--port",
    "--path",
    "--events-path",
    "--events-retry",
    "--backend",
    "--uvloop",
    "--auth",
    "--token",
    "--api-key",
    "--heartbeat-interval",
    "--heartbeat-timeout",
    "--presence-grace",
    "--history-size",
    "--history-ttl",
    "--max-message-size",
    "--max-send-buffer",
    "--rate-limit",
    "--rate-burst",
    "--tls-cert",
    "--tls-key",
    "--drain-timeout",
    "--gc-postpone",
    "--log-level",
    "--log-format",
]


def config(argv, environ=None):
    return build_config(build_parser(environ or {}).parse_args(["serve", *argv]))


# -- configuration (no server) ------------------------------------------------------------


def test_embedded_defaults():
    c = config([])
    assert (c.host, c.port, c.backend) == ("127.0.0.1", 3000, "asyncio")
    assert c.uvloop  # installed with the test extras: the default when it is there
    assert isinstance(c.authenticator, DevAuthenticator)
    assert c.settings.path == "/ws"
    assert c.settings.heartbeat_interval == 30.0
    assert c.settings.api_key is None
    assert c.ssl_context is None
    assert c.drain_timeout == 10.0
    assert c.gc_postpone == 60.0


def test_every_flag_has_an_environment_variable_and_the_command_line_wins():
    environ = {
        "AGENTCAST_HEARTBEAT_INTERVAL": "0.5",
        "AGENTCAST_PORT": "4000",
        "AGENTCAST_BACKEND": "trio",
        "AGENTCAST_MAX_SEND_BUFFER": "65536",
        "AGENTCAST_AUTH": "static",
        "AGENTCAST_TOKEN": "t1=alice, t2=bob",
        "AGENTCAST_API_KEY": "from-env",
        "AGENTCAST_LOG_FORMAT": "json",
    }
    c = config([], environ)
    assert c.settings.heartbeat_interval == 0.5
    assert c.port == 4000
    assert c.backend == "trio"
    assert c.settings.max_send_buffer == 65536
    assert c.settings.api_key == "from-env"
    assert c.log_format == "json"
    assert isinstance(c.authenticator, StaticAuthenticator)
    assert dict(c.authenticator.table) == {"t1": "alice", "t2": "bob"}

    c = config(["--port", "5000", "--heartbeat-interval", "2", "--token", "t3=carol"], environ)
    assert c.port == 5000
    assert c.settings.heartbeat_interval == 2.0
    assert dict(c.authenticator.table) == {"t3": "carol"}  # replaces, not appends

    serve_help = _serve_help({})
    for flag in DOCUMENTED_FLAGS:
        assert flag in serve_help
        assert f"AGENTCAST_{flag[2:].upper().replace('-', '_')}" in serve_help


def test_the_asgi_app_reads_the_environment_as_agentcast_serve_does():
    """The ASGI application reads AGENTCAST_* without a command line: the same values,
    the same checks, as `agentcast serve` given no flag."""
    environ = {
        "AGENTCAST_PATH": "/live",
        "AGENTCAST_PORT": "4000",
        "AGENTCAST_BACKEND": "TRIO",
        "AGENTCAST_AUTH": "static",
        "AGENTCAST_TOKEN": "t1=alice, t2=bob",
        "AGENTCAST_API_KEY": "from-env",
        "AGENTCAST_REQUIRE_AUTH": "yes",
        "AGENTCAST_ALLOWED_ORIGIN": "https://a.example,https://*.b.example",
        "AGENTCAST_MAX_CONNECTIONS_PER_IP": "0",
        "AGENTCAST_CONNECTION_RATE": "2.5",
        "AGENTCAST_HEARTBEAT_INTERVAL": "0.5",
        "AGENTCAST_SOCKET_SEND_BUFFER": "65536",
        "AGENTCAST_DRAIN_TIMEOUT": "3",
        "AGENTCAST_LOG_LEVEL": "debug",
    }
    from_cli, from_env = config([], environ), config_from_environment(environ)
    assert from_env.settings == from_cli.settings
    assert from_env.settings.allowed_origins == ("https://a.example", "https://*.b.example")
    assert dict(from_env.authenticator.table) == dict(from_cli.authenticator.table)
    for field in ("host", "port", "backend", "uvloop", "drain_timeout", "socket_send_buffer"):
        assert getattr(from_env, field) == getattr(from_cli, field), field
    assert (from_env.log_level, from_env.log_format) == (from_cli.log_level, from_cli.log_format)

    for bad in ({"AGENTCAST_PORT": "many"}, {"AGENTCAST_BACKEND": "twisted"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            config_from_environment(bad)
    with pytest.raises(ConfigError, match="--token is for --auth static"):
        config_from_environment({"AGENTCAST_TOKEN": "t=u"})


def test_history_bounds():
    c = config([])
    assert (c.settings.history_size, c.settings.history_ttl) == (1000, 300.0)
    c = config(["--history-size", "50"], {"AGENTCAST_HISTORY_TTL": "60"})
    assert (c.settings.history_size, c.settings.history_ttl) == (50, 60.0)
    with pytest.raises(ConfigError, match="history_size must not be negative"):
        config(["--history-size", "-1"])


def test_uvloop_is_the_default_on_asyncio_when_installed(monkeypatch):
    assert config([]).uvloop
    assert not config(["--no-uvloop"]).uvloop
    assert not config([], {"AGENTCAST_UVLOOP": "0"}).uvloop
    assert not config(["--no-uvloop"], {"AGENTCAST_UVLOOP": "1"}).uvloop  # the flag wins
    assert not config(["--backend", "trio"]).uvloop
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    assert not config([]).uvloop  # not installed: the standard loop, no error
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        config(["--uvloop"])


def _serve_help(environ):
    parser = build_parser(environ)
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return " ".join(serve.format_help().split())


def test_help_shows_every_default_but_no_secret(capsys, monkeypatch):
    monkeypatch.setenv("AGENTCAST_API_KEY", "do-not-print-me")
    monkeypatch.setenv("AGENTCAST_TOKEN", "tok=user")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(default: 127.0.0.1)",
        "(default: 3000)",
        "(default: /ws)",
        "(default: asyncio)",
        "(default: dev)",
        "(default: 30.0)",
        "(default: 60.0)",
        "(default: 5.0)",
        "(default: 65536)",
        "(default: 1048576)",
        "(default: 20.0)",
        "(default: 40)",
        "(default: 10.0)",
        "(default: info)",
        "(default: text)",
    ):
        assert shown in text
    assert "do-not-print-me" not in text
    assert "tok=user" not in text


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--auth", "static"], {}, "needs at least one --token"),
        (["--token", "a=b"], {}, "--token is for --auth static"),
        (["--tls-cert", "x.pem"], {}, "go together"),
        (["--heartbeat-interval", "0"], {}, "heartbeat_interval must be positive"),
        (["--uvloop", "--backend", "trio"], {}, "--uvloop needs --backend asyncio"),
    ],
)
def test_inconsistent_configuration_is_refused(argv, environ, message):
    with pytest.raises(ConfigError, match=message):
        config(argv, environ)


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--port", "70000"], {}),
        (["--backend", "twisted"], {}),
        ([], {"AGENTCAST_BACKEND": "twisted"}),
        ([], {"AGENTCAST_PORT": "many"}),
    ],
)
def test_bad_values_exit_with_status_2(argv, environ, monkeypatch, capsys):
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    try:  # argparse exits for a flag; a bad variable is reported by main
        status = main(["serve", *argv])
    except SystemExit as exit_info:
        status = exit_info.code
    assert status == 2
    assert "error" in capsys.readouterr().err


def test_a_bad_boolean_in_the_environment_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("AGENTCAST_UVLOOP", "maybe")
    assert main(["serve"]) == 2
    assert "AGENTCAST_UVLOOP" in capsys.readouterr().err


# -- the server as a process --------------------------------------------------------------


def test_a_port_in_use_exits_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "agentcast.adapters", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "cannot serve on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_sigterm_closes_clients_with_1001_and_exits_0(spawn_server, clients, wait_for):
    drain = 2.0
    process = await spawn_server("--drain-timeout", str(drain))
    polite = await clients.connect(f"{process.url}?token=polite")
    deaf = await clients.connect(f"{process.url}?token=deaf")
    await polite.recv_until("user_presence")
    assert (await deaf.recv())["type"] == "auth"
    await deaf.pause_reading()  # will never answer the close frame
    process.process.send_signal(signal.SIGTERM)
    assert await polite.closed_by_server() == (1001, "server shutting down")
    with anyio.fail_after(drain + 5):
        assert await process.process.wait() == 0
    await deaf.resume_reading()
    assert await deaf.closed_by_server() == (1001, "server shutting down")
    await wait_for(lambda: "stopped" in process.output)
    assert "code=1001" in process.output
    assert "drain timeout" in process.output  # the deaf one was waited for, then dropped


@pytest.mark.anyio
async def test_curl_watches_the_event_stream_until_sigterm_ends_it(spawn_server):
    """The README's quick start: `curl -N .../events?token=abc123` prints the session,
    and a shutdown ends the stream with the close event (curl exits 0: a clean end)."""
    process = await spawn_server()
    url = f"{process.http_base}/events?token=abc123"
    curl = await anyio.open_process(["curl", "-N", "-sS", url], stdout=subprocess.PIPE)
    assert curl.stdout is not None
    output = b""
    with anyio.fail_after(10):
        while b"event: user_presence" not in output:
            output += await curl.stdout.receive()
        assert b'data: {"type":"auth","data":{"success":true,"userId":"user_abc123"}' in output
        process.process.send_signal(signal.SIGTERM)
        async for chunk in curl.stdout:
            output += chunk
        assert await curl.wait() == 0
    assert output.endswith(
        b'event: close\ndata: {"type":"close","data":{"code":1001,'
        b'"reason":"server shutting down"}}\n\n'
    )
    with anyio.fail_after(10):
        assert await process.process.wait() == 0


@pytest.mark.anyio
async def test_sigint_with_no_clients_exits_0_at_once(spawn_server):
    process = await spawn_server("--log-format", "json")
    process.process.send_signal(signal.SIGINT)
    with anyio.fail_after(10):
        assert await process.process.wait() == 0
    logged = [json.loads(line) for line in process.lines if line.startswith("{")]
    assert any("DEVELOPMENT authentication" in r["message"] for r in logged)
    assert any("loopback clients only" in r["message"] for r in logged)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the server runs on uvloop either way
async def test_uvloop_serves_a_client(spawn_server, clients):
    process = await spawn_server("--backend", "asyncio", "--uvloop")
    assert "backend=asyncio+uvloop" in process.output
    peer = await clients.connect(f"{process.url}?token=fast")
    assert (await peer.recv())["data"] == {"success": True, "userId": "user_fast"}
    await peer.send({"type": "ping"})
    assert (await peer.recv_until("pong"))["type"] == "pong"


@pytest.mark.anyio
async def test_readme_command_serves_healthz(spawn_server, http_request, anyio_backend):
    process = await spawn_server(
        command=["bash", "scripts/serve", "--port", "0", "--backend", anyio_backend]
    )
    status, _, body = await http_request(process.http_base + "/healthz")
    assert status == 200
    assert json.loads(body) == {
        "status": "ok",
        "clients": 0,
        "authenticated": 0,
        "unauthenticated": 0,
    }
    process.process.send_signal(signal.SIGTERM)
    with anyio.fail_after(10):
        assert await process.process.wait() == 0


def test_the_event_stream_is_configured_like_the_websocket_endpoint():
    c = config(["--events-path", "/stream", "--events-retry", "1.5"])
    assert (c.settings.events_path, c.settings.events_retry) == ("/stream", 1.5)
    assert config([], {"AGENTCAST_EVENTS_PATH": "/sse"}).settings.events_path == "/sse"
    assert config([]).settings.events_path == "/events"
    with pytest.raises(ConfigError, match="events_path and path must differ"):
        config(["--path", "/live", "--events-path", "/live"])
