// The Node `ws` peer: the benchmark workload served the way a `ws` (version 8) user would.
//
// The same workload and bytes on the wire as peer_websockets.py (see there and _peers.py):
//
// * ws://HOST:PORT/<any path>?token=T: the dev authenticator's rule (1-128 characters of
//   [A-Za-z0-9_.-] authenticate as user_T); `auth`, `presence_state`, and `user_presence`
//   to every authenticated connection when a user comes online (or goes offline,
//   --presence-grace seconds after its last connection closed; at once for 0);
// * {"type":"ping"} is answered with `pong`;
// * POST /api/notifications on --pub-port (Node's http module, one request per
//   connection): a JSON array of up to 1,000 {"level","message"} objects, or one object;
//   each item sent to every authenticated connection (encoded once, ws.send per client);
//   answer 202 {"ids": [...], "delivered": N};
// * with --inproc-count N: on SIGUSR2, N notifications published in-process, --inproc-rate
//   a second, each carrying its scheduled time (t= microseconds of CLOCK_MONOTONIC, which
//   is what process.hrtime uses on Linux).
//
// No compression (perMessageDeflate off), no heartbeat. `ws` is installed by run.py itself
// (npm install ws@8 into benchmarks/.build/node), not a project dependency.
// Run: node benchmarks/peer_node_ws.js --port 8001 --pub-port 8002 --api-key K
'use strict';

const http = require('http');
const path = require('path');

const modules = process.env.AGENTCAST_BENCH_NODE_MODULES ||
  path.join(__dirname, '.build', 'node', 'node_modules');
const { WebSocketServer } = require(path.join(modules, 'ws'));

const args = {
  host: '127.0.0.1', port: 8001, 'pub-port': 8002, 'api-key': null, 'presence-grace': 5,
  'inproc-rate': 1000, 'inproc-count': 0, 'msg-bytes': 200,
};
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '');
  if (!(key in args)) throw new Error(`unknown option --${key}`);
  args[key] = process.argv[i + 1];
}
const PORT = Number(args.port);
const PUB_PORT = Number(args['pub-port']);
const GRACE = Number(args['presence-grace']);
const TOKEN = /^[A-Za-z0-9_.-]{1,128}$/;
const LEVELS = new Set(['info', 'success', 'warning', 'error']);
const ENVELOPE = 115;

let seq = 0n;
function nextId() {
  seq += 1n;
  return seq.toString(16).padStart(16, '0');
}
const iso = () => new Date().toISOString();

const authenticated = new Set();
const users = new Map(); // user id -> Set of sockets
const leaving = new Map(); // user id -> timer

function broadcast(text) {
  const data = Buffer.from(text);
  for (const ws of authenticated) ws.send(data, { binary: false });
  return authenticated.size;
}

function presence(userId, status) {
  broadcast(JSON.stringify({
    type: 'user_presence', data: { userId, status }, timestamp: iso(), id: nextId(),
  }));
}

function gone(userId) {
  leaving.delete(userId);
  users.delete(userId);
  presence(userId, 'offline');
}

function notification(level, message, now) {
  return JSON.stringify({
    type: 'notification', data: { level, message }, timestamp: now, id: nextId(),
  });
}

const wss = new WebSocketServer({
  host: args.host, port: PORT, perMessageDeflate: false, backlog: 4096,
});
wss.on('connection', (ws, req) => {
  const query = new URL(req.url, 'http://x').searchParams;
  const token = query.get('token') || '';
  const userId = TOKEN.test(token) ? `user_${token}` : null;
  const now = iso();
  ws.on('message', (message, isBinary) => {
    if (isBinary) return;
    let kind = null;
    try {
      kind = JSON.parse(message).type;
    } catch (e) {
      return;
    }
    if (kind === 'ping') ws.send(JSON.stringify({ type: 'pong', timestamp: iso() }));
  });
  ws.on('error', () => {});
  if (userId === null) {
    ws.send(JSON.stringify({
      type: 'auth', data: { success: false, error: 'Invalid token' }, timestamp: now,
    }));
    return;
  }
  ws.send(JSON.stringify({ type: 'auth', data: { success: true, userId }, timestamp: now }));
  const online = [...users.keys()].map((u) => ({ userId: u, status: 'online' }));
  ws.send(JSON.stringify({ type: 'presence_state', data: { users: online }, timestamp: now }));
  authenticated.add(ws);
  let sessions = users.get(userId);
  if (sessions === undefined) {
    sessions = new Set();
    users.set(userId, sessions);
  }
  sessions.add(ws);
  const pending = leaving.get(userId);
  if (pending !== undefined) {
    clearTimeout(pending);
    leaving.delete(userId);
  } else if (sessions.size === 1) {
    presence(userId, 'online');
  }
  ws.on('close', () => {
    authenticated.delete(ws);
    sessions.delete(ws);
    if (sessions.size === 0) {
      if (GRACE <= 0) gone(userId);
      else leaving.set(userId, setTimeout(() => gone(userId), GRACE * 1000));
    }
  });
});

function answer(res, status, body) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, {
    'content-type': 'application/json', 'content-length': data.length, connection: 'close',
  });
  res.end(data);
}

const api = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    if (req.method !== 'POST' || req.url !== '/api/notifications') {
      answer(res, 404, { error: 'not found' });
      return;
    }
    if (args['api-key'] !== null) {
      const given = (req.headers.authorization || '').replace(/^Bearer /, '').trim();
      if (given !== args['api-key']) {
        answer(res, 401, { error: 'missing or invalid API key' });
        return;
      }
    }
    let items;
    try {
      items = JSON.parse(Buffer.concat(chunks));
    } catch (e) {
      answer(res, 400, { error: 'bad request' });
      return;
    }
    if (!Array.isArray(items)) items = [items];
    if (items.length === 0 || items.length > 1000) {
      answer(res, 400, { error: 'a batch holds 1 to 1000 items' });
      return;
    }
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      if (!(item && LEVELS.has(item.level) && typeof item.message === 'string')) {
        answer(res, 400, { error: `item ${i}: invalid notification` });
        return;
      }
    }
    const now = iso();
    const ids = [];
    let delivered = 0;
    for (const item of items) {
      const text = notification(item.level, item.message, now);
      ids.push(seq.toString(16).padStart(16, '0'));
      delivered += broadcast(text);
    }
    answer(res, 202, { ids, delivered });
  });
});
api.listen({ host: args.host, port: PUB_PORT, backlog: 4096 });

// The latency scenario's in-process publisher.
const inprocCount = Number(args['inproc-count']);
const inprocRate = Number(args['inproc-rate']);
const msgBytes = Number(args['msg-bytes']);
const monotonicUs = () => Number(process.hrtime.bigint() / 1000n);

function inprocText(n, atUs) {
  let text = `seq=${String(n).padStart(8, '0')} t=${atUs.toFixed(0)} `;
  const size = msgBytes - ENVELOPE;
  for (let k = text.length; k < size; k++) text += String.fromCharCode(97 + (k % 26));
  return text;
}

if (inprocCount > 0) {
  process.on('SIGUSR2', () => {
    const t0 = monotonicUs();
    const interval = 1e6 / inprocRate;
    let n = 0;
    const step = () => {
      let now = monotonicUs();
      while (n < inprocCount && t0 + n * interval <= now) {
        broadcast(notification('info', inprocText(n, t0 + n * interval), iso()));
        n += 1;
        now = monotonicUs();
      }
      if (n < inprocCount) setTimeout(step, Math.max(0, (t0 + n * interval - now) / 1000));
    };
    step();
  });
}

wss.on('listening', () => {
  console.log(`node ws peer listening on ws://${args.host}:${PORT}/ws`);
});
