"""The transport layer: one server-side HTTP/1.1 connection that may become a WebSocket.

:class:`WebSocketTransport` knows bytes, HTTP and RFC 6455, and nothing of agentcast's
messages. It composes two phases, the way wsproto composes a handshake machine and a
frame machine: :class:`~agentcast.protocol.handshake.HttpPhase` (h11: the request, the
upgrade checks, the HTTP answers) until the ``101``, then
:class:`~agentcast.protocol.frames.FramePhase` (wsproto: frames, the ``1009`` check, the
closing handshake). Every change of :class:`TransportState` goes through one table,
:data:`TRANSITIONS`. It is usable on its own (the RFC 6455 conformance run puts an echo
application on it), and :class:`~agentcast.protocol.ServerConnection` composes it with a
:class:`~agentcast.protocol.Session`.

Inputs are verbs that take ``now``: :meth:`receive_data`, :meth:`receive_eof`,
:meth:`handle_timer`, :meth:`accept`, :meth:`respond`, :meth:`close`. Outputs are nouns:
:meth:`data_to_send`, :meth:`events_received`, :meth:`next_deadline`. After every input,
dispatch the events, then write what :meth:`data_to_send` returns; once :attr:`closed` is
true and that data is written, close the socket.

Limits do not depend on how the input is split: the handshake timeout and header size
cut off slow or bloated requests, and a message is refused with 1009 as soon as its
declared length passes ``max_message_size``, before its payload is buffered, or as soon
as it takes more than ``max_message_frames`` frames.

Once the connection is closed for abuse (``1008`` for a message in too many frames here,
or for a flood over the rate limit: :meth:`WebSocketTransport.stop_reading`), the
transport reads nothing more: the
rest of the input is discarded unparsed, :attr:`WebSocketTransport.wants_input` turns
false (the adapter stops reading the socket), and the close timeout ends the connection.
A Pong answering a Ping is queued like any output and counts in the backlog; while the
backlog is past ``max_send_buffer`` a new Pong replaces the one still pending.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto

from .answers import HttpAnswer
from .codes import CloseCode
from .config import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_FRAMES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_SEND_BUFFER,
    DEFAULT_PATH,
)
from .errors import LocalProtocolError
from .events import (
    BytesReceived,
    ConnectionClosed,
    Event,
    HttpRequest,
    TextReceived,
    UpgradeRequested,
)
from .frames import FramePhase
from .handshake import HeadCheck, HttpPhase
from .messages import frame_text
from .outbox import Outbox

__all__ = ["TRANSITIONS", "Step", "TransportState", "WebSocketTransport"]


class TransportState(Enum):
    """Where a transport is; :data:`TRANSITIONS` says how it moves."""

    #: Reading the HTTP request (or waiting for the adapter's answer to it).
    HTTP = auto()
    #: A valid upgrade request awaits :meth:`WebSocketTransport.accept` or a refusal.
    UPGRADING = auto()
    #: The WebSocket is open.
    OPEN = auto()
    #: We sent our close frame and wait for the peer's (at most ``close_timeout``).
    CLOSING = auto()
    #: The request was answered with a body that runs until the connection ends (an
    #: event stream, PROTOCOL.md 11): output goes on, input is discarded.
    STREAMING = auto()
    #: Nothing more is read or produced.
    CLOSED = auto()

    # Each member is its only instance: hashed by identity, in C, rather than by
    # Enum's hash of its name, a Python call (TRANSITIONS is looked up on every move).
    __hash__ = object.__hash__


class Step(Enum):
    """What moves a transport from one state to the next."""

    #: A valid upgrade request for the endpoint was read.
    UPGRADE = auto()
    #: An HTTP answer was queued: an error, a timeout, the adapter's answer or refusal.
    ANSWER = auto()
    #: :meth:`WebSocketTransport.accept`: the ``101``.
    ACCEPT = auto()
    #: :meth:`WebSocketTransport.stream`: the head of a response whose body follows.
    STREAM = auto()
    #: Our close frame was queued.
    CLOSE = auto()
    #: The connection is over: the closing handshake completed or timed out, the peer
    #: failed the protocol, the TCP connection ended, or a close before the upgrade.
    END = auto()

    __hash__ = object.__hash__  # as TransportState's


_S = TransportState
#: Every transition. A pair missing here is not a move the transport makes.
#:
#: HTTP ──UPGRADE──▶ UPGRADING ──ACCEPT──▶ OPEN ──CLOSE──▶ CLOSING ──END──▶ CLOSED
#:  │└──ANSWER/END──▶ CLOSED ◀──ANSWER/END──┘      └────────END────────────────▶ CLOSED
#:  └───STREAM──▶ STREAMING ──END──▶ CLOSED
TRANSITIONS: dict[tuple[TransportState, Step], TransportState] = {
    (_S.HTTP, Step.UPGRADE): _S.UPGRADING,
    (_S.HTTP, Step.ANSWER): _S.CLOSED,
    (_S.HTTP, Step.END): _S.CLOSED,
    (_S.HTTP, Step.STREAM): _S.STREAMING,
    (_S.STREAMING, Step.END): _S.CLOSED,
    (_S.UPGRADING, Step.ACCEPT): _S.OPEN,
    (_S.UPGRADING, Step.ANSWER): _S.CLOSED,
    (_S.UPGRADING, Step.END): _S.CLOSED,
    (_S.OPEN, Step.CLOSE): _S.CLOSING,
    (_S.OPEN, Step.END): _S.CLOSED,
    (_S.CLOSING, Step.END): _S.CLOSED,
    (_S.CLOSED, Step.END): _S.CLOSED,
}


class WebSocketTransport:
    """One server-side connection: HTTP request handling, upgrade, RFC 6455 framing."""

    __slots__ = (
        "_close_code",
        "_close_timeout",
        "_deadline",
        "_deaf",
        "_events",
        "_frames",
        "_http",
        "_max_message_frames",
        "_max_message_size",
        "_max_send_buffer",
        "_outbox",
        "_request_pending",
        "_state",
        "last_activity",
        "on_control",
        "on_message",
    )

    def __init__(
        self,
        *,
        now: float,
        path: str = DEFAULT_PATH,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_message_frames: int = DEFAULT_MAX_MESSAGE_FRAMES,
        max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        client: str | None = None,
        on_head: HeadCheck | None = None,
    ) -> None:
        """*on_head*: asked once a plain request's head is read, for an answer to give
        before its body (see :class:`~agentcast.protocol.handshake.HttpPhase`)."""
        self._state = TransportState.HTTP
        self._max_message_size = max_message_size
        self._max_message_frames = max_message_frames
        self._max_send_buffer = max_send_buffer
        self._close_timeout = close_timeout
        self._deaf = False  # closed for abuse: input is discarded unparsed
        self._http: HttpPhase | None = HttpPhase(
            path=path,
            max_header_size=max_header_size,
            max_body_size=max_body_size,
            client=client,
            on_head=on_head,
        )
        self._frames: FramePhase | None = None
        self._close_code: int = CloseCode.ABNORMAL  # kept when the frame phase is let go
        self._request_pending = False  # an HttpRequest awaits the adapter's answer
        # The handshake deadline is armed at creation, not at the first byte.
        self._deadline: float | None = now + handshake_timeout
        self._outbox = Outbox()
        self._events: list[Event] | None = None  # a list only while events wait
        #: Monotonic time of the last frame received (any frame: PROTOCOL.md 5).
        self.last_activity = now
        #: If set, called with each complete message (and ``now``) as soon as it is
        #: decoded, instead of queuing it for :meth:`events_received`: the owner's answer
        #: then goes out before the output caused by the frames after it (a Pong, a close
        #: frame), however the input was split. :class:`ServerConnection` sets it.
        self.on_message: Callable[[TextReceived | BytesReceived, float], None] | None = None
        #: If set, asked (with ``now``) for each Ping and Pong received: ``False`` means
        #: over the budget for control frames, and a Ping is then not answered.
        #: :class:`ServerConnection` sets it (the session's rate limit).
        self.on_control: Callable[[float], bool] | None = None

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> TransportState:
        return self._state

    @property
    def closed(self) -> bool:
        """Nothing more will be read or produced: write what is left, then close."""
        return self._state is TransportState.CLOSED

    @property
    def close_code(self) -> int:
        """The close code in effect once closing has begun (1006 if no frame was seen)."""
        frames = self._frames
        return self._close_code if frames is None else frames.close_code

    @property
    def wants_input(self) -> bool:
        """Whether reading the socket is of any use: false once closed, or closed for
        abuse (:meth:`stop_reading`: the input would be discarded), or while the backlog is past
        ``max_send_buffer`` (a client that does not read has its input wait)."""
        if self._state is TransportState.CLOSED or self._deaf:
            return False
        return self._outbox.backlog <= self._max_send_buffer

    @property
    def message_buffered(self) -> int:
        """Bytes of a partial incoming message held (bounded by ``max_message_size``)."""
        return 0 if self._frames is None else self._frames.buffered

    @property
    def backlog(self) -> int:
        """Bytes queued and not yet known to be written (pending plus the last write)."""
        return self._outbox.backlog

    @property
    def outbox(self) -> Outbox:
        """The pending output (the :class:`~agentcast.protocol.session.Sink` attribute)."""
        return self._outbox

    @property
    def on_output(self) -> Callable[[], None] | None:
        """Called when output becomes pending in an empty outbox, e.g. by a broadcast,
        so the adapter can wake its writer. ``None`` by default."""
        return self._outbox.on_output

    @on_output.setter
    def on_output(self, callback: Callable[[], None] | None) -> None:
        self._outbox.on_output = callback

    # -- outputs ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything pending, in one piece. Call it when the previous write has completed:
        the bytes returned count as the backlog until the next call."""
        return self._outbox.take_bytes()

    def events_received(self) -> list[Event]:
        """The events produced by the inputs since the last call, in order."""
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next (monotonic), or ``None``."""
        return self._deadline

    # -- inputs -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the socket. Peer faults never raise: they become an HTTP
        error answer or a close. ``b""`` is no data (EOF is :meth:`receive_eof`)."""
        if not data:
            return  # h11 would take b"" for EOF
        state = self._state
        if state is TransportState.OPEN or state is TransportState.CLOSING:
            frames = self._frames
            assert frames is not None
            if self._deaf:
                return
            for piece in frames.pieces(data):
                if self._state is TransportState.CLOSED or self._deaf:
                    break
                if frames.receive(piece, now):
                    self.last_activity = now
                if frames.ended:
                    self._finish(frames.close_code, frames.close_reason)
        elif state is TransportState.HTTP:
            assert self._http is not None
            outcome = self._http.receive_data(data)
            if self._http.interim:
                self._outbox.push(self._http.interim)
                self._http.interim = b""
            if isinstance(outcome, HttpAnswer):
                self._answer(outcome)
            elif isinstance(outcome, UpgradeRequested):
                self._step(Step.UPGRADE)
                self._emit(outcome)
            elif isinstance(outcome, HttpRequest):
                self._request_pending = True
                self._emit(outcome)
        elif state is TransportState.UPGRADING:
            assert self._http is not None
            self._http.hold(data)

    def receive_eof(self, now: float) -> None:
        """The peer closed its side of the TCP connection (or it broke)."""
        if self._state is TransportState.STREAMING:
            # The client of a stream leaves by closing the connection: it is going away.
            self._end_stream(CloseCode.GOING_AWAY, "")
        elif self._state is TransportState.CLOSING:
            assert self._frames is not None
            self._finish(self._frames.close_code, self._frames.close_reason)
        elif self._state is TransportState.OPEN:
            self._finish(CloseCode.ABNORMAL, "")
        else:
            self._step(Step.END)

    def handle_timer(self, now: float) -> None:
        """Act on a deadline that has passed: the handshake timeout answers 408, the close
        timeout gives up on the peer's half of the closing handshake."""
        if self._deadline is None or now < self._deadline:
            return
        if self._state is TransportState.HTTP:
            self._answer(HttpAnswer.plain(408, "Request Timeout: the request took too long"))
        elif self._state is TransportState.UPGRADING:
            self._answer(HttpAnswer.plain(408, "Request Timeout: the upgrade was not completed"))
        else:  # CLOSING: the only other state with a deadline
            assert self._frames is not None
            self._finish(self._frames.close_code, self._frames.close_reason)

    def send_failed(self) -> None:
        """The socket could not take our data: produce nothing more."""
        self._outbox.discard()
        self._outbox.sent()
        if self._state is TransportState.OPEN or self._state is TransportState.CLOSING:
            self._finish(CloseCode.ABNORMAL, "")
        elif self._state is TransportState.STREAMING:
            self._end_stream(CloseCode.ABNORMAL, "")
        else:
            self._step(Step.END)

    # -- commands -----------------------------------------------------------------------

    def accept(
        self,
        now: float,
        subprotocol: str | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        """Answer the pending upgrade with 101 and start the WebSocket session.

        *on_open* is called right after the 101 is queued, before the bytes that followed
        the request are processed, so what it sends precedes any answer to them.
        """
        if self._state is not TransportState.UPGRADING:
            raise LocalProtocolError(f"accept() in state {self._state.name}")
        http = self._http
        assert http is not None
        self._outbox.push(http.accept_head(subprotocol))
        trailing = http.trailing_data()
        # The handshake objects are not needed any more: drop them (idle memory).
        self._http = None
        self._frames = FramePhase(
            self, self._max_message_size, max_message_frames=self._max_message_frames
        )
        self._step(Step.ACCEPT)
        self.last_activity = now
        if on_open is not None:
            on_open()
        if trailing:
            self.receive_data(trailing, now)

    def respond(self, answer: HttpAnswer) -> None:
        """Answer the pending request: an :class:`~agentcast.protocol.events.HttpRequest`,
        or an upgrade refused (no WebSocket is opened). The connection then closes."""
        state = self._state
        if state is not TransportState.UPGRADING and not (
            state is TransportState.HTTP and self._request_pending
        ):
            raise LocalProtocolError(f"respond() without a pending request ({state.name})")
        self._answer(answer)

    def stream(self, head: bytes) -> None:
        """Answer the pending request with *head*, a response whose body follows: what
        is queued from now on is that body (an event stream), until :meth:`close`."""
        if not (self._state is TransportState.HTTP and self._request_pending):
            raise LocalProtocolError(f"stream() without a pending request ({self._state.name})")
        self._outbox.push(head)
        self._step(Step.STREAM)

    def stop_reading(self) -> None:
        """The peer is abusive (closed 1008 for a flood): read nothing more, not even its
        close frame; the rest of the input is discarded unparsed and the close timeout
        ends the connection. Call it once the closing handshake has begun."""
        self._deaf = True
        frames = self._frames
        assert frames is not None  # only an open WebSocket is closed for abuse
        frames.halt()  # not even the rest of the piece being read

    def refuse(self, answer: HttpAnswer) -> None:
        """Answer *answer* at once, before any request is read, and close (a connection
        over a limit when it is accepted)."""
        if self._state is not TransportState.HTTP:
            raise LocalProtocolError(f"refuse() in state {self._state.name}")
        self._answer(answer)

    def send_text(self, text: str) -> None:
        """Queue one text message (an application of the transport alone, such as the
        RFC 6455 echo; agentcast's own messages go through the outbox, encoded once)."""
        if self._state is TransportState.OPEN:
            self._outbox.push(frame_text(text.encode()))

    def send_bytes(self, data: bytes) -> None:
        """Queue one binary message."""
        if self._state is TransportState.OPEN:
            assert self._frames is not None
            self._outbox.push(self._frames.send_bytes(data))

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a protocol-level Ping frame (the :class:`~agentcast.protocol.Sink` method)."""
        if self._state is TransportState.OPEN:
            assert self._frames is not None
            self._outbox.push(self._frames.send_ping(payload))

    def close(self, code: int, reason: str, now: float) -> None:
        """Start the closing handshake with *code*; end a stream's body (its last bytes
        queued by its owner); before the upgrade, just close."""
        state = self._state
        if state is TransportState.OPEN:
            assert self._frames is not None
            frame = self._frames.close(code, reason)
            self._step(Step.CLOSE, now)
            pending = bool(self._outbox)
            self._outbox.push(frame)
            if pending and self._outbox.on_output is not None:
                # The output callback also says "the deadline moved": an adapter waiting
                # for a write to complete (a client that reads nothing, 1013) must still
                # time the closing handshake out.
                self._outbox.on_output()
        elif state is TransportState.STREAMING:
            # The body ends here (its last bytes are queued): once they are written, the
            # connection closes. Wake the adapter even if output was already pending: it
            # must learn that the connection is done.
            self._end_stream(code, reason)
            if self._outbox.on_output is not None:
                self._outbox.on_output()
        elif state is TransportState.HTTP or state is TransportState.UPGRADING:
            self._step(Step.END)

    # -- internals ----------------------------------------------------------------------

    def _step(self, step: Step, now: float | None = None) -> None:
        """Move by :data:`TRANSITIONS`, and arm the deadline the new state has (*now* is
        needed for CLOSING only)."""
        new = TRANSITIONS[(self._state, step)]
        self._state = new
        if new is TransportState.CLOSING:
            assert now is not None
            self._deadline = now + self._close_timeout
        elif new is not TransportState.UPGRADING:  # UPGRADING keeps the handshake's
            self._deadline = None
        if new is TransportState.CLOSED or new is TransportState.STREAMING:
            self._http = None
            self._request_pending = False
        if new is TransportState.CLOSED:
            self._let_go()

    def _let_go(self) -> None:
        """Closed: nothing more is read, so let go of what only reading needed. The frame
        phase calls back into this transport, and the owner's callbacks into the owner:
        both are reference cycles while the connection lives. Without them, a closed
        connection is freed by reference counting as soon as its adapter drops it, and
        never waits for the garbage collector's full pass."""
        frames = self._frames
        if frames is not None:
            self._close_code = frames.close_code
            self._frames = None
        self.on_message = None
        self.on_control = None

    def _answer(self, answer: HttpAnswer) -> None:
        self._outbox.push(answer.to_bytes())
        self._step(Step.ANSWER)

    def _finish(self, code: int, reason: str) -> None:
        assert self._frames is not None
        self._frames.reset()
        self._step(Step.END)
        self._emit(ConnectionClosed(code=code, reason=reason))

    def _end_stream(self, code: int, reason: str) -> None:
        self._step(Step.END)
        self._emit(ConnectionClosed(code=code, reason=reason))

    def _emit(self, event: Event) -> None:
        events = self._events
        if events is None:
            self._events = [event]
        else:
            events.append(event)

    # -- the frame phase's callbacks (FrameOwner) ---------------------------------------

    def _push_frame(self, frame: bytes) -> None:
        self._outbox.push(frame)

    def _on_frame_message(self, received: TextReceived | BytesReceived, now: float) -> None:
        if self.on_message is not None:
            self.on_message(received, now)
        else:
            self._emit(received)

    def _on_frame_control(self, now: float) -> bool:
        return self.on_control is None or self.on_control(now)

    def _push_pong(self, frame: bytes) -> None:
        self._outbox.push_pong(frame, self._max_send_buffer)

    def _too_big(self, now: float, code: int, reason: str) -> None:
        self.close(code, reason, now)
        if code == CloseCode.POLICY:  # too many frames: abuse, not a big message
            self.stop_reading()
