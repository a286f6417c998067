"""Publishing from Python: a server that reports a made-up agent's progress on a timer.

Run it, then connect a client and watch the messages arrive::

    python examples/publisher.py                 # ws://127.0.0.1:3001/ws
    python -m websockets 'ws://127.0.0.1:3001/ws?token=abc123'

Every tick publishes the agent's status (and a chat message and a notification when its
task is done) and prints what happened: the message id, how many connections it reached,
and the server's client counts. Ctrl-C (or SIGTERM) closes every client with 1001, waits
for the closing handshakes and exits 0.

Port 3001 keeps it clear of a server already running on the default 3000; ``--port 0``
picks a free port (the address is printed). The server object is the one `agentcast serve`
runs; its publishing methods are synchronous and are called from the event loop's thread.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools

import anyio
from anyio.abc import TaskStatus

from agentcast.adapters.logs import configure_logging
from agentcast.adapters.server import Server
from agentcast.protocol import Settings

AGENT = "CLOUD_ASSISTANT"


def tick(server: Server, step: int) -> None:
    """Publish one step of the agent's work and print the counts."""
    progress = (step * 10) % 110  # 0, 10, ..., 100, then a new task
    task = step // 11 + 1
    if progress < 100:
        status = server.broadcast_agent_status(AGENT, "working", f"task {task}", progress)
    else:
        status = server.broadcast_agent_status(AGENT, "idle")
        server.broadcast_chat_message(f"conv-{task}", f"msg-{task}", f"task {task} done", AGENT)
        server.send_notification("success", f"task {task} finished")
    print(
        f"agent_status {progress:3d}% id={status.id} delivered={status.delivered}"
        f" clients={server.clients_count()}"
        f" authenticated={server.authenticated_clients_count()}",
        flush=True,
    )


async def main(port: int, interval: float) -> None:
    server = Server(Settings(), port=port)

    async with anyio.create_task_group() as tg:

        async def serve(*, task_status: TaskStatus[None]) -> None:
            # run() turns SIGINT/SIGTERM into a graceful shutdown and returns after it:
            # then the publishing loop below has nothing left to publish to.
            await server.run(task_status=task_status)
            tg.cancel_scope.cancel()

        await tg.start(serve)  # listening once this returns
        print(f"publishing to {server.urls[0]}?token=abc123 (Ctrl-C stops)", flush=True)
        for step in itertools.count():
            tick(server, step)
            await anyio.sleep(interval)
    print("stopped", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=3001, help="port (0: a free one)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    configure_logging("info")  # connection open/close lines on stderr
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the server listens
        anyio.run(main, args.port, args.interval, backend=args.backend)
