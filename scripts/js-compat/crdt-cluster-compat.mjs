// The official @sqlrooms/crdt WebSocket sync connector (unchanged) with loro-crdt against two
// duckwire replicas sharing one Redis (--redis-url): documents connected to different
// replicas converge, a late joiner on either replica gets the state, rapid edits from both
// sides converge.
// Usage: node dist/crdt-cluster-compat.mjs ws://127.0.0.1:PORT_A ws://127.0.0.1:PORT_B
import { LoroDoc } from 'loro-crdt';
import { open, same, until } from './crdt-sync.mjs';

const [urlA, urlB] = process.argv.slice(2);

const roomId = `cluster-${Date.now()}`;
const a = new LoroDoc();
const b = new LoroDoc();
const onA = open(urlA, roomId, a, 'client-a');
const onB = open(urlB, roomId, b, 'client-b');
await Promise.all([onA.opened, onB.opened]);

a.getMap('cells').set('a1', 'from replica A');
a.commit();
await until(() => b.getMap('cells').get('a1') === 'from replica A', "B's client to receive A's edit");
b.getMap('cells').set('b1', 42);
b.commit();
await until(() => a.getMap('cells').get('b1') === 42, "A's client to receive B's edit");
console.log('documents on two replicas converge: ok');

for (let i = 0; i < 100; i++) {
  a.getList('log').push(`a${i}`);
  a.commit();
  b.getList('log').push(`b${i}`);
  b.commit();
}
await until(() => a.getList('log').length === 200 && same(a, b), '200 rapid edits across replicas to converge');
console.log('200 rapid edits across replicas converge: ok');

for (const url of [urlA, urlB]) {
  const late = new LoroDoc();
  const joined = open(url, roomId, late, `late-${url}`);
  await joined.opened;
  await until(() => same(late, a), `a late joiner on ${url} to get the state`);
  await joined.connector.disconnect();
}
console.log('late joiners on either replica get the state: ok');

await onA.connector.disconnect();
await onB.connector.disconnect();
