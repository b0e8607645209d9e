// Mosaic's own REST connector and coordinator (@uwdata/mosaic-core, unchanged) against
// duckwire's `POST /`: Arrow, JSON and exec queries, errors, and the coordinator's cache.
// Usage: node dist/mosaic-compat.mjs http://127.0.0.1:PORT/
import { restConnector, Coordinator } from '@uwdata/mosaic-core';

const uri = process.argv[2];
const assert = (cond, message) => {
  if (!cond) throw new Error(`assertion failed: ${message}`);
};

const rest = restConnector({ uri });
await rest.query({ type: 'exec', sql: 'create or replace table m as select range as i from range(5)' });
const table = await rest.query({ type: 'arrow', sql: 'select sum(i)::integer as s, count(*)::integer as n from m' });
assert(table.numRows === 1, 'one row');
const [row] = table.toArray();
assert(row.s === 10 && row.n === 5, `arrow values, got ${JSON.stringify(row)}`);
const rows = await rest.query({ type: 'json', sql: 'select i from m order by i' });
assert(Array.isArray(rows) && rows.length === 5 && rows[4].i === 4, `json rows, got ${JSON.stringify(rows)}`);
let failure = null;
try {
  await rest.query({ type: 'arrow', sql: 'select * from missing_table' });
} catch (e) {
  failure = e.message;
}
assert(failure && failure.includes('missing_table'), `error, got ${failure}`);
console.log('mosaic restConnector: ok');

const coordinator = new Coordinator(rest);
const result = await coordinator.query('select count(*)::integer as n from m');
assert(result.toArray()[0].n === 5, 'coordinator query');
const cached = await coordinator.query('select count(*)::integer as n from m');
assert(cached.toArray()[0].n === 5, 'coordinator cached query');
console.log('mosaic coordinator: ok');
