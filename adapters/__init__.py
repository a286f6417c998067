"""agentcast adapters: the anyio reference server (and later ASGI, Redis).

* :class:`Server`: the server object user code holds (the seed's ``wsManager``): the
  in-process publishing API, ``serve()``/``run()`` on asyncio, uvloop or trio;
* :class:`Metrics`: its Prometheus metrics (``GET /metrics``);
* :func:`configure_logging`: text or JSON logs;
* ``agentcast serve`` / ``python -m agentcast.adapters serve``: :mod:`agentcast.adapters.cli`.
"""

from .logs import configure_logging
from .metrics import Metrics
from .server import Server

__all__ = ["Metrics", "Server", "configure_logging"]
