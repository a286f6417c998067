"""agentcast.d.ts, checked by the TypeScript compiler: a usage file it must accept (and
lines it must refuse), and the React hook of docs/browser.md, taken from the doc itself so
the example cannot rot. Needs node and npm (tests/types installs TypeScript on first use)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import REPO, STATIC

TYPES = REPO / "tests" / "types"


@pytest.fixture(scope="module")
def tsc() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required to check agentcast.d.ts (tests/types)")
    compiler = TYPES / "node_modules" / "typescript" / "bin" / "tsc"
    if not compiler.is_file():
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=TYPES,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm install in {TYPES} failed:\n{result.stdout}\n{result.stderr}")
    return str(compiler)


def react_hook() -> str:
    doc = (REPO / "docs" / "browser.md").read_text()
    blocks = re.findall(r"```tsx\n(.*?)```", doc, re.DOTALL)
    assert len(blocks) == 1, "docs/browser.md has one tsx example: the React hook"
    return blocks[0]


def test_the_declarations_and_the_documented_react_hook_compile(tsc):
    check = TYPES / "check"
    shutil.rmtree(check, ignore_errors=True)
    check.mkdir()
    shutil.copy(STATIC / "agentcast.d.ts", check / "agentcast.d.ts")
    shutil.copy(TYPES / "usage.ts", check / "usage.ts")
    (check / "hook.tsx").write_text(react_hook())
    result = subprocess.run(
        [shutil.which("node") or "node", tsc, "-p", str(TYPES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
