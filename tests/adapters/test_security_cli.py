"""`agentcast serve` security flags and `agentcast token`: flags, environment,
defaults, errors that never print a secret, and a JWT-protected server from the CLI."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from agentcast.adapters import cli
from agentcast.adapters.cli import ConfigError, build_config, build_parser, main, parse_duration
from agentcast.adapters.jwt_keyfile import DEFAULT_RELOAD_INTERVAL
from agentcast.protocol.jwt_auth import DEFAULT_LEEWAY, JwtAuthenticator

SECRET = "cli-test-secret-0123456789abcdef-xyz"

SECURITY_FLAGS = [
    "--jwt-secret",
    "--jwt-public-key",
    "--jwt-jwks",
    "--jwt-algorithms",
    "--jwt-issuer",
    "--jwt-audience",
    "--jwt-leeway",
    "--jwt-user-claim",
    "--jwt-channels-claim",
    "--jwt-reload-interval",
    "--require-auth",
    "--allowed-origin",
    "--max-connections",
    "--max-connections-per-ip",
    "--max-connections-per-user",
    "--max-unauthenticated-connections",
    "--connection-rate",
    "--handshake-timeout",
    "--unauthenticated-timeout",
    "--max-header-size",
    "--max-pending-body-bytes",
    "--max-message-frames",
    "--presence-interval",
    "--presence-window",
]


def config(argv, environ=None):
    return build_config(build_parser(environ or {}).parse_args(["serve", *argv]))


def serve_help(environ):
    parser = build_parser(environ)
    serve = parser._subparsers._group_actions[0].choices["serve"]
    return " ".join(serve.format_help().split())


def token_from_cli(capsys, *argv):
    assert main(["token", *argv]) == 0
    return capsys.readouterr().out.strip()


# -- serve --------------------------------------------------------------------------------


def test_security_defaults():
    s = config([]).settings
    assert s.require_auth is False
    assert s.allowed_origins is None
    assert (s.max_connections, s.max_connections_per_ip, s.max_connections_per_user) == (
        10_000,
        500,
        32,
    )
    assert s.connection_rate == 500.0
    assert (s.handshake_timeout, s.unauthenticated_timeout) == (10.0, 30.0)
    assert s.max_header_size == 16 * 1024
    assert (s.max_unauthenticated_connections, s.max_pending_body_bytes) == (1000, 16 << 20)
    assert (s.max_message_frames, s.presence_interval) == (1024, 1.0)
    assert s.presence_window == 0.25
    assert config(["--presence-window", "0"]).settings.presence_window == 0
    # The CLI's copies of the JWT defaults are the modules' own.
    assert cli.DEFAULT_JWT_LEEWAY == DEFAULT_LEEWAY
    assert cli.DEFAULT_JWT_RELOAD_INTERVAL == DEFAULT_RELOAD_INTERVAL


def test_every_security_flag_is_in_help_with_its_variable_and_default():
    text = serve_help({})
    for flag in SECURITY_FLAGS:
        assert flag in text
        assert f"AGENTCAST_{flag[2:].upper().replace('-', '_')}" in text
    for shown in (
        "(default: 10000)",
        "(default: 500)",
        "(default: 32)",
        "(default: 500.0)",
        "(default: 30.0)",
        "(default: 16384)",
        "(default: sub)",
        "(default: any origin, for development)",
        "(default: every algorithm the key can verify)",
        "(0: unlimited)",
    ):
        assert shown in text


def test_environment_and_command_line_and_zero_is_unlimited():
    environ = {
        "AGENTCAST_MAX_CONNECTIONS": "0",
        "AGENTCAST_MAX_CONNECTIONS_PER_IP": "0",
        "AGENTCAST_MAX_CONNECTIONS_PER_USER": "3",
        "AGENTCAST_CONNECTION_RATE": "0",
        "AGENTCAST_UNAUTHENTICATED_TIMEOUT": "0",
        "AGENTCAST_HANDSHAKE_TIMEOUT": "2.5",
        "AGENTCAST_MAX_HEADER_SIZE": "8192",
        "AGENTCAST_REQUIRE_AUTH": "yes",
        "AGENTCAST_ALLOWED_ORIGIN": "https://app.example.com, https://*.example.org",
    }
    s = config([], environ).settings
    assert (s.max_connections, s.max_connections_per_ip, s.max_connections_per_user) == (
        None,
        None,
        3,
    )
    assert (s.connection_rate, s.unauthenticated_timeout) == (None, None)
    assert (s.handshake_timeout, s.max_header_size, s.require_auth) == (2.5, 8192, True)
    assert s.allowed_origins == ("https://app.example.com", "https://*.example.org")

    s = config(
        [
            "--max-connections-per-ip",
            "100",
            "--connection-rate",
            "50",
            "--allowed-origin",
            "https://one.example",
            "--allowed-origin",
            "https://two.example",
        ],
        environ,
    ).settings
    assert (s.max_connections_per_ip, s.connection_rate) == (100, 50.0)
    assert s.allowed_origins == ("https://one.example", "https://two.example")  # replaced


def test_repeatable_flags_do_not_share_their_command_line_state():
    environ = {"AGENTCAST_ALLOWED_ORIGIN": "https://env.example", "AGENTCAST_AUTH": "static"}
    c = config(["--token", "t=u", "--allowed-origin", "https://cli.example"], environ)
    assert c.settings.allowed_origins == ("https://cli.example",)


def test_jwt_secret_from_the_environment_verifies_agentcast_tokens(capsys, monkeypatch):
    environ = {
        "AGENTCAST_AUTH": "jwt",
        "AGENTCAST_JWT_SECRET": SECRET,
        "AGENTCAST_JWT_ISSUER": "https://id.example",
        "AGENTCAST_JWT_AUDIENCE": "agentcast,other",
    }
    c = config([], environ)
    assert isinstance(c.authenticator, JwtAuthenticator)
    assert c.jwt_key_file is None
    assert c.auth_description == "a secret (1 key, algorithms HS256)"
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    tok = token_from_cli(capsys, "--sub", "user_1", "--ttl", "15m")
    claims = jwt.decode(tok, options={"verify_signature": False})
    assert claims["sub"] == "user_1"
    assert claims["exp"] - claims["iat"] in (900, 901)  # whole seconds, rounded outwards
    assert abs(claims["iat"] - time.time()) < 60
    assert (claims["iss"], claims["aud"]) == ("https://id.example", "agentcast")
    result = c.authenticator.authenticate(tok, time.time())
    assert result.user_id == "user_1"
    # ... and the server refuses a token for another audience.
    tok = token_from_cli(capsys, "--sub", "user_1", "--audience", "elsewhere")
    assert c.authenticator.authenticate(tok, time.time()).reason == "invalid audience"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172800), ("90", 90), ("1.5H", 5400)],
)
def test_token_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "0", "1w", "soon", "nan", "inf"])
def test_bad_durations(text):
    with pytest.raises(Exception, match="not a duration"):
        parse_duration(text)


def test_token_algorithms_and_errors(capsys, monkeypatch):
    monkeypatch.delenv("AGENTCAST_JWT_SECRET", raising=False)
    assert main(["token", "--sub", "a"]) == 2
    assert "no secret" in capsys.readouterr().err
    long_secret = "s" * 64
    tok = token_from_cli(capsys, "--sub", "a", "--jwt-secret", long_secret, "--algorithm", "HS512")
    assert jwt.get_unverified_header(tok)["alg"] == "HS512"
    assert main(["token", "--sub", "a", "--jwt-secret", SECRET, "--algorithm", "HS512"]) == 2
    err = capsys.readouterr().err
    assert "HS512 needs a secret of 64 bytes" in err
    assert SECRET not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth", "jwt"], "exactly one of --jwt-secret"),
        (["--auth", "jwt", "--jwt-secret", SECRET, "--jwt-jwks", "x.json"], "exactly one"),
        (["--jwt-secret", SECRET], "--jwt-secret is for --auth jwt"),
        (["--jwt-issuer", "me"], "--jwt-issuer is for --auth jwt"),
        (["--auth", "jwt", "--jwt-secret", "short"], "at least 32 bytes"),
        (["--auth", "jwt", "--jwt-secret", SECRET, "--jwt-algorithms", "RS256"], "public key"),
        (["--auth", "jwt", "--jwt-secret", SECRET, "--jwt-algorithms", "none"], '"none"'),
        (["--auth", "jwt", "--jwt-jwks", "/nonexistent/jwks.json"], "cannot read"),
        (["--allowed-origin", "example.com"], "not an origin pattern"),
        (["--handshake-timeout", "0"], "handshake_timeout must be positive"),
    ],
)
def test_inconsistent_security_configuration_is_refused(argv, message):
    with pytest.raises(ConfigError, match=message) as error:
        config(argv)
    assert SECRET not in str(error.value)


def test_a_public_key_file_refuses_hmac_algorithms(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "key.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    base = ["--auth", "jwt", "--jwt-public-key", str(path)]
    c = config(base)
    assert c.jwt_key_file is not None
    assert "public key file" in c.auth_description
    assert "algorithms ES256" in c.auth_description
    with pytest.raises(ConfigError, match="algorithm confusion"):
        config([*base, "--jwt-algorithms", "HS256,ES256"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-connections", "-1"],
        ["--connection-rate", "-5"],
        ["--unauthenticated-timeout", "soon"],
        ["--auth", "oauth"],
    ],
)
def test_bad_limits_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *argv])
    assert exit_info.value.code == 2


def test_help_never_shows_the_jwt_secret(capsys, monkeypatch):
    monkeypatch.setenv("AGENTCAST_JWT_SECRET", SECRET)
    for command in ("serve", "token"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert SECRET not in out
        assert "from the environment" in out


# -- a JWT server from the command line ------------------------------------------------------


@pytest.mark.anyio
async def test_serve_with_jwt_and_require_auth(spawn_server, clients, capsys, monkeypatch):
    process = await spawn_server(
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--require-auth",
        "--allowed-origin",
        "https://app.example.com",
        "--log-format",
        "json",
    )
    tok = token_from_cli(capsys, "--sub", "user_1", "--ttl", "1h", "--jwt-secret", SECRET)
    peer = await clients.connect(f"{process.url}?token={tok}", origin="https://app.example.com")
    assert (await peer.recv())["data"] == {"success": True, "userId": "user_1"}
    with pytest.raises(InvalidStatus) as refusal:
        await clients.connect(f"{process.url}?token=garbage")
    assert refusal.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as refusal:
        await clients.connect(f"{process.url}?token={tok}", origin="https://evil.example")
    assert refusal.value.response.status_code == 403
    logged = [json.loads(line)["message"] for line in process.lines if line.startswith("{")]
    assert any("auth=jwt, require-auth" in m for m in logged)
    assert any(m.startswith("JWT authentication with a secret") for m in logged)
    assert not any("ANY Origin" in m for m in logged)  # an allow-list is configured
    assert SECRET not in process.output
    assert tok not in process.output
