// The textbook's Node.js stack, written well, with labserver's routes and JSON shapes.
//
//   node server.js [--port 0]      prints {"port": N} on stdout once it listens
//
// One plain `http` server, no framework, no middleware (chapter 12.7.1: every transport on
// one port):
//   POST /publish  {"data": ...}  -> {"id": N}; the event {"id","data","ts"} is serialised ONCE
//                                    and that one buffer is written to every client
//   GET  /poll?after=ID           -> {"events": [...], "last_id": N, "gap": bool}
//   GET  /long-poll?after=ID&timeout=S   held until an event newer than ID, or S seconds
//   GET  /sse                     text/event-stream: retry first, then id/event: news/data blocks
//   GET  /ws                      `ws`: each event one JSON text message, ?after=ID replays
//   /socket.io/                   `socket.io`: io.emit('news', event) for each event
//   GET  /stats                   {"events": {...}, "transports": {name: {open, messages_out}}}
// It is the comparison stack for benchmarks/bench.py, not a teaching server: no origin checks,
// no per-client bounds beyond what ws and socket.io do by default.
'use strict';

const http = require('node:http');
const { performance } = require('node:perf_hooks');
const { WebSocketServer, WebSocket } = require('ws');
const { Server: SocketIOServer } = require('socket.io');

const LOG_SIZE = 1000;
const RETRY_MS = 3000;
const HEARTBEAT_MS = 15000;
const LONG_POLL_DEFAULT_S = 25;
const LONG_POLL_MAX_S = 60;
const MAX_BODY = 64 * 1024;

const log = []; // the newest LOG_SIZE events: {id, json, sse, ws}
let lastId = 0;
const counters = {};
for (const name of ['poll', 'long_poll', 'sse', 'ws', 'socketio']) {
  counters[name] = { requests: 0, messages_out: 0, open: 0 };
}

const nowEpochS = () => (performance.timeOrigin + performance.now()) / 1000;

// --- the event log ----------------------------------------------------------------------

function page(after) {
  const oldest = log.length ? log[0].id : lastId + 1;
  if (after > lastId || after < oldest - 1) return { events: log, gap: true };
  return { events: log.slice(after - oldest + 1), gap: false };
}

function pageBody(after) {
  const p = page(after);
  return `{"events":[${p.events.map((e) => e.json).join(',')}],"last_id":${lastId},"gap":${p.gap}}`;
}

function publish(data) {
  const id = lastId + 1;
  const message = { id, data, ts: nowEpochS() };
  const json = JSON.stringify(message); // serialised once
  const event = {
    id,
    message,
    json,
    ws: Buffer.from(json), // one buffer for every ws client
    sse: Buffer.from(`id: ${id}\nevent: news\ndata: ${json}\n\n`), // one block for every stream
  };
  log.push(event);
  if (log.length > LOG_SIZE) log.shift();
  lastId = id;

  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) {
      client.send(event.ws, { binary: false });
      counters.ws.messages_out++;
    }
  }
  for (const res of sseClients) {
    res.write(event.sse);
    counters.sse.messages_out++;
  }
  answerWaiters();
  // socket.io encodes the packet once per broadcast and writes it to every socket.
  counters.socketio.messages_out += io.of('/').sockets.size;
  io.emit('news', message);
  return id;
}

// --- long polling -------------------------------------------------------------------------

const waiters = new Set(); // {after, res, timer}

function answer(res, body) {
  res.writeHead(200, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
  });
  res.end(body);
}

function answerWaiters() {
  if (waiters.size === 0) return;
  const bodies = new Map(); // one body per distinct cursor
  for (const w of waiters) {
    let body = bodies.get(w.after);
    if (body === undefined) {
      body = pageBody(w.after);
      bodies.set(w.after, body);
    }
    clearTimeout(w.timer);
    counters.long_poll.messages_out += lastId - w.after;
    answer(w.res, body);
  }
  counters.long_poll.open -= waiters.size;
  waiters.clear();
}

function longPoll(req, res, query) {
  const after = parseAfter(query);
  let timeoutS = LONG_POLL_DEFAULT_S;
  if (query.has('timeout')) timeoutS = Number(query.get('timeout'));
  if (after === null || !(timeoutS >= 0 && timeoutS <= LONG_POLL_MAX_S)) {
    return badRequest(res, 'bad after or timeout');
  }
  const p = page(after);
  if (p.events.length || p.gap || timeoutS === 0) return answer(res, pageBody(after));
  const waiter = { after, res, timer: null };
  waiter.timer = setTimeout(() => {
    waiters.delete(waiter);
    counters.long_poll.open--;
    answer(res, pageBody(after));
  }, timeoutS * 1000);
  waiters.add(waiter);
  counters.long_poll.open++;
  req.on('close', () => {
    if (waiters.delete(waiter)) {
      clearTimeout(waiter.timer);
      counters.long_poll.open--;
    }
  });
}

// --- SSE ----------------------------------------------------------------------------------

const sseClients = new Set();

function sse(req, res, query) {
  const raw = req.headers['last-event-id'] || query.get('last_event_id');
  const last = raw ? Number(raw) : null;
  res.writeHead(200, {
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-cache',
    'X-Accel-Buffering': 'no',
  });
  res.write(`retry: ${RETRY_MS}\n\n`);
  if (last !== null && Number.isInteger(last)) {
    const p = page(last);
    if (p.gap) {
      const oldest = log.length ? log[0].id : lastId + 1;
      res.write(`event: gap\ndata: {"after":${last},"oldest":${oldest}}\n\n`);
    }
    for (const e of p.events) res.write(e.sse);
  }
  sseClients.add(res);
  counters.sse.open++;
  req.on('close', () => {
    if (sseClients.delete(res)) counters.sse.open--;
  });
}

setInterval(() => {
  for (const res of sseClients) res.write(': ping\n\n');
}, HEARTBEAT_MS).unref();

// --- HTTP ---------------------------------------------------------------------------------

function parseAfter(query) {
  const text = query.get('after') || '0';
  return /^[0-9]{1,18}$/.test(text) ? Number(text) : null;
}

function badRequest(res, reason) {
  const body = JSON.stringify({ error: reason });
  res.writeHead(400, { 'Content-Type': 'application/json', 'Content-Length': body.length });
  res.end(body);
}

function stats() {
  return JSON.stringify({
    events: { published: lastId, last_id: lastId, log_size: log.length },
    transports: counters,
  });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const path = url.pathname;
  if (req.method === 'POST' && path === '/publish') {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    });
    req.on('end', () => {
      if (size > MAX_BODY) return badRequest(res, 'body too large');
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks));
      } catch {
        return badRequest(res, 'body must be valid JSON');
      }
      if (body === null || typeof body !== 'object' || !('data' in body)) {
        return badRequest(res, 'body must be {"data": <any JSON>}');
      }
      answer(res, `{"id":${publish(body.data)}}`);
    });
    return;
  }
  if (req.method !== 'GET') return badRequest(res, 'method');
  const query = url.searchParams;
  if (path === '/poll') {
    counters.poll.requests++;
    const after = parseAfter(query);
    if (after === null) return badRequest(res, 'bad after');
    counters.poll.messages_out += page(after).events.length;
    return answer(res, pageBody(after));
  }
  if (path === '/long-poll') {
    counters.long_poll.requests++;
    return longPoll(req, res, query);
  }
  if (path === '/sse') {
    counters.sse.requests++;
    return sse(req, res, query);
  }
  if (path === '/stats') return answer(res, stats());
  res.writeHead(404, { 'Content-Type': 'application/json' });
  res.end('{"error":"not found"}');
});

// --- WebSocket: ws, routed by path on the same server -------------------------------------

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  if (req.url.startsWith('/ws')) {
    counters.ws.requests++;
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  } // /socket.io/ upgrades are engine.io's (it listens on 'upgrade' itself)
});
wss.on('connection', (ws, req) => {
  counters.ws.open++;
  const after = parseAfter(new URL(req.url, 'http://x').searchParams);
  if (req.url.includes('after=') && after !== null) {
    for (const e of page(after).events) ws.send(e.ws, { binary: false });
  }
  ws.on('message', (data, isBinary) => {
    if (isBinary) return ws.close(1003, 'binary messages are not accepted: send JSON text');
    const text = data.toString();
    if (text.startsWith('{')) {
      try {
        const value = JSON.parse(text);
        if (value && 'echo' in value) ws.send(JSON.stringify({ echo: value.echo }));
      } catch {
        ws.close(1007, 'text starting with { or [ must be valid JSON');
      }
    }
  });
  ws.on('close', () => counters.ws.open--);
});

// --- Socket.IO ----------------------------------------------------------------------------

const io = new SocketIOServer(server, { path: '/socket.io/', serveClient: false });
io.on('connection', (socket) => {
  counters.socketio.open++;
  socket.on('reply', (_data, ack) => {
    if (typeof ack === 'function') ack({ ok: true });
  });
  socket.on('disconnect', () => counters.socketio.open--);
});

// --- start --------------------------------------------------------------------------------

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
process.stdin.on('end', () => process.exit(0)); // the parent went away: stop
process.stdin.resume();
