"""docs/protocol.md keeps up with the code: every message type the core sends or accepts,
every error code, every close code and every publish API field is documented there.

The lists come from the code itself (the core's sources and its constants), never from a
copy in this test, so a new type or code without documentation fails here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import agentcast.protocol
from agentcast.protocol import CloseCode, ErrorCode, decode_client_message
from agentcast.protocol.http import PUBLISH_PATHS
from agentcast.protocol.messages import BROADCAST_TYPES, SERVER_ONLY_TYPES, MessageError
from agentcast.protocol.routing import _FIXED, STATIC_PATHS, Route

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "protocol.md"
PROTOCOL_DIR = Path(agentcast.protocol.__file__).parent

#: Functions whose first argument, a string literal, is the type of a server message.
_SENDERS = {"_send", "build", "encode_server_message"}


def _sources() -> list[ast.Module]:
    return [ast.parse(path.read_text()) for path in sorted(PROTOCOL_DIR.glob("*.py"))]


def server_types() -> set[str]:
    """Every type the core sends: the literal types of its send calls, and the types it
    declares server-only or broadcast."""
    found: set[str] = set(SERVER_ONLY_TYPES) | set(BROADCAST_TYPES)
    for tree in _sources():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in _SENDERS and isinstance(first, ast.Constant):
                found.add(first.value)
    return found


def client_types() -> set[str]:
    """Every type the client message decoder accepts: the literals it compares the
    message's ``type`` with."""
    tree = ast.parse((PROTOCOL_DIR / "messages.py").read_text())
    [decoder] = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "decode_client_message"
    ]
    found = set()
    for node in ast.walk(decoder):
        if (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Name)
            and node.left.id == "kind"
            and isinstance(node.ops[0], ast.Eq)
            and isinstance(node.comparators[0], ast.Constant)
        ):
            found.add(node.comparators[0].value)
    return found


def reference() -> str:
    return REFERENCE.read_text()


def headings() -> dict[str, str]:
    """``### `type` (direction)`` headings: type -> the heading's text."""
    found = {}
    for line in reference().splitlines():
        match = re.match(r"### `([a-z_]+)`(.*)$", line)
        if match:
            found[match[1]] = match[2]
    return found


def table_keys() -> set[str]:
    """The first cell of every table row, without its backticks."""
    keys = set()
    for line in reference().splitlines():
        match = re.match(r"\|\s*`([^`]+)`", line)
        if match:
            keys.add(match[1])
    return keys


def test_the_code_lists_are_found():
    # The derivations above must see the core's real types, or the next tests prove nothing.
    assert {"auth", "ping", "pong", "error", "agent_status", "presence_state"} <= server_types()
    assert {"ping", "pong", "user_presence", "auth"} <= client_types()
    for kind in client_types():
        decoded = decode_client_message(json.dumps({"type": kind, "data": "away"}))
        assert not (isinstance(decoded, MessageError) and decoded.code is ErrorCode.UNKNOWN_TYPE)


@pytest.mark.parametrize("kind", sorted(server_types()))
def test_every_server_message_type_is_documented(kind):
    assert kind in headings(), f"docs/protocol.md has no '### `{kind}`' section"
    direction = headings()[kind]
    assert "server → client" in direction or "both directions" in direction, direction


@pytest.mark.parametrize("kind", sorted(client_types()))
def test_every_client_message_type_is_documented(kind):
    assert kind in headings(), f"docs/protocol.md has no '### `{kind}`' section"
    direction = headings()[kind]
    assert "client → server" in direction or "both directions" in direction, direction
    assert f'{{"type":"{kind}"' in reference()  # and the table of client messages shows it


@pytest.mark.parametrize("code", [c.value for c in ErrorCode])
def test_every_error_code_is_documented(code):
    assert code in table_keys(), f"docs/protocol.md has no table row for error code {code}"


@pytest.mark.parametrize("code", sorted(int(code) for code in CloseCode))
def test_every_close_code_is_documented(code):
    assert str(code) in table_keys(), f"docs/protocol.md has no table row for close code {code}"


@pytest.mark.parametrize("path", sorted(PUBLISH_PATHS))
def test_every_publish_path_and_field_is_documented(path):
    [row] = [line for line in reference().splitlines() if line.startswith(f"| `{path}` |")]
    for field in PUBLISH_PATHS[path]._FIELDS:
        assert f"`{field}`" in row, f"{path}: field {field} is not documented"


#: Every fixed path the router knows besides the publish API, with its method.
PLAIN_ROUTES = sorted(
    (method, path)
    for path, (target, method) in _FIXED.items()
    if target not in (Route.PUBLISH, Route.STATIC)
)


def test_the_router_has_plain_routes():
    assert ("GET", "/healthz") in PLAIN_ROUTES


@pytest.mark.parametrize(("method", "path"), PLAIN_ROUTES)
def test_every_plain_http_route_is_documented(method, path):
    assert f"### `{method} {path}`" in reference()


def test_every_file_of_the_dashboard_is_documented():
    section = reference().partition("### The dashboard: `GET /`")[2].partition("\n#")[0]
    assert section, "docs/protocol.md has a section on the dashboard's files"
    for path in STATIC_PATHS:
        assert f"`{path}`" in section, path


def test_every_json_example_is_valid_and_uses_known_types():
    blocks = re.findall(r"```json\n(.*?)```", reference(), re.S)
    assert len(blocks) >= 10
    known = server_types() | client_types()
    for block in blocks:
        example = json.loads(block)
        if "type" in example:
            assert example["type"] in known, example


def test_client_examples_are_accepted_by_the_core():
    # The client messages of the table in section 5 decode as messages, not errors.
    rows = re.findall(r'^\| `(\{"type":"[a-z_]+"[^`]*\})`', reference(), re.M)
    assert len(rows) == len(client_types())
    for row in rows:
        message = decode_client_message(row.replace("…", "t0ken"))
        assert not isinstance(message, MessageError), (row, message)
