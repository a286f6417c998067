"""What an install brings: the Sans-IO core with only h11 and wsproto, and the reference
server with the base dependencies alone (`pip install agentcast` then `agentcast serve`).

Each test builds a bare virtual environment in a temporary directory (no pip, no network)
and links into it only the packages a given install would hold, taken from the current
environment, with the project's ``protocol/`` and ``adapters/`` as ``agentcast.protocol``
and ``agentcast.adapters``. Then it runs Python there.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import threading
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _closure(requirements: list[str]) -> set[str]:
    """The distributions *requirements* install, with their dependencies (no extras)."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        req = pending.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        pending += [Requirement(r) for r in importlib.metadata.requires(name) or []]
    return seen


def _top_level(distribution: str) -> set[Path]:
    """The top-level packages and modules of an installed *distribution*, as paths."""
    dist = importlib.metadata.distribution(distribution)
    found = set()
    for file in dist.files or ():
        first = file.parts[0]
        if first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        found.add(Path(str(dist.locate_file(first))))
    assert found, distribution
    return found


def _venv(tmp_path: Path, distributions: set[str], packages: tuple[str, ...]) -> Path:
    """A bare venv holding *distributions* (linked from this environment) and the
    project's *packages* (``protocol``, ``adapters``) under ``agentcast``; its python."""
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    site_packages = Path(site)
    for name in distributions:
        for path in _top_level(name):
            (site_packages / path.name).symlink_to(path)
    (site_packages / "agentcast").mkdir()
    for package in packages:
        (site_packages / "agentcast" / package).symlink_to(ROOT / package)
    return python


def _isolated_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AGENTCAST_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _base_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def test_the_core_imports_with_only_h11_and_wsproto(tmp_path):
    python = _venv(tmp_path, _closure(["h11", "wsproto"]), ("protocol",))
    code = """
import importlib.util, sys
import agentcast.protocol
from agentcast.protocol import Hub, ServerConnection, Settings
hub = Hub(Settings())
conn = ServerConnection(hub, now=0.0, client="127.0.0.1")
conn.receive_data(b"GET /healthz HTTP/1.1\\r\\nhost: x\\r\\n\\r\\n", now=0.0, wall=0.0)
print([type(e).__name__ for e in conn.events_received()])
print(sorted(m for m in ("anyio", "prometheus_client", "uvloop", "trio", "jwt")
             if importlib.util.find_spec(m) is not None))
"""
    result = subprocess.run(
        [python, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=_isolated_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events, importable = result.stdout.splitlines()
    assert events == "['HttpRequest']"  # the core works, not just imports
    assert importable == "[]"  # and nothing beyond h11 and wsproto was there to help it


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with what `pip install agentcast` installs (no extras); its python."""
    distributions = _closure(_base_dependencies())
    assert {"anyio", "prometheus-client", "h11", "wsproto"} <= distributions
    assert not {"trio", "pyjwt", "uvicorn"} & distributions
    return _venv(tmp_path_factory.mktemp("base"), distributions, ("protocol", "adapters"))


def test_the_base_install_runs_the_reference_server(base_install, tmp_path):
    """`pip install agentcast` (no extras) is enough for `agentcast serve`."""
    python = base_install
    process = subprocess.Popen(
        [python, "-m", "agentcast.adapters", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_isolated_env(),
        cwd=tmp_path,
    )
    watchdog = threading.Timer(60, process.kill)  # a hung server fails the test, not the run
    watchdog.start()
    try:
        assert process.stdout is not None
        output = []
        for line in process.stdout:
            output.append(line)
            if "listening on ws://" in line:
                break
        else:
            pytest.fail("the server did not start:\n" + "".join(output))
        port = line.rsplit(":", 1)[1].split("/", 1)[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            assert json.load(reply) == {
                "status": "ok",
                "clients": 0,
                "authenticated": 0,
                "unauthenticated": 0,
            }
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        rest = process.stdout.read()
        assert "Traceback" not in "".join(output) + rest
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def _run(python: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, *args],
        check=False,
        capture_output=True,
        text=True,
        env={**_isolated_env(), **env},
        cwd=cwd,
        timeout=60,
    )


SECRET = "s" * 48
SERVE = ("-m", "agentcast.adapters", "serve", "--port", "0")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            (*SERVE, "--backend", "trio"),
            {},
            "agentcast serve: error: --backend trio needs trio: pip install 'agentcast[trio]'",
        ),
        (
            (*SERVE, "--auth", "jwt"),
            {"AGENTCAST_JWT_SECRET": SECRET},
            "agentcast serve: error: --auth jwt needs PyJWT: pip install 'agentcast[jwt]'",
        ),
        (
            ("-m", "agentcast.adapters", "token", "--sub", "user_1"),
            {"AGENTCAST_JWT_SECRET": SECRET},
            "agentcast token: error: needs PyJWT: pip install 'agentcast[jwt]'",
        ),
        (
            ("-c", "import agentcast.adapters.asgi as asgi; asgi.app"),
            {"AGENTCAST_AUTH": "jwt", "AGENTCAST_JWT_SECRET": SECRET},
            "agentcast: error: --auth jwt needs PyJWT: pip install 'agentcast[jwt]'",
        ),
    ],
    ids=["trio", "jwt", "token", "asgi-jwt"],
)
def test_a_missing_extra_is_one_line_naming_it(base_install, tmp_path, args, env, expected):
    result = _run(base_install, tmp_path, *args, **env)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [expected]  # one line, no traceback


def test_the_asgi_application_needs_no_extra(base_install, tmp_path):
    # The asgi extra brings an ASGI server (uvicorn); the application itself is plain.
    code = "from agentcast.adapters.asgi import create_app; print(type(create_app()).__name__)"
    result = _run(base_install, tmp_path, "-c", code)
    assert (result.returncode, result.stdout.strip()) == (0, "AgentcastASGI"), result.stderr
