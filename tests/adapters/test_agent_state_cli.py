"""The ``agent_state`` snapshot's limits from the command line: ``--agent-state-ttl`` and
``--agent-state-max`` (and their ``AGENTCAST_*`` variables)."""

from __future__ import annotations

from agentcast.adapters.cli import build_config, build_parser
from agentcast.protocol import Settings


def settings(*argv: str, environ: dict[str, str] | None = None) -> Settings:
    return build_config(build_parser(environ or {}).parse_args(["serve", *argv])).settings


def test_the_defaults_are_a_day_and_ten_thousand():
    assert (settings().agent_state_ttl, settings().agent_state_max) == (86400.0, 10_000)


def test_the_flags_and_the_variables_set_them():
    chosen = settings("--agent-state-ttl", "3600", "--agent-state-max", "500")
    assert (chosen.agent_state_ttl, chosen.agent_state_max) == (3600.0, 500)
    environ = {"AGENTCAST_AGENT_STATE_TTL": "60", "AGENTCAST_AGENT_STATE_MAX": "7"}
    from_env = settings(environ=environ)
    assert (from_env.agent_state_ttl, from_env.agent_state_max) == (60.0, 7)
