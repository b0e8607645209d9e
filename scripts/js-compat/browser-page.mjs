// Test fixture (not product): a page that uses the official @sqlrooms/duckdb WebSocket
// connector in a real browser, shows the results, and reports them to the page's server.
import { createWebSocketDuckDbConnector } from './vendor/duckdb/package/dist/connectors/WebSocketDuckDbConnector.js';

const params = new URLSearchParams(location.search);
const output = document.getElementById('output');

async function run() {
  const connector = createWebSocketDuckDbConnector({ wsUrl: params.get('ws') });
  await connector.initialize();
  const answer = await connector.query('select 42::integer as answer');
  const rows = await connector.query('select range::integer as i, range * 2 as j from range(1000)');
  const last = rows.get(999);
  // 16 MB, past the server's stream threshold: one message sent as DuckDB produced it.
  const big = await connector.query('select range as i, range * 2 as j from range(1000000)');
  const bigLast = Number(big.getChild('j').get(999999));
  output.textContent = `answer=${answer.getChild('answer').get(0)} rows=${rows.numRows} last=${last.i},${last.j} streamed=${big.numRows},${bigLast}`;
  await connector.destroy();
}

run()
  .catch((e) => {
    output.textContent = `error: ${e && e.message ? e.message : e}`;
  })
  .finally(() => {
    fetch('/report', { method: 'POST', body: JSON.stringify({ page: location.href, output: output.textContent }) });
  });
