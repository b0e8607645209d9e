// Headless Chromium loads a fixture page that uses the official connector against duckwire:
// from a loopback origin it runs a query and an Arrow result; from a foreign origin
// (evil.test, mapped to 127.0.0.1) the server refuses the WebSocket upgrade.
// Usage: node browser.mjs ws://127.0.0.1:PORT
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const wsUrl = process.argv[2];
const chromium = process.env.CHROMIUM ?? '/usr/bin/chromium';
const here = path.dirname(new URL(import.meta.url).pathname);
const page = fs.readFileSync(path.join(here, 'dist', 'browser-page.js'));
const assert = (cond, message) => {
  if (!cond) throw new Error(`assertion failed: ${message}`);
};

const reports = [];
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/report') {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      reports.push(JSON.parse(body));
      res.end('ok');
    });
  } else if (req.url.startsWith('/index.html')) {
    res.setHeader('Content-Type', 'text/html');
    res.end('<!doctype html><meta charset="utf-8"><title>duckwire browser check</title><pre id="output">running</pre><script type="module" src="/page.js"></script>');
  } else if (req.url === '/page.js') {
    res.setHeader('Content-Type', 'text/javascript');
    res.end(page);
  } else {
    res.statusCode = 404;
    res.end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();

async function visit(host) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'duckwire-chromium-'));
  const url = `http://${host}:${port}/index.html?ws=${encodeURIComponent(wsUrl)}`;
  const browser = spawn(chromium, [
    '--headless', '--no-sandbox', '--disable-gpu', `--user-data-dir=${profile}`,
    '--host-resolver-rules=MAP evil.test 127.0.0.1', url,
  ], { stdio: 'ignore' });
  const start = Date.now();
  try {
    while (!reports.some((r) => r.page === url)) {
      if (Date.now() - start > 60000) throw new Error(`no report from ${url}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return reports.find((r) => r.page === url).output;
  } finally {
    const exited = new Promise((resolve) => browser.once('exit', resolve));
    browser.kill('SIGTERM');
    await exited;
    try {
      fs.rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    } catch {
      // Chromium helpers may still be writing the throwaway profile; it is under /tmp.
    }
  }
}

const local = await visit('127.0.0.1');
assert(local === 'answer=42 rows=1000 last=999,1998 streamed=1000000,1999998', `loopback page output: ${local}`);
console.log(`browser, loopback origin: ${local}`);
const foreign = await visit('evil.test');
assert(foreign.startsWith('error'), `foreign page must be refused, got: ${foreign}`);
console.log(`browser, foreign origin refused: ${foreign}`);
server.close();
console.log('headless chromium with the official connector: all checks passed');
