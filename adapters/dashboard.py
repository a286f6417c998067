"""The dashboard's files, read from the package (``agentcast/adapters/static/``).

:class:`StaticFiles` reads each file once, on its first request, with
:mod:`importlib.resources` (so it works from a wheel, a zip or a checkout), and leaves
every decision to the core: which paths exist (:data:`~agentcast.protocol.routing.STATIC_PATHS`,
:func:`~agentcast.protocol.route`), the endpoint written into the page
(:func:`~agentcast.protocol.static.dashboard_page`), and the answer with its cache
headers (:func:`~agentcast.protocol.static.static_answer`).
"""

from __future__ import annotations

from importlib import resources

from agentcast.protocol import HttpAnswer, Settings
from agentcast.protocol.routing import STATIC_PATHS
from agentcast.protocol.static import StaticFile, dashboard_page, static_answer

__all__ = ["StaticFiles", "read_static"]


def read_static(name: str) -> bytes:
    """The bytes of the packaged file *name* (``agentcast.js``)."""
    return resources.files("agentcast.adapters").joinpath("static", name).read_bytes()


class StaticFiles:
    """The dashboard's files for one service's *settings*, each read once."""

    __slots__ = ("_files", "_settings")

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._files: dict[str, StaticFile] = {}

    def file(self, path: str) -> StaticFile:
        """The file served at *path* (one of ``STATIC_PATHS``)."""
        found = self._files.get(path)
        if found is None:
            name = STATIC_PATHS[path]
            body = read_static(name)
            if path == "/":
                body = dashboard_page(body, self._settings)
            found = self._files[path] = StaticFile.of(name, body)
        return found

    def answer(self, method: str, path: str, if_none_match: str | None) -> HttpAnswer:
        """The answer to a request the core routed to ``Route.STATIC``."""
        return static_answer(method, if_none_match, self.file(path))
