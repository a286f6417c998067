"""A FastAPI application with agentcast mounted in it, publishing agent status from an
ordinary HTTP route.

Run it from the repository root (``pip install 'agentcast[asgi]' fastapi`` first)::

    uvicorn examples.fastapi_app:app --ws-max-size 65536 --ws-per-message-deflate false

then connect a dashboard to ``ws://127.0.0.1:8000/realtime/ws?token=abc123`` (the
development authenticator: any token becomes ``user_<token>``) and report a status::

    curl -X POST http://127.0.0.1:8000/agents/planner/status \\
         -H 'content-type: application/json' \\
         -d '{"state": "working", "currentTask": "indexing", "progress": 40}'

Everything agentcast serves is under the mount point: ``/realtime/ws``,
``/realtime/healthz``, ``/realtime/metrics`` and the publish API ``/realtime/api/...``.

The route is ``async def``: FastAPI runs it in the event loop, where publishing belongs
(a plain ``def`` route runs in a worker thread, from which the server must not be called).
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from agentcast.adapters.asgi import AgentcastASGI, create_app
from agentcast.protocol import Settings


class StatusReport(BaseModel):
    """The body of ``POST /agents/{name}/status`` (the ``agent_status`` fields)."""

    model_config = ConfigDict(populate_by_name=True)

    state: Literal["idle", "working", "stopped"]
    current_task: str | None = Field(default=None, alias="currentTask")
    progress: float | None = Field(default=None, ge=0, le=100)


def create_api(realtime: AgentcastASGI | None = None) -> FastAPI:
    """The application around *realtime* (by default agentcast with its default settings)."""
    if realtime is None:
        realtime = create_app(settings=Settings())
    # agentcast's lifespan runs its presence timer; a mounted application's own lifespan
    # is not run by Starlette, so it goes here.
    api = FastAPI(title="agents", lifespan=realtime.lifespan)
    api.mount("/realtime", realtime)
    api.state.realtime = realtime

    @api.post("/agents/{name}/status", status_code=202)
    async def report_status(name: str, report: StatusReport) -> dict[str, object]:
        """Tell every connected dashboard what agent *name* is doing."""
        try:
            published = realtime.service.broadcast_agent_status(
                name, report.state, report.current_task, report.progress
            )
        except ValueError as exc:  # e.g. an empty or overlong agent name
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return {"id": published.id, "delivered": published.delivered}

    return api


app = create_api()
