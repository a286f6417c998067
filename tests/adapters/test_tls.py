"""wss:// with a certificate made by trustme: in-process, and from the command line."""

from __future__ import annotations

import json
import ssl
import urllib.request

import anyio
import pytest
import trustme

from agentcast.adapters.cli import build_ssl_context

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def cert_files(ca, tmp_path):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(chain, append=True)
    cert.private_key_pem.write_to_path(key)
    return str(chain), str(key)


@pytest.fixture
def client_context(ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def server_context(cert_files):
    return build_ssl_context(*cert_files)


async def all_released(server):
    """Wait until the server holds no TCP connection (as its metrics say)."""
    with anyio.fail_after(10):
        while server.metrics.registry.get_sample_value("agentcast_tcp_connections"):
            await anyio.sleep(0.01)


async def round_trip(clients, url, context):
    peer = await clients.connect(f"{url}?token=secure", ssl=context)
    assert (await peer.recv())["data"] == {"success": True, "userId": "user_secure"}
    await peer.send({"type": "ping"})
    assert (await peer.recv_until("pong"))["type"] == "pong"
    return peer


async def test_wss_round_trip(start_server, clients, server_context, client_context):
    server = await start_server(ssl_context=server_context)
    assert server.urls[0].startswith("wss://127.0.0.1:")
    peer = await round_trip(clients, server.urls[0], client_context)
    published = server.send_notification("info", "over TLS")
    message = await peer.recv_until("notification")
    assert (message["id"], message["data"]["message"]) == (published.id, "over TLS")

    # HTTPS on the same port.
    host, port = server.addresses[0]
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=client_context)
    )

    def healthz():
        with opener.open(f"https://{host}:{port}/healthz", timeout=10) as response:
            return json.loads(response.read())

    assert await anyio.to_thread.run_sync(healthz) == {
        "status": "ok",
        "clients": 1,
        "authenticated": 1,
        "unauthenticated": 0,
    }
    await peer.close()
    await all_released(server)


async def test_plain_client_on_the_tls_port_is_dropped_without_harm(
    start_server, clients, server_context, client_context
):
    server = await start_server(ssl_context=server_context)
    plain = server.urls[0].replace("wss://", "ws://", 1)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the client makes of it
        await clients.connect(plain, open_timeout=5)
    await all_released(server)
    await round_trip(clients, server.urls[0], client_context)


async def test_tls_from_the_command_line(spawn_server, clients, cert_files, client_context):
    chain, key = cert_files
    process = await spawn_server("--tls-cert", chain, "--tls-key", key)
    assert process.url.startswith("wss://127.0.0.1:")
    await round_trip(clients, process.url, client_context)
