// The official @sqlrooms/duckdb 0.29.0 WebSocket connector (unchanged, bundled from the
// registry's package) against duckwire: many column types, Arrow upload via loadArrow,
// abort -> cancel, errors, 50 concurrent queries, auth token.
// Usage: node dist/compat.mjs ws://127.0.0.1:PORT [TOKEN]
import './record.mjs';
import WebSocket from 'ws';
import * as arrow from 'apache-arrow';
import { createWebSocketDuckDbConnector } from './vendor/duckdb/package/dist/connectors/WebSocketDuckDbConnector.js';

globalThis.WebSocket = WebSocket; // Node 20 has no global WebSocket; `ws` is the documented stand-in.

const wsUrl = process.argv[2];
const authToken = process.argv[3];
const assert = (cond, message) => {
  if (!cond) throw new Error(`assertion failed: ${message}`);
};

const connector = createWebSocketDuckDbConnector({ wsUrl, authToken });
await connector.initialize();

// 1. Column types, read back through apache-arrow.
const typed = await connector.query(`
  select 42::integer as i, 9007199254740993::bigint as big, 1.5::double as d,
         12.34::decimal(10,2) as dec, 'hé'::varchar as s, true as b,
         date '2024-02-29' as day, timestamp '2024-01-02 03:04:05' as ts,
         [1, 2, 3] as list, {'x': 1, 'y': 'two'} as struct, null::integer as nothing,
         'ab'::blob as bytes, interval 2 day as span, uuid '12345678-1234-5678-1234-567812345678' as id`);
const row = typed.get(0);
assert(row.i === 42, 'integer');
assert(row.big === 9007199254740993n, 'bigint stays exact');
assert(row.d === 1.5, 'double');
assert(Number(typed.getChild('dec').get(0)) !== 0, 'decimal present');
assert(row.s === 'hé', 'varchar');
assert(row.b === true, 'boolean');
assert(row.day === Date.UTC(2024, 1, 29), `date, got ${row.day}`);
assert(row.ts === Date.UTC(2024, 0, 2, 3, 4, 5), `timestamp, got ${row.ts}`);
assert([...row.list].map(Number).join() === '1,2,3', 'list');
assert(row.struct.x === 1 && row.struct.y === 'two', 'struct');
assert(row.nothing === null, 'null');
assert(row.bytes instanceof Uint8Array && row.bytes.length === 2, 'blob');
assert(row.id !== null, 'uuid');
const many = await connector.query('select * from range(100000) t(i)');
assert(many.numRows === 100000, '100000 rows');
// 16 MB, past the 4 MiB stream threshold: sent as DuckDB produces it, as one message in
// WebSocket fragments.
const large = await connector.query('select range as i, range * 2 as j from range(1000000)');
assert(large.numRows === 1000000 && large.getChild('j').get(999999) === 1999998n, 'a fragmented 16 MB result');
console.log('column types: ok');

// 2. DDL answers `ok`, which the connector turns into an empty table.
await connector.query('create or replace table numbers as select * from range(10) t(i)');
const count = await connector.query('select count(*)::integer as n from numbers');
assert(count.getChild('n').get(0) === 10, 'table created');
console.log('ddl: ok');

// 3. Arrow upload through the connector's own loadArrow.
const table = arrow.tableFromArrays({ id: Int32Array.from([1, 2, 3]), name: ['a', 'b', 'c'] });
await connector.loadArrow(table, 'uploaded');
const uploaded = await connector.query("select sum(id)::integer as s, string_agg(name, '' order by id) as names from uploaded");
assert(uploaded.getChild('s').get(0) === 6, 'uploaded ids');
assert(uploaded.getChild('names').get(0) === 'abc', 'uploaded names');
await connector.loadArrow(arrow.tableToIPC(table, 'stream'), 'uploaded_bytes');
const fromBytes = await connector.query('select count(*)::integer as n from uploaded_bytes');
assert(fromBytes.getChild('n').get(0) === 3, 'IPC bytes upload');
console.log('loadArrow: ok');

// 4. Errors reach the caller with DuckDB's message; the socket stays usable.
let failure = null;
try {
  await connector.query('select * from no_such_table');
} catch (e) {
  failure = e.message;
}
assert(failure && failure.includes('no_such_table'), `error message, got ${failure}`);
console.log('errors: ok');

// 5. Abort -> cancel: the server interrupts the query, the socket stays usable.
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
const after = await connector.query('select 1 as one');
assert(after.getChild('one').get(0) === 1, 'socket usable after cancel');
console.log('cancel: ok');

// 6. 50 concurrent queries on one socket, each answered with its own result.
const concurrent = await Promise.all(
  Array.from({ length: 50 }, (_, i) => connector.query(`select ${i}::integer as v, count(*)::integer as n from range(${i * 1000})`)),
);
concurrent.forEach((result, i) => {
  assert(result.getChild('v').get(0) === i && result.getChild('n').get(0) === i * 1000, `concurrent query ${i}`);
});
console.log('50 concurrent queries: ok');

await connector.destroy();
console.log(`official @sqlrooms/duckdb connector${authToken ? ' (with token)' : ''}: all checks passed`);
