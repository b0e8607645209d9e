// When DUCKWIRE_RECORD_DIR is set, every frame the official clients send is also written
// there (NNNNN.text / NNNNN.bin): real protocol traffic that seeds the fuzz corpora.
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';

const dir = process.env.DUCKWIRE_RECORD_DIR;
if (dir) {
  fs.mkdirSync(dir, { recursive: true });
  let n = fs.readdirSync(dir).length;
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data, ...rest) {
    const binary = typeof data !== 'string';
    const bytes = binary ? Buffer.from(data.buffer ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : data) : Buffer.from(data);
    fs.writeFileSync(path.join(dir, `${String(n++).padStart(5, '0')}.${binary ? 'bin' : 'text'}`), bytes);
    return send.call(this, data, ...rest);
  };
}
