// The agentcast dashboard: the page at / on the agentcast client (agentcast.js).
// Messages only update the state below; the page is drawn once per animation frame from
// what changed, so a burst of a thousand agent updates costs a few redraws, not a
// thousand. Everything is written with textContent (no HTML from messages).
import { AgentcastClient } from "./agentcast.js";

const MAX_NOTIFICATIONS = 100;
const MAX_CHAT_LINES = 200;
const TOKEN_KEY = "agentcast.token";
const STATUS_ORDER = { busy: 0, online: 1, away: 2, offline: 3 };
const LABELS = { online: "Online", away: "Away", busy: "Busy", offline: "Offline" };

const $ = (id) => document.getElementById(id);
const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};
const clock = (iso) => {
  const date = iso ? new Date(iso) : new Date();
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString();
};

// -- state, changed by messages ----------------------------------------------------------

const state = {
  agents: new Map(), // agentName -> latest agent_status data
  dirtyAgents: new Set(),
  notifications: [], // new entries since the last frame
  people: new Map(), // userId -> status
  peopleDirty: false,
  chats: new Map(), // conversationId -> [chat_message data]
  newChat: new Map(), // conversationId -> count of lines not yet drawn
  unread: new Map(), // conversationId -> lines arrived while another was shown
  conversation: "",
  header: true,
  renders: 0,
};
let client = null;
let frame = 0;

function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

function setAgent(data) {
  if (!data || typeof data.agentName !== "string") return;
  state.agents.set(data.agentName, data);
  state.dirtyAgents.add(data.agentName);
  schedule();
}

function addNotification(entry) {
  state.notifications.push(entry);
  schedule();
}

function setPerson(userId, status) {
  state.people.set(userId, status);
  state.peopleDirty = true;
  schedule();
}

function addChat(data) {
  if (!data || typeof data.conversationId !== "string") return;
  const id = data.conversationId;
  let lines = state.chats.get(id);
  if (!lines) state.chats.set(id, (lines = []));
  lines.push(data);
  if (lines.length > MAX_CHAT_LINES) lines.splice(0, lines.length - MAX_CHAT_LINES);
  if (!state.conversation) state.conversation = id;
  if (id === state.conversation) state.newChat.set(id, (state.newChat.get(id) ?? 0) + 1);
  else state.unread.set(id, (state.unread.get(id) ?? 0) + 1);
  state.chatDirty = true;
  schedule();
}

// -- drawing, once a frame -----------------------------------------------------------------

const agentRows = new Map(); // agentName -> { row, state, task, progress, percent }

function render() {
  frame = 0;
  state.renders += 1;
  document.body.dataset.renders = String(state.renders);
  if (state.header) drawHeader();
  if (state.dirtyAgents.size) drawAgents();
  if (state.notifications.length) drawNotifications();
  if (state.peopleDirty) drawPeople();
  if (state.chatDirty) drawChat();
}

function drawHeader() {
  state.header = false;
  const pill = $("connection");
  const s = client ? client.state : "idle";
  pill.dataset.state = s;
  const last = client && client.lastClose;
  const why = last ? ` (${last.reason || "connection lost"}, code ${last.code})` : "";
  if (s === "open") {
    pill.textContent = client.userId ? `Connected as ${client.userId}` : "Connected, authenticating";
  } else if (s === "connecting") {
    pill.textContent = client.backoff.attempt ? `Reconnecting: attempt ${client.backoff.attempt}` : "Connecting";
  } else if (s === "reconnecting") {
    pill.textContent = `Reconnecting in ${last.reconnectIn.toFixed(1)} s${why}`;
  } else if (s === "stopped") {
    pill.textContent = `Disconnected${why}`;
  } else {
    pill.textContent = "Not connected";
  }
  $("whoami").textContent = client && client.userId ? client.userId : "";
  // The server said not to come back (1008, 4500+...): only a person decides to retry.
  $("reconnect").hidden = s !== "stopped";
}

function drawAgents() {
  const body = $("agent-rows");
  const names = [...state.dirtyAgents];
  state.dirtyAgents.clear();
  for (const name of names) {
    const data = state.agents.get(name);
    let cells = agentRows.get(name);
    if (!cells) {
      cells = newAgentRow(name);
      agentRows.set(name, cells);
      // Keep rows in name order.
      const after = [...agentRows.keys()].filter((other) => other > name).sort()[0];
      body.insertBefore(cells.row, after === undefined ? null : agentRows.get(after).row);
    }
    const agentState = String(data.state ?? "");
    cells.row.dataset.state = agentState;
    cells.state.textContent = agentState;
    cells.state.className = `state state-${agentState}`;
    cells.task.textContent = data.currentTask ?? "";
    const progress = typeof data.progress === "number" ? Math.max(0, Math.min(100, data.progress)) : null;
    cells.progress.hidden = progress === null;
    if (progress === null) {
      cells.percent.textContent = "";
    } else {
      cells.progress.value = progress;
      cells.percent.textContent = `${Math.round(progress)} %`;
    }
  }
  $("agent-count").textContent = `(${state.agents.size})`;
  $("agents-empty").hidden = state.agents.size > 0;
}

function newAgentRow(name) {
  const row = el("tr");
  row.dataset.agent = name;
  const head = el("th", "", name);
  head.scope = "row";
  const stateCell = el("td");
  const stateText = el("span", "state");
  stateCell.append(stateText);
  const task = el("td", "task");
  const progressCell = el("td", "progress");
  const progress = el("progress");
  progress.max = 100;
  progress.setAttribute("aria-label", `Progress of ${name}`);
  const percent = el("span", "percent");
  progressCell.append(progress, " ", percent);
  row.append(head, stateCell, task, progressCell);
  return { row, state: stateText, task, progress, percent };
}

function drawNotifications() {
  const list = $("notifications");
  const entries = state.notifications.splice(0);
  for (const entry of entries.slice(-MAX_NOTIFICATIONS)) {
    const item = el("li", entry.gap ? "gap" : `level-${entry.level}`);
    item.dataset.level = entry.level ?? "";
    item.append(el("time", "", entry.time));
    if (!entry.gap) item.append(el("span", "level", entry.level));
    item.append(el("span", "text", entry.message));
    list.prepend(item);
  }
  while (list.children.length > MAX_NOTIFICATIONS) list.lastElementChild.remove();
  $("notifications-empty").hidden = list.children.length > 0;
}

function drawPeople() {
  state.peopleDirty = false;
  const list = $("people");
  const people = [...state.people].sort(
    ([a, s], [b, t]) => (STATUS_ORDER[s] ?? 9) - (STATUS_ORDER[t] ?? 9) || a.localeCompare(b),
  );
  const items = people.map(([userId, status]) => {
    const item = el("li", `status-${status}`);
    item.dataset.user = userId;
    item.dataset.status = status;
    const dot = el("span", "dot");
    dot.setAttribute("aria-hidden", "true");
    const you = client && userId === client.userId ? " (you)" : "";
    item.append(dot, el("span", "user", userId + you), el("span", "status-label", LABELS[status] ?? status));
    return item;
  });
  list.replaceChildren(...items);
}

function drawChat() {
  state.chatDirty = false;
  const select = $("conversation");
  const ids = [...state.chats.keys()].sort();
  if (ids.length) {
    select.disabled = false;
    const options = ids.map((id) => {
      const unread = state.unread.get(id) ?? 0;
      const option = el("option", "", unread ? `${id} (${unread} new)` : id);
      option.value = id;
      option.selected = id === state.conversation;
      return option;
    });
    select.replaceChildren(...options);
  }
  const list = $("chat");
  const id = state.conversation;
  const lines = state.chats.get(id) ?? [];
  const fresh = state.newChat.get(id);
  if (fresh === undefined || list.dataset.conversation !== id) {
    list.replaceChildren(...lines.map(chatLine));
  } else {
    list.append(...lines.slice(-fresh).map(chatLine));
    while (list.children.length > MAX_CHAT_LINES) list.firstElementChild.remove();
  }
  list.dataset.conversation = id;
  state.newChat.clear();
}

function chatLine(data) {
  const item = el("li");
  item.dataset.message = String(data.messageId ?? "");
  item.append(el("time", "", clock(data.timestamp)), el("span", "sender", String(data.sender ?? "")));
  item.append(el("span", "text", String(data.content ?? "")));
  return item;
}

// -- the connection --------------------------------------------------------------------------

function endpoint() {
  const meta = document.querySelector('meta[name="agentcast-endpoint"]');
  return new URL(meta ? meta.content : "ws", location.href);
}

function start(token) {
  $("login").hidden = true;
  $("panels").hidden = false;
  $("me").hidden = false;
  client = new AgentcastClient(endpoint(), { token, presence: $("presence").value });
  const header = () => {
    state.header = true;
    schedule();
  };
  client.on("state", header);
  client.on("disconnect", header);
  client.on("open", ({ since }) => {
    // A server that keeps history follows up with `resume` (shown below); one that does
    // not says nothing, and the page says only when it came back.
    $("resume").textContent = since ? `Reconnected at ${clock()}` : "";
    header();
  });
  client.on("auth", (data) => {
    header();
    if (!data || !data.success) {
      const reason = (data && data.error) || "authentication failed";
      stop();
      showLogin(`Authentication failed: ${reason}`);
    }
  });
  client.on("presence_state", (data) => {
    state.people.clear();
    for (const user of (data && data.users) || []) state.people.set(user.userId, user.status);
    state.peopleDirty = true;
    schedule();
  });
  client.on("user_presence", (data) => data && setPerson(data.userId, data.status));
  client.on("agent_state", (data) => {
    for (const agent of (data && data.agents) || []) setAgent(agent);
  });
  client.on("agent_status", setAgent);
  client.on("chat_message", addChat);
  client.on("notification", (data, message) => {
    if (data) addNotification({ level: data.level, message: data.message, time: clock(message.timestamp) });
  });
  client.on("resume", (data) => {
    if (data && data.complete) {
      const n = data.replayed ?? 0;
      $("resume").textContent = `Resumed: ${n} missed message${n === 1 ? "" : "s"} replayed`;
    } else {
      $("resume").textContent = "History gap: messages missed while disconnected could not be replayed";
      addNotification({ gap: true, message: "Some messages may be missing here (history gap).", time: clock() });
    }
  });
  client.connect();
  header();
}

function stop() {
  if (client) client.close();
  client = null;
  state.header = true;
  schedule();
}

function showLogin(error = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  $("login").hidden = false;
  $("panels").hidden = true;
  $("me").hidden = true;
  $("login-error").textContent = error;
  $("token").focus();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  $("token").value = "";
  sessionStorage.setItem(TOKEN_KEY, token);
  start(token);
});

$("presence").addEventListener("change", (event) => {
  if (client) client.setPresence(event.target.value);
});

$("reconnect").addEventListener("click", () => {
  if (client) client.connect();
});

$("disconnect").addEventListener("click", () => {
  stop();
  showLogin();
});

$("conversation").addEventListener("change", (event) => {
  state.conversation = event.target.value;
  state.unread.delete(state.conversation);
  state.newChat.clear();
  state.chatDirty = true;
  schedule();
});

// The token: from the address (?token=..., then removed from it, so it is not left in
// the history or shared with a link), from this tab's session, or from the form.
const params = new URLSearchParams(location.search);
const fromUrl = params.get("token");
if (fromUrl !== null) {
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  sessionStorage.setItem(TOKEN_KEY, fromUrl);
}
const token = fromUrl ?? sessionStorage.getItem(TOKEN_KEY);
if (token) start(token);
else showLogin();
