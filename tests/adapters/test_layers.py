"""The adapters' modules form layers: every module can be read (and imported) after the
ones it depends on, so no import cycle exists between them, not even one hidden under
``TYPE_CHECKING`` or inside a function. And no driver reaches into the reference server
or the ASGI application: each depends on the service alone."""

from __future__ import annotations

import ast
from pathlib import Path

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"


def _imports(path: Path) -> set[str]:
    """The adapters modules *path* imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
            elif (node.module or "").startswith("agentcast.adapters"):
                rest = (node.module or "").removeprefix("agentcast.adapters").lstrip(".")
                names = [rest] if rest else [a.name for a in node.names]
            else:
                continue
            found.update(name.split(".")[0] for name in names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("agentcast.adapters."):
                    found.add(alias.name.split(".")[2])
    modules = {p.stem for p in ADAPTERS.glob("*.py")}
    return (found & modules) - {path.stem}


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path) for path in ADAPTERS.glob("*.py")}


def test_no_import_cycle_between_the_adapters_modules():
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = " -> ".join([*path[path.index(module) :], module])
            raise AssertionError(f"import cycle: {cycle}")
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_drivers_and_the_service_know_no_transport_above_them():
    graph = _graph()
    above = {"server", "asgi", "cli", "config", "options"}
    drivers = ("_driver", "_asyncio_driver", "_socket_driver", "_stream_driver", "_asgi_driver")
    for module in ("service", *drivers):
        assert not graph[module] & above, (module, graph[module] & above)
