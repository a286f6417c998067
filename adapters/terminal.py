"""``agentcast connect URL --token T``: a terminal client on top of the Python client.

For the ``wscat -c …`` habit, with the client rules built in (reconnect, resume, heartbeat):

* every message is printed: on a terminal one coloured line per message
  (``12:00:01.234 chat_message  [conv-1] bot: hello``); when stdout is not a terminal,
  or with ``--json``, the message's JSON exactly as received, one per line;
* connection events (connected, disconnected and the reconnect delay) go to stderr, so a
  pipe carries server messages only;
* each line typed is sent as JSON; ``/presence away`` and ``/ping`` are shortcuts,
  ``/quit`` (or Ctrl-C, or Ctrl-D on a terminal) leaves;
* exit status 0 when the user leaves, 1 with the reason when the server ends the session
  for good (``1008``, ``4500``+, a refused handshake), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import threading
import time
from typing import IO, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from agentcast.protocol.client_messages import (
    AgentState,
    AgentStatus,
    AuthResult,
    ChatMessage,
    Error,
    Notification,
    Ping,
    Pong,
    PresenceState,
    Resume,
    ServerMessage,
    Subscribed,
    Unknown,
    Unsubscribed,
    UserPresence,
)

from .client import (
    Client,
    ClientEvent,
    Connected,
    ConnectionStopped,
    Disconnected,
    NotConnected,
    connect,
)

__all__ = ["add_connect_command", "connect_command", "describe"]

_RESET = "\x1b[0m"
_COLOURS = {
    "auth": "\x1b[32m",
    "agent_status": "\x1b[33m",
    "agent_state": "\x1b[33m",
    "chat_message": "\x1b[36m",
    "user_presence": "\x1b[35m",
    "presence_state": "\x1b[35m",
    "resume": "\x1b[1m",
    "error": "\x1b[31m",
    "ping": "\x1b[2m",
    "pong": "\x1b[2m",
}
_LEVELS = {"info": "\x1b[34m", "success": "\x1b[32m", "warning": "\x1b[33m", "error": "\x1b[31m"}
_RED = "\x1b[31m"
_DIM = "\x1b[2m"

HELP = "type JSON to send it; /presence online|away|busy|offline, /ping, /quit"


def add_connect_command(commands: Any) -> argparse.ArgumentParser:
    """Add ``connect`` to the ``agentcast`` sub-commands (an argparse subparsers object)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "connect",
        help="connect to a server and print its messages (reconnects and resumes)",
        description="Connect to an agentcast server, print every message, send what you "
        f"type ({HELP}). Reconnects with back-off and resumes from the last message seen.",
    )
    parser.add_argument("url", help="ws:// or wss:// URL, e.g. ws://127.0.0.1:3000/ws")
    parser.add_argument(
        "--token",
        default=os.environ.get("AGENTCAST_CLIENT_TOKEN"),
        help="the token (default: $AGENTCAST_CLIENT_TOKEN)",
    )
    parser.add_argument(
        "--token-in",
        choices=("query", "header", "subprotocol"),
        default="query",
        help="where the token goes (default: query)",
    )
    parser.add_argument("--since", help="resume from this message id")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each message's JSON on one line (the default when stdout is not a terminal)",
    )
    parser.add_argument("--ca-file", help="trust this CA bundle (PEM) for wss://")
    parser.add_argument("--no-reconnect", action="store_true", help="exit when the connection ends")
    return parser


def connect_command(args: argparse.Namespace) -> int:
    """Run ``agentcast connect``; the exit status."""
    context = None
    if args.ca_file:
        try:
            context = ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as exc:
            print(f"agentcast connect: error: --ca-file: {exc}", file=sys.stderr)
            return 2
    pretty = not args.json and sys.stdout.isatty()
    terminal = _Terminal(sys.stdout, sys.stderr, pretty=pretty, colour=pretty and _colour_ok())
    try:
        return anyio.run(_main, args, context, terminal)
    except KeyboardInterrupt:
        return 0


def _colour_ok() -> bool:
    return "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


async def _main(args: argparse.Namespace, context: ssl.SSLContext | None, out: _Terminal) -> int:
    try:
        async with connect(
            args.url,
            token=args.token,
            token_in=args.token_in,
            since=args.since,
            ssl_context=context,
            reconnect=not args.no_reconnect,
            open_timeout=None,
            iterate=False,
            on={"*": out.show},  # from the first attempt on
        ) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_input, client, out)
                stop = await client.wait_closed()
                tg.cancel_scope.cancel()
            if out.quit:
                return 0
            out.fail(f"connection ended: {_reason(stop.code, stop.reason, stop.status)}")
            return 1
    except ConnectionStopped as exc:
        out.fail(f"connection refused: {_reason(exc.code, exc.reason, exc.status)}")
        return 1
    except ValueError as exc:  # a bad URL
        out.fail(f"error: {exc}")
        return 2


def _reason(code: int | None, reason: str, status: int | None) -> str:
    if status is not None:
        what = f"HTTP {status}"
    elif code is not None:
        what = f"close {code}"
    else:  # no connection at all: the reason says why (refused, DNS, TLS)
        return reason or "no connection"
    return f"{what} {reason}" if reason else what


async def _input(client: Client, out: _Terminal) -> None:
    """Send what the user types, until EOF (Ctrl-D) or ``/quit``."""
    send, receive = anyio.create_memory_object_stream[str | None](16)
    _start_stdin_thread(send, anyio.lowlevel.current_token())
    async for received in receive:
        if received is None:  # end of input
            if sys.stdin.isatty():
                break
            return  # piped input ended: keep printing what arrives
        line = received.strip()
        if not line:
            continue
        try:
            if line in ("/quit", "/exit"):
                break
            if line == "/ping":
                rtt = await client.ping()
                out.note(f"pong in {rtt * 1000:.1f} ms")
            elif line.startswith("/presence"):
                status = line.partition(" ")[2].strip()
                await client.set_presence(status)
            elif line.startswith("/"):
                out.note(f"unknown command {line.split()[0]}; {HELP}")
            else:
                await client.send(json.loads(line))
        except json.JSONDecodeError as exc:
            out.note(f"not JSON ({exc.msg}); {HELP}")
        except ValueError as exc:
            out.note(str(exc))
        except NotConnected:
            out.note("not connected; try again once reconnected")
        except TimeoutError:
            out.note("no pong within 10 s")
    out.quit = True
    await client.close()


def _start_stdin_thread(send: MemoryObjectSendStream[str | None], token: Any) -> None:
    # A daemon thread: a blocking read of stdin must never keep the process from exiting.
    def read() -> None:
        for line in sys.stdin:
            try:
                anyio.from_thread.run(send.send, line, token=token)
            except Exception:
                return  # the loop is gone
        try:
            anyio.from_thread.run(send.send, None, token=token)
        except Exception:
            return

    threading.Thread(target=read, name="agentcast-stdin", daemon=True).start()


class _Terminal:
    def __init__(self, out: IO[str], err: IO[str], *, pretty: bool, colour: bool) -> None:
        self.out = out
        self.err = err
        self.pretty = pretty
        self.colour = colour
        self.quit = False

    def show(self, item: ClientEvent) -> None:
        if isinstance(item, Connected | Disconnected):
            self.note(describe(item), important=isinstance(item, Disconnected))
            return
        if not self.pretty:
            if item.raw:
                text = json.dumps(item.raw, ensure_ascii=False, separators=(",", ":"))
            else:  # not a JSON object: as it came
                text = json.dumps(item.data if isinstance(item, Unknown) else None)
            print(text, file=self.out, flush=True)
            return
        line = describe(item)
        if self.colour:
            colour = _COLOURS.get(item.type, "")
            if isinstance(item, Notification):
                colour = _LEVELS.get(item.level, "")
            elif (
                (isinstance(item, Resume) and not item.complete)
                or (isinstance(item, Subscribed) and item.complete is False)
                or (isinstance(item, AuthResult) and not item.success)
            ):
                colour = _RED
            line = f"{colour}{line}{_RESET}" if colour else line
        print(line, file=self.out, flush=True)

    def note(self, text: str, *, important: bool = False) -> None:
        stamp = time.strftime("%H:%M:%S")
        line = f"{stamp} -- {text}"
        if self.colour:
            line = f"{_RED if important else _DIM}{line}{_RESET}"
        print(line, file=self.err, flush=True)

    def fail(self, text: str) -> None:
        print(f"agentcast connect: {text}", file=self.err, flush=True)


def describe(item: ClientEvent) -> str:
    """One human line for a message or a connection event."""
    if isinstance(item, Connected):
        where = f", resuming after {item.since}" if item.since else ""
        return f"connected{where}"
    if isinstance(item, Disconnected):
        what = _reason(item.code, item.reason, item.status)
        if item.reconnect_in is None:
            return f"disconnected ({what})"
        return f"disconnected ({what}); reconnecting in {item.reconnect_in:.1f} s"
    stamp = (item.timestamp or "")[11:23] or time.strftime("%H:%M:%S")
    text = _summary(item)
    suffix = f"  #{item.id}" if item.id else ""
    return f"{stamp} {item.type if not isinstance(item, Unknown) else item.kind:<14} {text}{suffix}"


def _summary(item: ServerMessage) -> str:
    match item:
        case AuthResult(success=True):
            return f"authenticated as {item.user_id}"
        case AuthResult():
            return f"not authenticated: {item.error}"
        case ChatMessage():
            return f"[{item.conversation_id}] {item.sender}: {item.content}"
        case AgentStatus():
            return _agent(item)
        case AgentState():
            return "; ".join(_agent(a) for a in item.agents) or "no agents"
        case Notification():
            return f"{item.level}: {item.message}"
        case UserPresence():
            return f"{item.user_id} is {item.status}"
        case PresenceState():
            return ", ".join(f"{u} {s}" for u, s in item.users.items()) or "nobody online"
        case Resume(complete=True):
            return f"resumed: {item.replayed} missed message(s) replayed"
        case Resume():
            return "resume incomplete: messages were lost, reload your state"
        case Error():
            return f"{item.error} ({item.code})" if item.code else item.error
        case Subscribed(complete=True):
            return f"{item.channel}: {item.replayed} missed message(s) replayed"
        case Subscribed(complete=False):
            return f"{item.channel}: replay incomplete, messages were lost, reload that channel"
        case Subscribed() | Unsubscribed():
            return item.channel
        case Ping() | Pong():
            return ""
        case Unknown():
            return json.dumps(item.data, ensure_ascii=False)[:200]


def _agent(item: AgentStatus) -> str:
    text = f"{item.agent_name} {item.state}"
    if item.current_task:
        text += f": {item.current_task}"
    if item.progress is not None:
        text += f" ({item.progress:g}%)"
    return text
