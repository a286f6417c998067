// agentcast.js: the agentcast browser client. An ES module, no build step, no dependency.
//
//   import { AgentcastClient } from "/agentcast.js";
//   const client = new AgentcastClient("ws://127.0.0.1:3000/ws", { token: "abc123" });
//   client.on("agent_status", (data) => console.log(data.agentName, data.state));
//   client.connect();
//
// It follows the client rules of docs/clients.md: the token in the `bearer.` subprotocol
// (or the query), a JSON `ping` answered `pong`, reconnect with full-jitter back-off by
// the close code, resume with `since=<last id>`, a fresh token for 4001 and before a
// JWT's `exp`, presence and channel subscriptions kept across reconnects, a channel's
// missed messages replayed on `subscribe(channel, { since })`.
// Types: agentcast.d.ts beside this file.

export const SUBPROTOCOL = "agentcast.v1";

/** Close codes after which a client reconnects (besides 4000-4499). 1005 and 1006: the
 * connection died without a close frame (the network, or the server was killed). */
export const RECONNECT_CODES = Object.freeze([1001, 1005, 1006, 1011, 1012, 1013]);
export const TOKEN_EXPIRED = 4001;
export const PRESENCE_STATUSES = Object.freeze(["online", "away", "busy", "offline"]);
/** Error codes of a refused `subscribe`; the error names the channel. */
const REFUSED_SUBSCRIPTION = ["invalid_channel", "forbidden_channel", "too_many_subscriptions"];

// The characters of an HTTP token (RFC 9110 5.6.2): what a subprotocol may hold.
const TCHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * What a close code tells a client to do: "reconnect", "refresh" (reconnect with a fresh
 * token) or "stop".
 * @param {number | null | undefined} code
 */
export function closeDecision(code) {
  if (code === null || code === undefined) return "reconnect";
  if (code === TOKEN_EXPIRED) return "refresh";
  if ((code >= 4000 && code <= 4499) || RECONNECT_CODES.includes(code)) return "reconnect";
  return "stop";
}

/** Full-jitter exponential back-off: the n-th delay is uniform in
 * [0, min(cap, base * 2^n)) seconds; a connection open for `stable` seconds starts over. */
export class Backoff {
  constructor({ base = 0.5, cap = 20, stable = 60 } = {}) {
    this.base = base;
    this.cap = cap;
    this.stable = stable;
    this.attempt = 0;
  }

  /** The next delay in seconds for `random` drawn from [0, 1); counts an attempt. */
  next(random) {
    const ceiling = this.attempt >= 64 ? this.cap : Math.min(this.cap, this.base * 2 ** this.attempt);
    this.attempt += 1;
    return Math.min(Math.max(random, 0), 1) * ceiling;
  }

  /** A connection ended after `seconds` open: a stable one resets the count. */
  connectedFor(seconds) {
    if (seconds >= this.stable) this.attempt = 0;
  }
}

/** The `exp` claim of a JWT in seconds (unverified: only to schedule a refresh), or null. */
export function jwtExpiry(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    const exp = claims && typeof claims === "object" ? claims.exp : undefined;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/**
 * The WebSocket URL for `url`: absolute (ws:, wss:, http:, https:) or relative to `base`
 * (the page); http(s) becomes ws(s).
 */
export function webSocketUrl(url, base) {
  const resolved = new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  if (resolved.protocol !== "ws:" && resolved.protocol !== "wss:") {
    throw new TypeError(`not a WebSocket URL: ${url}`);
  }
  resolved.hash = "";
  return resolved;
}

/**
 * One logical connection to an agentcast server, across any number of WebSockets.
 * States: "idle" -> "connecting" -> "open" -> ("reconnecting" -> "connecting" -> ...)
 * -> "stopped" (the server said not to come back; see `lastClose`) or "closed" (close()).
 */
export class AgentcastClient {
  constructor(url, options = {}) {
    const o = options;
    const env = globalThis;
    this.url = webSocketUrl(url, env.location ? env.location.href : undefined);
    this._token = o.token ?? null;
    this._getToken = o.getToken ?? null;
    this._tokenIn = o.tokenIn ?? "auto";
    this._reconnect = o.reconnect ?? true;
    this.backoff = new Backoff(o.backoff);
    this._idleTimeout = o.idleTimeout === undefined ? 90 : o.idleTimeout;
    this._refreshMargin = o.refreshMargin ?? 30;
    this._WebSocket = o.WebSocket ?? env.WebSocket;
    this._random = o.random ?? Math.random;
    this._setTimeout = o.setTimeout ?? env.setTimeout.bind(env);
    this._clearTimeout = o.clearTimeout ?? env.clearTimeout.bind(env);
    this._now = o.now ?? (() => Date.now());
    this._handlers = new Map();
    this._channels = new Set(o.channels ?? []);
    // Channels asked for with `since` whose `subscribed` has not come: their resume point,
    // sent in a `subscribe` message (the URL has no place for it).
    this._since = new Map();
    this._presence = o.presence ?? null;
    /** The id of the last message received that had one: where a reconnect resumes. */
    this.lastId = o.since ?? null;
    /** The user id of the last successful `auth`, or null. */
    this.userId = null;
    /** The close that ended the last connection: { code, reason, reconnectIn }. */
    this.lastClose = null;
    /** Resume state of the current connection: null, or the `resume` message's data. */
    this.resumed = null;
    this.state = "idle";
    this._ws = null;
    this._conn = null; // per connection: { openedAt, channels, lastReceived }
    this._timers = { retry: null, idle: null, refresh: null };
  }

  // -- events ----------------------------------------------------------------------------

  /**
   * Call `handler(data, message)` for each message of `type` ("agent_status", "auth"...),
   * or `handler(event)` for the client's own events: "message" (every message), "state",
   * "open", "disconnect". Returns a function that removes the handler.
   */
  on(type, handler) {
    let set = this._handlers.get(type);
    if (!set) this._handlers.set(type, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  _emit(type, ...args) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(...args);
      } catch (error) {
        // One failing handler must not break the connection or the other handlers.
        (globalThis.reportError ?? console.error)(error);
      }
    }
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous });
  }

  // -- the application's calls -------------------------------------------------------------

  /** Open the connection (again after close()). */
  connect() {
    if (this.state === "connecting" || this.state === "open") return this;
    this._clearTimer("retry");
    this.backoff.attempt = 0;
    this._open();
    return this;
  }

  /** Close for good: no reconnect. */
  close(code = 1000, reason = "") {
    this._clearAllTimers();
    const ws = this._ws;
    this._ws = null;
    this._conn = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    const wasActive = this.state !== "closed";
    this._setState("closed");
    if (wasActive) {
      this.lastClose = { code, reason, reconnectIn: null };
      this._emit("disconnect", this.lastClose);
    }
  }

  /** Send one message (an object, sent as JSON). False when no connection is open. */
  send(message) {
    const ws = this._ws;
    if (!ws || this.state !== "open" || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  /** A round-trip check: the server answers `pong`. */
  ping() {
    return this.send({ type: "ping" });
  }

  /** Set this user's presence ("online", "away", "busy", "offline"); sent again after
   * every reconnect, since a new connection starts online. */
  setPresence(status) {
    if (!PRESENCE_STATUSES.includes(status)) {
      throw new RangeError(`presence must be one of ${PRESENCE_STATUSES.join(", ")}`);
    }
    this._presence = status;
    return this._authenticated() && this.send({ type: "user_presence", data: status });
  }

  /** The presence this client last set, or null. */
  get presence() {
    return this._presence;
  }

  /** Subscribe to a channel, now and on every reconnect (in the URL's `channels=`).
   * With `{ since }` (the id of a message seen earlier), the channel's messages after it
   * are replayed first, then `subscribed` says `complete` (false: they could not be
   * replayed, reload) and `replayed`. Sent once authenticated, and on each new connection
   * until that `subscribed` comes; then a channel like the others. */
  subscribe(channel, { since = null } = {}) {
    this._channels.add(channel);
    if (since === null) {
      this._since.delete(channel);
      if (this._authenticated() && !this._conn.channels.has(channel)) {
        this._conn.channels.add(channel);
        this.send({ type: "subscribe", data: { channel } });
      }
      return;
    }
    this._since.set(channel, since);
    if (this._authenticated()) {
      this._conn.channels.add(channel);
      this.send({ type: "subscribe", data: { channel, since } });
    }
  }

  /** Unsubscribe from a channel. */
  unsubscribe(channel) {
    this._channels.delete(channel);
    this._since.delete(channel);
    if (this._authenticated() && this._conn.channels.has(channel)) {
      this._conn.channels.delete(channel);
      this.send({ type: "unsubscribe", data: { channel } });
    }
  }

  /** The channels this client is subscribed to (or will be once connected). */
  get channels() {
    return [...this._channels];
  }

  /** Send a fresh token in band (`auth` with `data.token`); the server answers `auth`.
   * Without `token`, one is asked of `getToken`. */
  async refreshToken(token) {
    const fresh = token ?? (this._getToken ? await this._getToken() : null);
    if (!fresh) return false;
    this._token = fresh;
    return this.send({ type: "auth", data: { token: fresh } });
  }

  // -- connections ------------------------------------------------------------------------

  _authenticated() {
    return this.state === "open" && this._conn !== null && this._conn.authenticated;
  }

  async _open() {
    this._setState("connecting");
    if (this._getToken && this._token === null) {
      try {
        this._token = await this._getToken();
      } catch (error) {
        this._lost(1006, `token provider failed: ${error && error.message ? error.message : error}`);
        return;
      }
      if (this.state !== "connecting") return; // closed meanwhile
    }
    const url = new URL(this.url);
    const token = this._token;
    const inSubprotocol =
      token !== null &&
      (this._tokenIn === "subprotocol" || (this._tokenIn === "auto" && TCHARS.test(token)));
    if (token !== null && !inSubprotocol) url.searchParams.set("token", token);
    if (this.lastId !== null) url.searchParams.set("since", this.lastId);
    const channels = new Set([...this._channels].filter((c) => !this._since.has(c)));
    if (channels.size) url.searchParams.set("channels", [...channels].join(","));
    const protocols = inSubprotocol ? [SUBPROTOCOL, `bearer.${token}`] : [];
    let ws;
    try {
      ws = new this._WebSocket(url.href, protocols);
    } catch (error) {
      // A URL or subprotocol the browser refuses (SyntaxError, SecurityError): a retry
      // would be refused the same way.
      this._lost(1006, `cannot open: ${error && error.message ? error.message : error}`, true);
      return;
    }
    const since = this.lastId;
    this._ws = ws;
    this._conn = { openedAt: null, channels, authenticated: false, since };
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._conn.openedAt = this._now();
      this.resumed = null;
      this._setState("open");
      this._touch();
      this._emit("open", { since, attempt: this.backoff.attempt });
    };
    ws.onmessage = (event) => {
      if (this._ws === ws) this._receive(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._lost(event.code, event.reason || "");
    };
    ws.onerror = () => {}; // a close event follows, with the code
    this._touch(); // a connection that does not open within idleTimeout is given up too
  }

  _receive(text) {
    this._touch();
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return; // not ours to judge: the server sends JSON objects only
    }
    if (!message || typeof message !== "object" || typeof message.type !== "string") return;
    if (typeof message.id === "string") this.lastId = message.id;
    const data = message.data;
    switch (message.type) {
      case "ping":
        this.send({ type: "pong" });
        break;
      case "auth":
        this._onAuth(data);
        break;
      case "resume":
        this.resumed = data ?? null;
        break;
      case "subscribed":
        if (data && typeof data.channel === "string") this._since.delete(data.channel);
        break;
      case "error":
        this._onError(data);
        break;
    }
    this._emit("message", message);
    this._emit(message.type, data, message);
  }

  _onAuth(data) {
    const conn = this._conn;
    if (!data || data.success !== true) return;
    const first = !conn.authenticated;
    conn.authenticated = true;
    this.userId = data.userId ?? null;
    this._scheduleRefresh();
    if (!first) return; // the answer to an in-band refresh
    if (this._presence !== null && this._presence !== "online") {
      this.send({ type: "user_presence", data: this._presence });
    }
    // Subscriptions changed while this connection was being opened, and those asked for
    // with `since` (not in the URL).
    for (const channel of this._channels) {
      if (!conn.channels.has(channel)) {
        conn.channels.add(channel);
        const since = this._since.get(channel);
        this.send({ type: "subscribe", data: since === undefined ? { channel } : { channel, since } });
      }
    }
    for (const channel of [...conn.channels]) {
      if (!this._channels.has(channel)) {
        conn.channels.delete(channel);
        this.send({ type: "unsubscribe", data: { channel } });
      }
    }
  }

  /** A subscription the server refused is dropped, so it is not asked for again (in
   * the URL of the next connection). */
  _onError(data) {
    if (!data || typeof data.channel !== "string" || !REFUSED_SUBSCRIPTION.includes(data.code)) {
      return;
    }
    this._channels.delete(data.channel);
    this._since.delete(data.channel);
    if (this._conn) this._conn.channels.delete(data.channel);
  }

  _lost(code, reason, fatal = false) {
    const conn = this._conn;
    this._ws = null;
    this._conn = null;
    this._clearAllTimers();
    if (conn && conn.openedAt !== null) {
      this.backoff.connectedFor((this._now() - conn.openedAt) / 1000);
    }
    let decision = closeDecision(code);
    if (decision === "refresh" && !this._getToken) decision = "stop";
    if (!this._reconnect || fatal) decision = "stop";
    if (decision === "stop") {
      this.lastClose = { code, reason, reconnectIn: null };
      this._setState("stopped");
      this._emit("disconnect", this.lastClose);
      return;
    }
    // After 4001 the next connection asks the provider for a fresh token, and so does
    // every retry until one connection gets it.
    if (decision === "refresh") this._token = null;
    const delay = this.backoff.next(this._random());
    this.lastClose = { code, reason, reconnectIn: delay };
    this._setState("reconnecting");
    this._emit("disconnect", this.lastClose);
    this._timers.retry = this._setTimeout(() => {
      this._timers.retry = null;
      if (this.state === "reconnecting") this._open();
    }, delay * 1000);
  }

  // -- timers -----------------------------------------------------------------------------

  /** Any message proves the server alive; one silent for idleTimeout is presumed gone. */
  _touch() {
    if (!this._idleTimeout) return;
    this._clearTimer("idle");
    const ws = this._ws;
    this._timers.idle = this._setTimeout(() => {
      this._timers.idle = null;
      if (this._ws !== ws) return;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close();
      this._lost(1006, "server silent");
    }, this._idleTimeout * 1000);
  }

  /** With a token provider and a JWT with `exp`: a fresh token refreshMargin seconds
   * before `exp` (half-way through what is left, if less), sent in band. */
  _scheduleRefresh() {
    this._clearTimer("refresh");
    const exp = this._getToken ? jwtExpiry(this._token) : null;
    if (exp === null) return;
    const left = exp * 1000 - this._now();
    const wait = left > this._refreshMargin * 2000 ? left - this._refreshMargin * 1000 : left / 2;
    const ws = this._ws;
    this._timers.refresh = this._setTimeout(
      () => {
        this._timers.refresh = null;
        if (this._ws === ws) this.refreshToken().catch(() => {});
      },
      Math.max(wait, 0),
    );
  }

  _clearTimer(name) {
    if (this._timers[name] !== null) {
      this._clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _clearAllTimers() {
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
  }
}
