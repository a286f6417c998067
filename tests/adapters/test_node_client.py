"""The seed document's own Node.js client (`ws` package) against the server, unchanged but
for its URL (tests/node/client.js): it connects, authenticates, sends presence and stays
connected past twice the heartbeat timeout, because `ws` answers protocol Pings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from agentcast.protocol import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.servers("reference", "uvicorn", "hypercorn")]

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
HEARTBEAT = Settings(heartbeat_interval=0.2, heartbeat_timeout=0.6)


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with tests/node's `ws` dependency installed on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required for the seed's Node client test (tests/node)")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm install in {NODE_DIR} failed:\n{result.stdout}\n{result.stderr}")
    return node


async def test_seed_node_client_stays_connected(start_server, node, wait_for, shut_down):
    server = await start_server(HEARTBEAT)
    url = f"{server.urls[0]}?token=test-token"  # the seed's own token
    output: list[str] = []
    async with await anyio.open_process(
        [node, "client.js", url], cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as process:

        async def read() -> None:
            assert process.stdout is not None
            async for chunk in process.stdout:
                output.append(chunk.decode())

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            text = lambda: "".join(output)  # noqa: E731
            await wait_for(lambda: "success: true" in text())
            assert "✅ Connected" in text()
            assert "userId: 'user_test-token'" in text()
            # Its presence message arrived and went out to everyone, itself included.
            await wait_for(lambda: server.hub.stats.messages_in["user_presence"] == 1)
            assert server.hub.presence() == {"user_test-token": "online"}

            # The time under test: twice the heartbeat timeout, and then some.
            await anyio.sleep(2 * HEARTBEAT.heartbeat_timeout + 0.3)
            assert server.clients_count() == 1
            assert server.hub.stats.heartbeat_timeouts == 0
            assert "🔌 Disconnected" not in text()
            assert "type: 'ping'" in text()  # it saw (and ignored) the JSON pings

            await shut_down(server)  # 1001: the client closes and, with nothing left, exits
            with anyio.fail_after(10):
                assert await process.wait() == 0
            await wait_for(lambda: "🔌 Disconnected" in text())
    assert server.hub.stats.closes[1001] == 1
