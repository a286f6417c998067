"""agentcast adapters: what moves bytes and time in and out of the Sans-IO core.

* :class:`Service` (:mod:`.service`): the seed's ``wsManager``, whatever the transport:
  hub, authenticator, metrics, the in-process publishing API, the presence timer and the
  live connections. Every adapter below serves one;
* :class:`Server` (:mod:`.server`): the anyio reference server (asyncio, uvloop or trio):
  listening sockets, TLS, signals, drain;
* :mod:`agentcast.adapters.asgi`: the ASGI application (uvicorn, hypercorn, Starlette,
  FastAPI) over the same service;
* :class:`Metrics`: the Prometheus metrics (``GET /metrics``); :func:`configure_logging`:
  text or JSON logs;
* ``agentcast serve`` / ``python -m agentcast.adapters serve``: :mod:`.cli`, configured
  by :mod:`.options` (every flag and ``AGENTCAST_*`` variable) and :mod:`.config`.

A Redis backplane, for several processes behind one load balancer, is not here yet; it
will plug into :class:`Service` (see its module doc).
"""

from .logs import configure_logging
from .metrics import Metrics
from .server import Server
from .service import Service

__all__ = ["Metrics", "Server", "Service", "configure_logging"]
