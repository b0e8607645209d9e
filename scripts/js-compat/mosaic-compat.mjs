// Mosaic's own clients (@uwdata/mosaic-core 0.32.0 with its @uwdata/flechette decoder,
// unchanged) against duckwire: the REST connector (`POST /`) and the socket connector
// (`ws://…/mosaic`), each alone and under Mosaic's Coordinator: exec then query, Arrow and
// JSON, a result large enough to be streamed, 40 concurrent queries each getting its own answer, errors surfacing, common DuckDB
// types decoded by flechette, and a group-by over the flights Parquet file.
// Usage: node dist/mosaic-compat.mjs http://HOST:PORT/ ws://HOST:PORT/mosaic FLIGHTS_PARQUET
import { restConnector, socketConnector, Coordinator } from '@uwdata/mosaic-core';
import { tableFromIPC } from '@uwdata/flechette';
import WebSocket from 'ws';

// Node 20 has no global WebSocket; `ws` implements the browser API the connector uses.
globalThis.WebSocket ??= WebSocket;

const [httpUri, socketUri, flights] = process.argv.slice(2);
const assert = (cond, message) => {
  if (!cond) throw new Error(`assertion failed: ${message}`);
};
const errorText = (e) => (typeof e === 'string' ? e : e?.message ?? String(e));
// Mosaic 0.32's connectors hand over what the server sent: Arrow as IPC bytes (the
// Coordinator decodes them with flechette), JSON as bytes (REST) or parsed (socket).
const isBytes = (x) => x instanceof ArrayBuffer || ArrayBuffer.isView(x);
const asTable = (x) => (isBytes(x) ? tableFromIPC(x instanceof ArrayBuffer ? new Uint8Array(x) : x) : x);
const asRows = (x) => (isBytes(x) ? JSON.parse(new TextDecoder().decode(x)) : x);

// `json`: whether the connector can return JSON rows. Mosaic 0.32's socket connector treats
// every text message as an error or an acknowledgement (so do Mosaic's own servers, which
// send no JSON results over the socket): over the socket, results are Arrow.
async function exercise(name, connector, { json }) {
  const t = `m_${name}`;
  await connector.query({ type: 'exec', sql: `create or replace table ${t} as select range as i from range(5)` });
  const table = asTable(await connector.query({ type: 'arrow', sql: `select sum(i)::integer as s, count(*)::integer as n from ${t}` }));
  assert(table.numRows === 1, `${name}: one row`);
  const [row] = table.toArray();
  assert(row.s === 10 && row.n === 5, `${name}: arrow values, got ${JSON.stringify(row)}`);
  if (json) {
    const rows = asRows(await connector.query({ type: 'json', sql: `select i from ${t} order by i` }));
    assert(Array.isArray(rows) && rows.length === 5 && rows[4].i === 4, `${name}: json rows, got ${JSON.stringify(rows)}`);
    // About 8 MB of JSON: past the server's 4 MiB threshold, so streamed as DuckDB produces it.
    const many = asRows(await connector.query({ type: 'json', sql: 'select range as i from range(600000)' }));
    assert(many.length === 600000 && many[599999].i === 599999, `${name}: a streamed JSON result`);
  }

  let failure = null;
  try {
    await connector.query({ type: 'arrow', sql: 'select * from missing_table' });
  } catch (e) {
    failure = errorText(e);
  }
  assert(failure && failure.includes('missing_table'), `${name}: error surfaces, got ${failure}`);
  // The connector keeps working after an error.
  const after = asTable(await connector.query({ type: 'arrow', sql: 'select 1::integer as one' }));
  assert(after.toArray()[0].one === 1, `${name}: query after an error`);

  // 16 MB, past the server's 4 MiB stream threshold: sent as DuckDB produces it (a chunked
  // body, or one fragmented message), read back whole.
  const big = asTable(await connector.query({ type: 'arrow', sql: 'select range as i, range * 2 as j from range(1000000)' }));
  assert(big.numRows === 1000000, `${name}: a streamed result's rows, got ${big.numRows}`);
  const j = big.getChild('j');
  assert(Number(j.at(999999)) === 1999998, `${name}: a streamed result's last value`);

  const answers = await Promise.all(
    Array.from({ length: 40 }, (_, i) =>
      i % 2 && json
        ? connector.query({ type: 'json', sql: `select ${i} as i` }).then((r) => asRows(r)[0].i)
        : connector.query({ type: 'arrow', sql: `select ${i}::integer as i` }).then((r) => asTable(r).toArray()[0].i)
    )
  );
  answers.forEach((value, i) => assert(value === i, `${name}: concurrent query ${i} got ${value}`));

  const types = asTable(await connector.query({
    type: 'arrow',
    sql: `select 42::integer as int, 9007199254740991::bigint as big, 2.5::double as dbl,
                 'text' as str, true as flag, null::integer as nothing,
                 date '2024-02-29' as day, timestamp '2024-02-29 12:34:56' as ts,
                 12.34::decimal(10, 2) as dec, [1, 2, 3] as list, {'a': 1, 'b': 'x'} as struct`,
  }));
  const typed = types.toArray()[0];
  assert(typed.int === 42 && Number(typed.big) === 9007199254740991 && typed.dbl === 2.5, `${name}: numbers ${JSON.stringify(typed, (k, v) => typeof v === 'bigint' ? String(v) : v)}`);
  assert(typed.str === 'text' && typed.flag === true && typed.nothing === null, `${name}: text, bool, null`);
  assert(new Date(typed.day).toISOString().startsWith('2024-02-29'), `${name}: date ${typed.day}`);
  assert(new Date(typed.ts).toISOString() === '2024-02-29T12:34:56.000Z', `${name}: timestamp ${typed.ts}`);
  assert(Math.abs(Number(typed.dec) - 12.34) < 1e-9, `${name}: decimal ${typed.dec}`);
  assert(Array.from(typed.list).join() === '1,2,3', `${name}: list ${typed.list}`);
  assert(typed.struct.a === 1 && typed.struct.b === 'x', `${name}: struct ${JSON.stringify(typed.struct)}`);

  const origins = asTable(await connector.query({
    type: 'arrow',
    sql: `select floor(delay / 10)::integer * 10 as bin, count(*)::integer as n from read_parquet('${flights}') group by 1 order by n desc, bin limit 3`,
  }));
  const top = origins.toArray();
  assert(top.length === 3 && top[0].n >= top[1].n && top[1].n >= top[2].n && top[2].n > 0, `${name}: flights group-by ${JSON.stringify(top)}`);
  console.log(`mosaic ${name} connector: ok`);

  const coordinator = new Coordinator(connector, { logger: null });
  const result = await coordinator.query(`select count(*)::integer as n from ${t}`);
  assert(result.toArray()[0].n === 5, `${name}: coordinator query`);
  await coordinator.exec(`insert into ${t} values (5)`);
  const again = await coordinator.query(`select count(*)::integer as n from ${t}`, { cache: false });
  assert(again.toArray()[0].n === 6, `${name}: coordinator exec then query`);
  const many = await Promise.all(
    Array.from({ length: 40 }, (_, i) => coordinator.query(`select ${i}::integer as i`).then((r) => r.toArray()[0].i))
  );
  many.forEach((value, i) => assert(value === i, `${name}: coordinator query ${i} got ${value}`));
  console.log(`mosaic coordinator over ${name}: ok`);
}

await exercise('rest', restConnector({ uri: httpUri }), { json: true });
await exercise('socket', socketConnector({ uri: socketUri }), { json: false });
process.exit(0);
