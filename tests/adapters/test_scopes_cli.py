"""Scoped delivery from the command line: ``--jwt-channels-claim``, ``--max-subscriptions``
and ``agentcast token --channel``."""

from __future__ import annotations

import time

import jwt

from agentcast.adapters.cli import build_config, build_parser, main
from agentcast.protocol import Identity
from agentcast.protocol.scope import NO_CHANNELS

SECRET = "cli-scopes-secret-0123456789abcdef-xyz"


def config(*argv: str):
    return build_config(build_parser({}).parse_args(["serve", *argv]))


def test_max_subscriptions_flag():
    assert config().settings.max_subscriptions == 100
    assert config("--max-subscriptions", "5").settings.max_subscriptions == 5


def test_token_channels_and_the_claim_name(capsys):
    assert main(["token", "--sub", "alice", "--jwt-secret", SECRET, "--channel", "team-*"]) == 0
    tok = capsys.readouterr().out.strip()
    assert jwt.decode(tok, options={"verify_signature": False})["channels"] == ["team-*"]

    default = config("--auth", "jwt", "--jwt-secret", SECRET).authenticator
    identity = default.authenticate(tok, time.time())
    assert isinstance(identity, Identity)
    assert identity.channels.allows("team-1")
    assert not identity.channels.allows("other")

    renamed = config(
        "--auth", "jwt", "--jwt-secret", SECRET, "--jwt-channels-claim", "rooms"
    ).authenticator
    identity = renamed.authenticate(tok, time.time())
    assert isinstance(identity, Identity)
    assert identity.channels == NO_CHANNELS  # the token has no "rooms" claim


def test_token_without_channel_has_no_claim(capsys):
    assert main(["token", "--sub", "alice", "--jwt-secret", SECRET]) == 0
    tok = capsys.readouterr().out.strip()
    assert "channels" not in jwt.decode(tok, options={"verify_signature": False})


def test_token_refuses_a_bad_pattern(capsys):
    assert main(["token", "--sub", "a", "--jwt-secret", SECRET, "--channel", "no spaces"]) == 2
    assert "not a channel or a pattern" in capsys.readouterr().err
