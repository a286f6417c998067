"""agentcast.d.ts, checked by the TypeScript compiler: a usage file it must accept (and
lines it must refuse), and the React hook of docs/browser.md, taken from the doc itself so
the example cannot rot."""

from __future__ import annotations

import re
import shutil
import subprocess

from .conftest import REPO, STATIC


def react_hook() -> str:
    doc = (REPO / "docs" / "browser.md").read_text()
    blocks = re.findall(r"```tsx\n(.*?)```", doc, re.DOTALL)
    assert len(blocks) == 1, "docs/browser.md has one tsx example: the React hook"
    return blocks[0]


def test_the_declarations_and_the_documented_react_hook_compile(js_tools):
    check = js_tools / "check"
    shutil.rmtree(check, ignore_errors=True)
    check.mkdir()
    shutil.copy(STATIC / "agentcast.d.ts", check / "agentcast.d.ts")
    shutil.copy(js_tools / "usage.ts", check / "usage.ts")
    (check / "hook.tsx").write_text(react_hook())
    tsc = js_tools / "node_modules" / "typescript" / "bin" / "tsc"
    result = subprocess.run(
        [shutil.which("node") or "node", str(tsc), "-p", str(js_tools)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
