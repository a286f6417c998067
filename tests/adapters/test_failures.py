"""An unexpected error while serving one connection ends that connection only: logged,
answered 500 before the upgrade or closed with 1011 after it, and everyone else carries on."""

from __future__ import annotations

import logging

import pytest
from websockets.exceptions import InvalidStatus

from agentcast.protocol import AuthResult, Identity

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]


class Flaky:
    """An authenticator with a bug: the token "boom" makes it raise."""

    def authenticate(self, token: str, wall: float) -> AuthResult:
        if token == "boom":
            raise RuntimeError("authenticator bug")
        return Identity(user_id=token)


async def test_a_failing_upgrade_is_answered_500(start_server, clients, caplog, held):
    server = await start_server(authenticator=Flaky())
    with (
        caplog.at_level(logging.ERROR, logger="agentcast"),
        pytest.raises(InvalidStatus) as refused,
    ):
        await clients.connect(f"{server.urls[0]}?token=boom")
    assert refused.value.response.status_code == 500
    assert "authenticator bug" in caplog.text
    peer = await clients.connect(f"{server.urls[0]}?token=fine")
    assert (await peer.recv())["data"] == {"success": True, "userId": "fine"}
    assert held(server) == 1


async def test_an_error_on_an_open_connection_closes_it_with_1011(
    start_server, clients, caplog, wait_for
):
    server = await start_server(authenticator=Flaky())
    victim = await clients.connect(f"{server.urls[0]}?token=victim")
    bystander = await clients.connect(f"{server.urls[0]}?token=bystander")
    await victim.recv_until("user_presence")
    await bystander.recv_many(3)
    with caplog.at_level(logging.ERROR, logger="agentcast"):
        await victim.send({"type": "auth", "data": {"token": "boom"}})  # an in-band refresh
        assert await victim.closed_by_server() == (1011, "internal error")
    assert "authenticator bug" in caplog.text
    await wait_for(lambda: server.clients_count() == 1)
    published = server.send_notification("info", "still here")
    assert published.delivered == 1
    assert (await bystander.recv_until("notification"))["id"] == published.id
