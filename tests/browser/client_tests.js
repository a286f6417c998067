// The browser client's own tests, run in Chromium by test_client.py: agentcast.js with a
// scripted WebSocket, scripted timers and scripted randomness, so every rule of
// docs/clients.md is checked at exact delays, without a server and without waiting.
import {
  AgentcastClient,
  Backoff,
  closeDecision,
  jwtExpiry,
  SUBPROTOCOL,
} from "./agentcast.js";

// -- the scripted world ------------------------------------------------------------------

class Clock {
  constructor() {
    this.time = 1_700_000_000_000; // ms since the epoch
    this.timers = new Map();
    this.nextId = 1;
  }
  setTimeout = (fn, ms) => {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + ms, fn, ms });
    return id;
  };
  clearTimeout = (id) => {
    this.timers.delete(id);
  };
  now = () => this.time;
  /** Delays (ms) of the pending timers, in the order they were set. */
  pending() {
    return [...this.timers.values()].map((t) => t.ms);
  }
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.time = Math.max(this.time, due[1].at);
      due[1].fn();
      await settle();
    }
    this.time = end;
  }
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

function world({ random = [0.5], ...options } = {}) {
  const clock = new Clock();
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = new URL(url);
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // What the server does:
    open() {
      this.readyState = 1;
      this.onopen && this.onopen({});
    }
    message(obj) {
      this.onmessage && this.onmessage({ data: JSON.stringify(obj) });
    }
    auth(userId = "user_abc123") {
      this.message({ type: "auth", data: { success: true, userId } });
    }
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason });
    }
    types() {
      return this.sent.map((m) => m.type);
    }
  }
  const draws = [...random];
  const client = new AgentcastClient("ws://example.test/ws", {
    token: "abc123",
    WebSocket: FakeWebSocket,
    random: () => (draws.length > 1 ? draws.shift() : draws[0]),
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    ...options,
  });
  const events = [];
  for (const type of ["state", "open", "disconnect", "resume", "error"]) {
    client.on(type, (event) => events.push([type, event]));
  }
  return { clock, sockets, client, events, last: () => sockets[sockets.length - 1] };
}

function eq(actual, expected, what = "") {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

function ok(condition, what) {
  if (!condition) throw new Error(what);
}

const near = (a, b) => Math.abs(a - b) < 1e-6;

// -- the tests -------------------------------------------------------------------------------

export const tests = {
  async full_jitter_backoff_doubles_to_the_cap() {
    const backoff = new Backoff();
    const delays = [];
    for (let i = 0; i < 9; i++) delays.push(backoff.next(0.999999));
    const ceilings = [0.5, 1, 2, 4, 8, 16, 20, 20, 20];
    ceilings.forEach((c, i) => ok(near(delays[i], c * 0.999999), `attempt ${i}: ${delays[i]}`));
    ok(new Backoff().next(0) === 0, "a zero draw waits not at all");
    const half = new Backoff();
    half.attempt = 3;
    ok(near(half.next(0.5), 2), "half of the 4 s ceiling");
  },

  async reconnect_delays_follow_the_backoff_and_the_random_draw() {
    const { clock, client, sockets, last } = world({ random: [0.25, 0.5, 1 - 1e-9, 0.1] });
    client.connect();
    last().drop(1006); // never opened: the server is down
    eq(client.state, "reconnecting", "state");
    eq(clock.pending(), [0.25 * 500], "first delay");
    await clock.advance(125);
    eq(sockets.length, 2, "second attempt");
    last().drop(1006);
    eq(clock.pending(), [0.5 * 1000], "second delay");
    await clock.advance(500);
    last().drop(1006);
    ok(near(clock.pending()[0], (1 - 1e-9) * 2000), "third delay");
    ok(near(client.lastClose.reconnectIn, (1 - 1e-9) * 2), "reconnectIn in seconds");
  },

  async a_stable_minute_starts_the_backoff_over() {
    const { clock, client, last } = world({ random: [0.5] });
    client.connect();
    for (let i = 0; i < 4; i++) {
      last().drop(1006);
      await clock.advance(20_000);
    }
    eq(client.backoff.attempt, 4, "four failed attempts");
    last().open();
    last().auth();
    await clock.advance(30_000);
    last().message({ type: "ping" });
    await clock.advance(29_000);
    last().drop(1006); // open for 59 s: not stable yet
    eq(clock.pending(), [0.5 * 8000], "59 s is not a stable connection");
    await clock.advance(4000);
    last().open();
    last().auth();
    await clock.advance(60_000 - 1);
    last().message({ type: "ping" });
    await clock.advance(1);
    last().drop(1001);
    eq(clock.pending(), [0.5 * 500], "after a minute open: the first delay again");
  },

  async close_codes_reconnect_or_stop() {
    eq(closeDecision(null), "reconnect", "no close frame");
    for (const code of [1001, 1005, 1006, 1011, 1012, 1013, 4000, 4002, 4499]) {
      eq(closeDecision(code), "reconnect", `code ${code}`);
      const { client, last, clock } = world();
      client.connect();
      last().open();
      last().drop(code, "bye");
      eq(client.state, "reconnecting", `state after ${code}`);
      eq(clock.pending().length, 1, `a retry is scheduled after ${code}`);
    }
    for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 4500, 4999]) {
      eq(closeDecision(code), "stop", `code ${code}`);
      const { client, last, clock, events } = world();
      client.connect();
      last().open();
      last().drop(code, "rate limit exceeded");
      eq(client.state, "stopped", `state after ${code}`);
      eq(clock.pending(), [], `no retry after ${code}`);
      eq(client.lastClose, { code, reason: "rate limit exceeded", reconnectIn: null }, "reason surfaced");
      eq(events.filter(([t]) => t === "disconnect").pop()[1].reconnectIn, null, "disconnect event");
    }
  },

  async token_expired_asks_the_provider_for_a_fresh_token() {
    const tokens = ["first-token", "fresh-token"];
    let asked = 0;
    const { client, last, clock } = world({
      token: undefined,
      getToken: async () => {
        asked += 1;
        return tokens.shift();
      },
    });
    client.connect();
    await settle();
    eq(asked, 1, "asked once to connect");
    eq(last().protocols, [SUBPROTOCOL, "bearer.first-token"], "first token");
    last().open();
    last().auth();
    last().drop(4001, "token expired");
    eq(client.state, "reconnecting", "4001 reconnects");
    await clock.advance(250);
    eq(asked, 2, "asked again after 4001");
    eq(last().protocols, [SUBPROTOCOL, "bearer.fresh-token"], "the fresh token");
    last().open();
    last().drop(1006);
    await clock.advance(1000);
    eq(asked, 2, "a plain reconnect keeps the token");
  },

  async token_expired_without_a_provider_stops() {
    const { client, last, clock } = world();
    client.connect();
    last().open();
    last().drop(4001, "token expired");
    eq(client.state, "stopped", "nobody to ask for a token");
    eq(client.lastClose.reason, "token expired", "reason");
    eq(clock.pending(), [], "no retry");
  },

  async a_failing_token_provider_is_retried_with_backoff() {
    let calls = 0;
    const { client, clock, sockets } = world({
      token: undefined,
      getToken: async () => {
        calls += 1;
        if (calls === 1) throw new Error("identity service down");
        return "t2";
      },
    });
    client.connect();
    await settle();
    eq(sockets.length, 0, "no socket without a token");
    eq(client.state, "reconnecting", "retry");
    ok(client.lastClose.reason.includes("identity service down"), "reason surfaced");
    await clock.advance(500);
    eq(calls, 2, "asked again");
    eq(sockets.length, 1, "connected with the second token");
  },

  async a_jwt_is_refreshed_in_band_before_it_expires() {
    const b64 = (obj) => btoa(JSON.stringify(obj)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
    const now = 1_700_000_000;
    const jwt = (exp) => `${b64({ alg: "HS256" })}.${b64({ sub: "u", exp })}.sig`;
    eq(jwtExpiry(jwt(now + 100)), now + 100, "exp read");
    eq(jwtExpiry("abc123"), null, "not a JWT");
    const { client, last, clock } = world({
      token: jwt(now + 100),
      getToken: async () => jwt(now + 400),
      idleTimeout: 0, // this test leaves the server silent for minutes
    });
    client.connect();
    last().open();
    last().auth("u");
    await clock.advance(70_000 - 1);
    eq(last().types().includes("auth"), false, "not before exp - 30 s");
    await clock.advance(1);
    eq(last().sent.filter((m) => m.type === "auth").map((m) => m.data.token), [jwt(now + 400)], "sent in band");
    last().auth("u"); // the server's answer: the next refresh is scheduled from the new exp
    await clock.advance(300_000 - 1); // the new exp (t + 400 s) less 30 s, from t + 70 s
    eq(last().sent.filter((m) => m.type === "auth").length, 1, "one refresh so far");
    await clock.advance(1);
    eq(last().sent.filter((m) => m.type === "auth").length, 2, "and the next");
  },

  async a_reconnect_resumes_after_the_last_id_seen() {
    const { client, last, clock, events } = world();
    client.connect();
    eq(last().url.searchParams.has("since"), false, "a first connection asks for nothing");
    last().open();
    last().auth();
    last().message({ type: "agent_status", data: { agentName: "a", state: "idle" }, id: "0000000000000007" });
    last().message({ type: "user_presence", data: { userId: "u", status: "away" }, id: "0000000000000008" });
    last().message({ type: "pong" }); // no id: not a resume point
    eq(client.lastId, "0000000000000008", "last id");
    last().drop(1006);
    await clock.advance(250);
    eq(last().url.searchParams.get("since"), "0000000000000008", "since on reconnect");
    eq(last().url.searchParams.get("token"), null, "the token is not in the URL");
    last().open();
    last().auth();
    last().message({ type: "resume", data: { complete: false } });
    eq(client.resumed, { complete: false }, "resume state");
    eq(events.filter(([t]) => t === "resume").map(([, e]) => e), [{ complete: false }], "resume event");
    const opens = events.filter(([t]) => t === "open").map(([, e]) => e.since);
    eq(opens, [null, "0000000000000008"], "open events say where they resume from");
  },

  async a_resume_point_can_be_given() {
    const { client, last } = world({ since: "0000000000000042" });
    client.connect();
    eq(last().url.searchParams.get("since"), "0000000000000042", "since");
  },

  async channels_are_kept_across_reconnects() {
    const { client, last, clock } = world({ channels: ["agent:planner"] });
    client.connect();
    eq(last().url.searchParams.get("channels"), "agent:planner", "channels in the URL");
    client.subscribe("conversation:c1"); // before auth: sent once authenticated
    last().open();
    eq(last().sent, [], "nothing before auth");
    last().auth();
    eq(last().sent, [{ type: "subscribe", data: { channel: "conversation:c1" } }], "subscribed after auth");
    client.unsubscribe("agent:planner");
    client.subscribe("conversation:c2");
    eq(last().sent.slice(1), [
      { type: "unsubscribe", data: { channel: "agent:planner" } },
      { type: "subscribe", data: { channel: "conversation:c2" } },
    ], "live changes");
    last().drop(1012);
    await clock.advance(250);
    eq(last().url.searchParams.get("channels"), "conversation:c1,conversation:c2", "resubscribed in the URL");
    last().open();
    last().auth();
    eq(last().sent, [], "nothing to send again");
    eq(client.channels, ["conversation:c1", "conversation:c2"], "channels");
  },

  async a_refused_subscription_is_not_asked_for_again() {
    const { client, last, clock } = world({ channels: ["agent:planner", "secret:payroll"] });
    client.connect();
    last().open();
    last().auth();
    last().message({
      type: "error",
      data: { error: "Channel not allowed", code: "forbidden_channel", channel: "secret:payroll" },
    });
    last().message({ type: "subscribed", data: { channel: "agent:planner" } });
    eq(client.channels, ["agent:planner"], "the refused channel is dropped");
    last().message({ type: "error", data: { error: "Rate limit exceeded", code: "rate_limited" } });
    eq(client.channels, ["agent:planner"], "other errors change nothing");
    last().drop(1006);
    await clock.advance(250);
    eq(last().url.searchParams.get("channels"), "agent:planner", "not in the next URL");
  },

  async a_subscription_with_since_replays_then_is_a_channel_like_the_others() {
    const { client, last, clock } = world({ channels: ["agent:planner"] });
    const answers = [];
    client.on("subscribed", (data) => answers.push(data));
    client.subscribe("conversation:c1", { since: "0000000000000042" }); // before connecting
    client.connect();
    eq(last().url.searchParams.get("channels"), "agent:planner", "not in the URL: it has no since there");
    last().open();
    eq(last().sent, [], "nothing before auth");
    last().auth();
    eq(last().sent, [
      { type: "subscribe", data: { channel: "conversation:c1", since: "0000000000000042" } },
    ], "asked with its since after auth");
    // Lost before the answer: asked again, with the same since, on the next connection.
    last().drop(1006);
    await clock.advance(250);
    eq(last().url.searchParams.get("channels"), "agent:planner", "still not in the URL");
    last().open();
    last().auth();
    eq(last().sent, [
      { type: "subscribe", data: { channel: "conversation:c1", since: "0000000000000042" } },
    ], "asked again");
    last().message({ type: "chat_message", data: { content: "missed" }, id: "0000000000000043" });
    last().message({ type: "subscribed", data: { channel: "conversation:c1", complete: true, replayed: 1 } });
    eq(answers, [{ channel: "conversation:c1", complete: true, replayed: 1 }], "the answer");
    // Connected: sent at once, even for a channel held already (the server says
    // complete, nothing replayed: it was live all along).
    client.subscribe("agent:planner", { since: "0000000000000043" });
    client.subscribe("conversation:c2", { since: null }); // null: a plain subscribe
    eq(last().sent.slice(1), [
      { type: "subscribe", data: { channel: "agent:planner", since: "0000000000000043" } },
      { type: "subscribe", data: { channel: "conversation:c2" } },
    ], "live");
    last().message({ type: "subscribed", data: { channel: "agent:planner", complete: true, replayed: 0 } });
    last().message({ type: "subscribed", data: { channel: "conversation:c2" } });
    // Answered: from now on in the URL, resumed with the connection's since.
    last().drop(1012);
    await clock.advance(500); // the second attempt in a row: up to 1 s, half of it drawn
    eq(
      last().url.searchParams.get("channels"),
      "agent:planner,conversation:c1,conversation:c2",
      "every channel in the URL",
    );
    eq(last().url.searchParams.get("since"), "0000000000000043", "the connection resumes");
    last().open();
    last().auth();
    eq(last().sent, [], "nothing to ask again");
  },

  async a_since_is_dropped_by_unsubscribe_a_refusal_or_a_plain_subscribe() {
    const { client, last, clock } = world();
    client.subscribe("a", { since: "1" });
    client.subscribe("a"); // changed its mind: a plain subscription, in the URL
    client.subscribe("b", { since: "1" });
    client.unsubscribe("b");
    client.subscribe("c", { since: "1" });
    client.connect();
    eq(last().url.searchParams.get("channels"), "a", "the URL");
    last().open();
    last().auth();
    eq(last().sent, [{ type: "subscribe", data: { channel: "c", since: "1" } }], "after auth");
    last().message({
      type: "error",
      data: { error: "Channel not allowed", code: "forbidden_channel", channel: "c" },
    });
    last().drop(1006);
    await clock.advance(250);
    eq(last().url.searchParams.get("channels"), "a", "the refused one is gone");
    last().open();
    last().auth();
    eq(last().sent, [], "and not asked again");
    eq(client.channels, ["a"], "channels");
  },

  async presence_is_set_again_after_every_reconnect() {
    const { client, last, clock } = world();
    client.connect();
    eq(client.setPresence("away"), false, "not sent before auth");
    last().open();
    last().auth();
    eq(last().sent, [{ type: "user_presence", data: "away" }], "sent after auth");
    client.setPresence("busy");
    last().drop(1001);
    await clock.advance(250);
    last().open();
    last().auth();
    eq(last().sent, [{ type: "user_presence", data: "busy" }], "set again");
    let refused = false;
    try {
      client.setPresence("sleeping");
    } catch (error) {
      refused = error instanceof RangeError;
    }
    ok(refused, "an unknown status is refused");
  },

  async the_server_ping_is_answered_and_a_silent_server_is_left() {
    const { client, last, clock, sockets } = world();
    client.connect();
    last().open();
    last().auth();
    last().message({ type: "ping" });
    eq(last().sent, [{ type: "pong" }], "pong");
    eq(client.ping(), true, "a client ping");
    eq(last().sent[1], { type: "ping" }, "ping sent");
    await clock.advance(90_000 - 1);
    eq(client.state, "open", "not silent yet");
    await clock.advance(1);
    eq(client.state, "reconnecting", "a server silent for 90 s is presumed gone");
    eq(client.lastClose.code, 1006, "counted as 1006");
    ok(sockets[0].closedWith !== null, "the old socket was closed");
  },

  async a_connection_that_never_opens_is_given_up() {
    const { client, clock, sockets } = world();
    client.connect();
    await clock.advance(90_000 - 1);
    eq(client.state, "connecting", "still trying");
    await clock.advance(1);
    eq(client.state, "reconnecting", "given up after the idle timeout");
    eq(client.lastClose.code, 1006, "counted as 1006");
    ok(sockets[0].closedWith !== null, "the pending socket was closed");
  },

  async a_socket_the_browser_refuses_stops() {
    const { client, clock } = world({
      WebSocket: class {
        constructor() {
          throw new SyntaxError("invalid subprotocol");
        }
      },
    });
    client.connect();
    eq(client.state, "stopped", "a retry would be refused the same way");
    ok(client.lastClose.reason.includes("invalid subprotocol"), "reason surfaced");
    eq(clock.pending(), [], "no retry");
  },

  async the_token_goes_in_the_subprotocol_or_the_query() {
    let w = world({ token: "abc123" });
    w.client.connect();
    eq(w.last().protocols, ["agentcast.v1", "bearer.abc123"], "subprotocol");
    eq(w.last().url.search, "", "nothing in the URL");
    w = world({ token: "not a token!" });
    w.client.connect();
    eq(w.last().protocols, [], "cannot be a subprotocol");
    eq(w.last().url.searchParams.get("token"), "not a token!", "in the query instead");
    w = world({ token: "abc123", tokenIn: "query" });
    w.client.connect();
    eq(w.last().url.searchParams.get("token"), "abc123", "asked for the query");
  },

  async events_per_message_type_and_a_failing_handler_breaks_nothing() {
    const { client, last } = world();
    const seen = [];
    client.on("agent_status", () => {
      throw new Error("a bug in the application");
    });
    client.on("agent_status", (data, message) => seen.push([data.agentName, message.id]));
    const off = client.on("notification", (data) => seen.push([data.level]));
    client.connect();
    last().open();
    last().auth();
    const reported = [];
    const original = globalThis.reportError;
    globalThis.reportError = (error) => reported.push(error.message);
    try {
      last().message({ type: "agent_status", data: { agentName: "a", state: "idle" }, id: "1" });
    } finally {
      globalThis.reportError = original;
    }
    last().message({ type: "notification", data: { level: "info", message: "x" }, id: "2" });
    off();
    last().message({ type: "notification", data: { level: "error", message: "y" }, id: "3" });
    eq(seen, [["a", "1"], ["info"]], "handlers");
    eq(reported, ["a bug in the application"], "the error is reported, not thrown");
    eq(client.userId, "user_abc123", "user id");
  },

  async close_stops_for_good() {
    const { client, last, clock } = world();
    client.connect();
    last().open();
    client.close();
    eq(client.state, "closed", "closed");
    eq(last().closedWith, { code: 1000, reason: "" }, "a normal close");
    eq(clock.pending(), [], "no timer left");
    client.connect();
    eq(client.state, "connecting", "connect() opens again");
  },

  async a_relative_url_becomes_a_websocket_url() {
    const client = new AgentcastClient("ws", { WebSocket: class {} });
    eq(client.url.protocol, location.protocol === "https:" ? "wss:" : "ws:", "scheme");
    eq(client.url.pathname, "/ws", "path relative to the page");
  },
};

window.clientTests = tests;
window.clientTestsReady = true;
