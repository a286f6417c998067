"""The dashboard and the browser client travel in the wheel, byte for byte: a server
installed from it has every file ``GET /`` and ``/agentcast.js`` serve."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from agentcast.protocol.routing import STATIC_PATHS

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_every_file_of_the_dashboard(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("agentcast-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in STATIC_PATHS.values():
        packaged = f"agentcast/adapters/static/{name}"
        assert packaged in names, name
        source = (ROOT / "adapters" / "static" / name).read_bytes()
        assert zipfile.ZipFile(wheel).read(packaged) == source
