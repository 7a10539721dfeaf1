// The Node baseline: a `ws` broadcast server, written as ws users write one.
// No auth; sends {"type":"connected"} on open; broadcasts with client.send(text) to every
// open client.  Same trigger protocol as the gateway's benchmark hook (realtime/benchhook.py):
//   burst N SIZE   N events in one callback
//   spread N SIZE  one event per event-loop turn (setImmediate chained)
//   stamp SIZE T   one event whose "sent" field is T
// Usage: node benchmarks/node_ws_server.js WS_PORT TRIGGER_PORT
'use strict';
const net = require('net');
const { WebSocketServer, WebSocket } = require('ws');

const [wsPort, triggerPort] = process.argv.slice(2).map(Number);
const wss = new WebSocketServer({ host: '127.0.0.1', port: wsPort, backlog: 4096,
                                  perMessageDeflate: false, clientTracking: true });
wss.on('connection', (ws) => {
  ws.send('{"type":"connected"}');
  ws.on('error', () => {});
});

function benchMessage(seq, size, sent) {
  const base = { type: 'bench', seq: String(seq).padStart(8, '0'), sent: sent || '0', pad: '' };
  const bare = Buffer.byteLength(JSON.stringify(base));
  base.pad = 'x'.repeat(Math.max(0, size - bare));
  return JSON.stringify(base);
}

function broadcast(text) {
  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) client.send(text);
  }
}

const trigger = net.createServer((socket) => {
  let buffer = '';
  socket.on('data', (chunk) => {
    buffer += chunk.toString('ascii');
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      const words = buffer.slice(0, i).trim().split(/\s+/);
      buffer = buffer.slice(i + 1);
      if (words[0] === 'burst') {
        const count = Number(words[1]), size = Number(words[2]);
        for (let seq = 0; seq < count; seq++) broadcast(benchMessage(seq, size));
        socket.write('ok burst\n');
      } else if (words[0] === 'spread') {
        const count = Number(words[1]), size = Number(words[2]);
        const step = (seq) => {
          if (seq >= count) { socket.write('ok spread\n'); return; }
          broadcast(benchMessage(seq, size));
          setImmediate(step, seq + 1);
        };
        step(0);
      } else if (words[0] === 'stamp') {
        broadcast(benchMessage(0, Number(words[1]), words[2]));
        socket.write('ok stamp\n');
      }
    }
  });
  socket.on('error', () => {});
});
trigger.listen(triggerPort, '127.0.0.1', () => {
  wss.on('listening', () => {});
  console.log('ready');
});
