"""What `agentcast` says when something is wrong, and the small things a user looks for:
errors that name what the user typed (the flag or the variable), the subcommand's usage
for a typo, `--version`, and log lines in plain English."""

from __future__ import annotations

import json
import signal

import anyio
import pytest

from agentcast.adapters.cli import build_parser, main, version


def run(capsys, argv, monkeypatch=None, **environ):
    if monkeypatch is not None:
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse exits
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def test_a_bad_flag_value_says_what_was_expected(capsys):
    status, _, err = run(capsys, ["serve", "--port", "abc"])
    assert status == 2
    assert "agentcast serve: error: argument --port: 'abc' is not a port number (0-65535)" in err
    assert "_port" not in err
    assert "invalid" not in err  # not argparse's "invalid port value"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--heartbeat-interval", "soon", "'soon' is not a number"),
        ("--max-message-size", "64k", "'64k' is not a whole number"),
        ("--max-connections", "-1", "'-1' is not a whole number of 0 or more (0: unlimited)"),
        ("--connection-rate", "fast", "'fast' is not a non-negative number (0: no limit)"),
        ("--backend", "tokio", "'tokio' is not one of asyncio, trio"),
    ],
)
def test_the_environment_variable_is_named_when_its_value_is_bad(
    capsys, monkeypatch, flag, value, message
):
    variable = "AGENTCAST_" + flag[2:].upper().replace("-", "_")
    status, _, err = run(capsys, ["serve"], monkeypatch, **{variable: value})
    assert status == 2
    assert err.strip() == f"agentcast: error: {variable}: {message}"  # one line, no usage
    assert flag not in err  # the user never typed the flag
    # The same value on the command line is reported under the flag.
    monkeypatch.delenv(variable)
    status, _, err = run(capsys, ["serve", flag, value])
    assert (status, f"argument {flag}: {message}" in err) == (2, True)


def test_the_command_line_wins_over_a_bad_variable():
    args = build_parser({"AGENTCAST_PORT": "abc"}).parse_args(["serve", "--port", "5000"])
    assert args.port == 5000


def test_a_typo_under_serve_gets_serves_usage_and_a_suggestion(capsys):
    status, _, err = run(capsys, ["serve", "--prot", "3001"])
    assert status == 2
    assert err.startswith("usage: agentcast serve")
    assert (
        "agentcast serve: error: unrecognized arguments: --prot 3001 (did you mean --port?)" in err
    )


def test_a_typo_under_token_gets_tokens_usage(capsys):
    status, _, err = run(capsys, ["token", "--sub", "u", "--tll", "1h"])
    assert status == 2
    assert err.startswith("usage: agentcast token")
    assert "(did you mean --ttl?)" in err


def test_version(capsys):
    status, out, _ = run(capsys, ["--version"])
    assert status == 0
    assert out.strip() == f"agentcast {version()}"
    assert version()[0].isdigit()  # installed: the package's version, not "unknown"


@pytest.mark.anyio
async def test_shutdown_says_1_connection_not_1_connections(spawn_server, clients):
    process = await spawn_server("--log-format", "json")
    peer = await clients.connect(f"{process.url}?token=one")
    await peer.recv_until("user_presence")
    process.process.send_signal(signal.SIGINT)
    with anyio.fail_after(20):
        assert await process.process.wait() == 0
    messages = [json.loads(line)["message"] for line in process.lines if line.startswith("{")]
    assert "shutting down: closing 1 connection" in messages
    assert not any("1 connections" in m for m in messages)
