// The official @sqlrooms/duckdb WebSocket connector (unchanged) against duckwire:
// queries, DDL, an Arrow upload, and a cancel. Usage: node dist/compat.mjs ws://127.0.0.1:PORT [TOKEN]
import './record.mjs';
import WebSocket from 'ws';
import * as arrow from 'apache-arrow';
import { createWebSocketDuckDbConnector } from '@sqlrooms/duckdb/dist/connectors/WebSocketDuckDbConnector.js';

globalThis.WebSocket = WebSocket; // Node 20 has no global WebSocket; `ws` is the documented stand-in.

const wsUrl = process.argv[2];
const authToken = process.argv[3];
const assert = (cond, message) => {
  if (!cond) throw new Error(`assertion failed: ${message}`);
};

const connector = createWebSocketDuckDbConnector({ wsUrl, authToken });
await connector.initialize();

// 1. Queries.
const answer = await connector.query('select 42::integer as x, \'hi\' as s');
assert(answer.numRows === 1, 'one row');
assert(answer.getChild('x').get(0) === 42, 'x = 42');
assert(answer.getChild('s').get(0) === 'hi', 's = hi');
const many = await connector.query('select * from range(100000) t(i)');
assert(many.numRows === 100000, '100000 rows');
console.log('queries: ok');

// 2. DDL answers `ok`, which the connector turns into an empty table.
await connector.query('create table numbers as select * from range(10) t(i)');
const count = await connector.query('select count(*)::integer as n from numbers');
assert(count.getChild('n').get(0) === 10, 'table created');
console.log('ddl: ok');

// 3. Arrow upload. This connector version throws on loadArrow over WebSocket, so the upload
//    goes as the protocol's framed `uploadArrow` message on a plain `ws` socket.
let loadArrowError = null;
try {
  await connector.loadArrow(arrow.tableFromArrays({ a: Int32Array.from([1, 2, 3]) }), 'via_connector');
} catch (e) {
  loadArrowError = e.message;
}
console.log(`connector.loadArrow: ${loadArrowError ?? 'ok'}`);
const table = arrow.tableFromArrays({ id: Int32Array.from([1, 2, 3]), name: ['a', 'b', 'c'] });
const ipc = arrow.tableToIPC(table, 'stream');
const header = Buffer.from(JSON.stringify({ type: 'uploadArrow', queryId: 'up1', tableName: 'uploaded' }));
const length = Buffer.alloc(4);
length.writeUInt32BE(header.length);
const raw = new WebSocket(wsUrl, authToken ? { headers: { Authorization: `Bearer ${authToken}` } } : {});
await new Promise((resolve, reject) => { raw.on('open', resolve); raw.on('error', reject); });
const ack = await new Promise((resolve) => {
  raw.on('message', (data) => resolve(JSON.parse(data.toString())));
  raw.send(Buffer.concat([length, header, Buffer.from(ipc)]));
});
raw.close();
assert(ack.type === 'uploadAck' && ack.queryId === 'up1', `uploadAck, got ${JSON.stringify(ack)}`);
const uploaded = await connector.query('select sum(id)::integer as s, string_agg(name, \'\' order by id) as names from uploaded');
assert(uploaded.getChild('s').get(0) === 6, 'uploaded ids');
assert(uploaded.getChild('names').get(0) === 'abc', 'uploaded names');
console.log('arrow upload: ok');

// 4. Cancel: abort a long query through the connector's AbortSignal.
const controller = new AbortController();
const slow = connector.query('select count(*) from range(100000000000) t(i) where i % 7 = 3', { signal: controller.signal });
setTimeout(() => controller.abort(), 200);
let cancelled = false;
try {
  await slow;
} catch (e) {
  cancelled = e.name === 'AbortError';
}
assert(cancelled, 'the query was aborted');
// The server interrupted it: the socket is still usable right away.
const after = await connector.query('select 1 as one');
assert(after.getChild('one').get(0) === 1, 'socket usable after cancel');
console.log('cancel: ok');

await connector.destroy();
console.log(`official @sqlrooms/duckdb connector${authToken ? ' (with token)' : ''}: all checks passed`);
