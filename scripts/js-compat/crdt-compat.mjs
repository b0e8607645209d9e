// The official @sqlrooms/crdt WebSocket sync connector (unchanged) against duckwire --sync:
// two documents in one room converge through the server, and a late joiner gets the state.
// Usage: node dist/crdt-compat.mjs ws://127.0.0.1:PORT [TOKEN]
import './record.mjs';
import WebSocket from 'ws';
import { LoroDoc } from 'loro-crdt';
import { createWebSocketSyncConnector } from '@sqlrooms/crdt/dist/sync/webSocketSyncConnector.js';

const url = process.argv[2];
const token = process.argv[3];
const roomId = `room-${Date.now()}`;
const createSocket = (u, protocols) => new WebSocket(u, protocols);

function open(doc, clientId) {
  const connector = createWebSocketSyncConnector({ url, roomId, clientId, createSocket, maxRetries: 0, token });
  const opened = new Promise((resolve, reject) => {
    connector.setStatusListener((status) => {
      if (status === 'open') resolve();
      if (status === 'error') reject(new Error('sync connector error'));
    });
  });
  connector.connect(doc);
  return { connector, opened };
}

/** Waits until `check()` holds, polling the event loop; fails after `ms`. */
async function until(check, what, ms = 10000) {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const a = new LoroDoc();
const b = new LoroDoc();
const first = open(a, 'client-a');
const second = open(b, 'client-b');
await Promise.all([first.opened, second.opened]);

a.getMap('cells').set('a1', 'hello from a');
a.commit();
await until(() => b.getMap('cells').get('a1') === 'hello from a', 'b to receive a\'s edit');
b.getMap('cells').set('b1', 42);
b.commit();
await until(() => a.getMap('cells').get('b1') === 42, 'a to receive b\'s edit');
console.log('two clients converge: ok');

const late = new LoroDoc();
const third = open(late, 'client-late');
await third.opened;
await until(() => late.getMap('cells').get('a1') === 'hello from a' && late.getMap('cells').get('b1') === 42, 'the late joiner to get the snapshot');
console.log('late joiner receives the room snapshot: ok');

for (const c of [first, second, third]) await c.connector.disconnect();
console.log(`official @sqlrooms/crdt sync connector${token ? ' (with token)' : ''}: all checks passed`);
