// What the @sqlrooms/crdt checks share: connecting a Loro document to a room with the
// official WebSocket sync connector (unchanged), waiting for a condition, comparing documents.
import WebSocket from 'ws';
import { createWebSocketSyncConnector } from '@sqlrooms/crdt/dist/sync/webSocketSyncConnector.js';

const createSocket = (u, protocols) => new WebSocket(u, protocols);

/** Connects `doc` to `roomId`; `opened` resolves on the first open. */
export function open(url, roomId, doc, clientId, { maxRetries = 0, token } = {}) {
  const connector = createWebSocketSyncConnector({
    url, roomId, clientId, createSocket, maxRetries, token, initialDelayMs: 100, maxDelayMs: 500,
  });
  const statuses = [];
  const opened = new Promise((resolve, reject) => {
    connector.setStatusListener((status) => {
      statuses.push(status);
      if (status === 'open') resolve();
      if (status === 'error' && maxRetries === 0) reject(new Error('sync connector error'));
    });
  });
  connector.connect(doc);
  return { connector, opened, statuses };
}

/** Waits until `check()` holds, polling the event loop; fails after `ms`. */
export async function until(check, what, ms = 15000) {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const same = (x, y) => JSON.stringify(x.toJSON()) === JSON.stringify(y.toJSON());
