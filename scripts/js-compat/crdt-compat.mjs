// The official @sqlrooms/crdt WebSocket sync connector (unchanged) with loro-crdt against
// duckwire --sync: two and three documents converge, a late joiner gets the state, 200 rapid
// edits converge, and (when DUCKWIRE_BIN is set) a client reconnects after a server restart
// with a file database and keeps its state.
// Usage: node dist/crdt-compat.mjs ws://127.0.0.1:PORT [TOKEN]
import './record.mjs';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { LoroDoc } from 'loro-crdt';
import { open as openRoom, same, until } from './crdt-sync.mjs';

const token = process.argv[3];
/** Connects `doc` to `roomId` with this run's token. */
const open = (url, roomId, doc, clientId, maxRetries = 0) =>
  openRoom(url, roomId, doc, clientId, { maxRetries, token });
const assert = (cond, message) => {
  if (!cond) throw new Error(`assertion failed: ${message}`);
};

async function convergence(url) {
  const roomId = `room-${Date.now()}`;
  const a = new LoroDoc();
  const b = new LoroDoc();
  const first = open(url, roomId, a, 'client-a');
  const second = open(url, roomId, b, 'client-b');
  await Promise.all([first.opened, second.opened]);

  a.getMap('cells').set('a1', 'hello from a');
  a.commit();
  await until(() => b.getMap('cells').get('a1') === 'hello from a', "b to receive a's edit");
  b.getMap('cells').set('b1', 42);
  b.commit();
  await until(() => a.getMap('cells').get('b1') === 42, "a to receive b's edit");
  console.log('two documents converge: ok');

  const c = new LoroDoc();
  const third = open(url, roomId, c, 'client-c');
  await third.opened;
  await until(() => c.getMap('cells').get('a1') === 'hello from a' && c.getMap('cells').get('b1') === 42, 'the late joiner to get the state');
  console.log('a late joiner gets the state: ok');

  // Concurrent edits from all three, on the same text and on the same map key.
  for (const [doc, name] of [[a, 'a'], [b, 'b'], [c, 'c']]) {
    doc.getText('text').insert(0, name);
    doc.getMap('cells').set('shared', name);
    doc.commit();
  }
  await until(() => same(a, b) && same(b, c) && a.getText('text').length === 3, 'three documents to converge');
  console.log('three documents converge: ok');

  // 200 rapid edits from two writers, without waiting in between.
  for (let i = 0; i < 100; i++) {
    a.getList('log').push(`a${i}`);
    a.commit();
    b.getList('log').push(`b${i}`);
    b.commit();
  }
  await until(() => a.getList('log').length === 200 && same(a, b) && same(b, c), '200 rapid edits to converge');
  console.log('200 rapid edits converge: ok');

  for (const x of [first, second, third]) await x.connector.disconnect();
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function startServer(bin, port, db) {
  // The connector seeds an empty room with a client snapshot (its edits made before the
  // join are only in that snapshot); with a file database the server accepts that only
  // with --allow-client-snapshots (PROTOCOL §6, as sqlrooms-server).
  const args = ['--port', String(port), '--sync', '--db-path', db, '--allow-client-snapshots', '--log-level', 'warn'];
  if (token) args.push('--auth-token', token);
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      if (chunk.toString().includes('listening on')) resolve(child);
    });
    child.on('exit', (code) => reject(new Error(`duckwire exited with ${code}`)));
  });
}

async function restart(bin) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duckwire-crdt-restart-'));
  const db = path.join(dir, 'app.duckdb');
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}`;
  let server = await startServer(bin, port, db);
  const doc = new LoroDoc();
  const client = open(url, 'durable', doc, 'client-durable', 1000);
  await client.opened;
  doc.getMap('cells').set('before', 'restart');
  doc.commit();
  // A second member sees the edit: the server has it.
  const witness = new LoroDoc();
  const watcher = open(url, 'durable', witness, 'client-witness');
  await watcher.opened;
  await until(() => witness.getMap('cells').get('before') === 'restart', 'the server to hold the edit');
  await watcher.connector.disconnect();

  const exited = new Promise((resolve) => server.once('exit', resolve));
  server.kill('SIGTERM');
  assert((await exited) === 0, 'SIGTERM exits 0');
  server = await startServer(bin, port, db);
  const reopenedAt = client.statuses.length;
  await until(() => client.statuses.slice(reopenedAt).includes('open'), 'the client to reconnect');
  doc.getMap('cells').set('after', 'restart');
  doc.commit();

  const fresh = new LoroDoc();
  const newcomer = open(url, 'durable', fresh, 'client-fresh');
  await newcomer.opened;
  await until(() => fresh.getMap('cells').get('before') === 'restart' && fresh.getMap('cells').get('after') === 'restart', 'the restarted room to hold both edits');
  assert(doc.getMap('cells').get('before') === 'restart', 'the client kept its state');
  console.log('a client reconnects after a server restart and keeps its state: ok');
  await newcomer.connector.disconnect();
  await client.connector.disconnect();
  const stopped = new Promise((resolve) => server.once('exit', resolve));
  server.kill('SIGTERM');
  await stopped;
  fs.rmSync(dir, { recursive: true, force: true });
}

await convergence(process.argv[2]);
if (process.env.DUCKWIRE_BIN) await restart(process.env.DUCKWIRE_BIN);
console.log(`official @sqlrooms/crdt sync connector${token ? ' (with token)' : ''}: all checks passed`);
