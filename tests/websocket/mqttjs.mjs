// MQTT over WebSocket, checked with an independent client: MQTT.js under Node.
//
//   node mqttjs.mjs --ws-url ws://127.0.0.1:P/mqtt --tcp-url mqtt://127.0.0.1:Q [--big-bytes N]
//
// Each check passes messages between a WebSocket client and a plain-TCP client of the same
// broker and prints "ok ..." when it passes; the script exits 0 only when all pass, and 1 with
// "FAIL mqttjs: ..." on the first failure or when it is still running after HARD_LIMIT_MS.
// Topics and client ids carry a random suffix, so runs never see each other's messages.
//
// --big-bytes (default 1 MiB) is the payload size of the large-message check; the broker's
// maximum packet size must leave room for it plus the PUBLISH header. --wait-seconds (default 8)
// bounds each single wait, --limit-seconds (default 30) the whole run.

import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';

const usage =
  'usage: node mqttjs.mjs --ws-url ws://HOST:PORT/mqtt --tcp-url mqtt://HOST:PORT ' +
  '[--big-bytes N] [--wait-seconds S] [--limit-seconds S]';
let args;
try {
  args = parseArgs({
    options: {
      'ws-url': { type: 'string' },
      'tcp-url': { type: 'string' },
      'big-bytes': { type: 'string', default: String(1024 * 1024) },
      'wait-seconds': { type: 'string', default: '8' },
      'limit-seconds': { type: 'string', default: '30' },
    },
    strict: true,
  }).values;
} catch (e) {
  console.error(`${e.message}\n${usage}`);
  process.exit(2);
}
const WS_URL = args['ws-url'];
const TCP_URL = args['tcp-url'];
const BIG = Number(args['big-bytes']);
// Bound of every single wait (connect, SUBACK, PUBACK, a delivery), and of the whole run.
const WAIT_MS = Number(args['wait-seconds']) * 1000;
const HARD_LIMIT_MS = Number(args['limit-seconds']) * 1000;
if (!WS_URL || !TCP_URL || !Number.isInteger(BIG) || BIG < 1 || !(WAIT_MS > 0) || !(HARD_LIMIT_MS > 0)) {
  console.error(usage);
  process.exit(2);
}

const started = Date.now();
const clients = [];

setTimeout(() => {
  console.log(`FAIL mqttjs: still running after ${HARD_LIMIT_MS / 1000} s`);
  process.exit(1);
}, HARD_LIMIT_MS).unref();

class Failure extends Error {}

function check(cond, what) {
  if (!cond) throw new Failure(what);
}

/** `promise`, or a Failure naming `what` when it has not settled within `ms`. */
function bounded(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`${what}: nothing within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const run = randomBytes(4).toString('hex');
const topicOf = (name) => `shardmq-ws-test/${run}/${name}`;

/**
 * A connected client with an inbox. `name` is for messages and the client id;
 * `url` is WS_URL or TCP_URL; `version` is 4 (3.1.1) or 5.
 */
async function open(name, url, version) {
  const clientId = `mqttjs-${name}-${run}`;
  const client = mqtt.connect(url, {
    clientId,
    protocolVersion: version,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: WAIT_MS,
    keepalive: 30,
  });
  clients.push(client);
  // The first error says more than the close that follows it (refused, HTTP 404, ...).
  let firstError;
  const noteError = (e) => {
    firstError ??= e;
  };
  client.on('error', noteError);
  // MQTT.js drops stream errors that carry no code, such as a refused WebSocket upgrade.
  client.stream?.on?.('error', noteError);
  try {
    await bounded(
      new Promise((resolve, reject) => {
        client.once('connect', resolve);
        client.once('close', () => reject(firstError || new Error('connection closed before CONNACK')));
      }),
      `connect ${name} to ${url}`,
    );
  } catch (e) {
    throw new Failure(
      `cannot connect ${name} (MQTT ${version === 5 ? '5.0' : '3.1.1'}) to ${url}: ${e.message || e.code || e}`,
    );
  }
  clients.push(client);
  const inbox = [];
  const waiters = [];
  client.on('message', (topic, payload, packet) => {
    inbox.push({ topic, payload, packet });
    while (waiters.length) waiters.shift()();
  });
  return {
    name,
    client,
    /** The next message on `topic` (messages on other topics are dropped). */
    async message(topic, what) {
      const deadline = Date.now() + WAIT_MS;
      for (;;) {
        const i = inbox.findIndex((m) => m.topic === topic);
        if (i >= 0) return inbox.splice(i, 1)[0];
        const left = deadline - Date.now();
        if (left <= 0) throw new Failure(`${name}: ${what}: nothing on ${topic} within ${WAIT_MS / 1000} s`);
        await new Promise((resolve) => {
          const t = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
    },
    async subscribe(topic, qos) {
      const granted = await bounded(client.subscribeAsync(topic, { qos }), `${name}: SUBACK for ${topic}`);
      const codes = granted.map((g) => g.qos);
      check(codes.length === 1 && codes[0] === qos, `${name}: SUBACK for ${topic} granted ${JSON.stringify(codes)}, asked QoS ${qos}`);
    },
    async publish(topic, payload, opts) {
      await bounded(client.publishAsync(topic, payload, opts), `${name}: publish to ${topic} (QoS ${opts.qos}) not acknowledged`);
    },
  };
}

function same(got, want, what) {
  check(Buffer.isBuffer(got), `${what}: payload is not bytes`);
  if (got.equals(want)) return;
  let at = 0;
  while (at < Math.min(got.length, want.length) && got[at] === want[at]) at++;
  throw new Failure(`${what}: ${got.length} bytes received, ${want.length} sent, first difference at byte ${at}`);
}

/** (a) and (b): QoS 0 and 1 TCP -> WS, QoS 1 WS -> TCP, at protocol `version`. */
async function exchange(version) {
  const v = version === 5 ? '5.0' : '3.1.1';
  const tag = `v${version}`;
  const ws = await open(`ws-${tag}`, WS_URL, version);
  const tcp = await open(`tcp-${tag}`, TCP_URL, version);
  const down = topicOf(`${tag}/to-ws`);
  const up = topicOf(`${tag}/to-tcp`);
  await ws.subscribe(down, 1);
  await tcp.subscribe(up, 1);

  for (const qos of [0, 1]) {
    const text = `tcp->ws qos${qos} ${run}`;
    await tcp.publish(down, text, { qos });
    const m = await ws.message(down, `the QoS ${qos} message from TCP`);
    check(m.payload.toString() === text, `${ws.name}: got ${JSON.stringify(m.payload.toString())}, want ${JSON.stringify(text)}`);
    check(m.packet.qos === qos, `${ws.name}: QoS ${qos} message delivered at QoS ${m.packet.qos}`);
  }

  const text = `ws->tcp qos1 ${run}`;
  const opts = { qos: 1 };
  if (version === 5) opts.properties = { userProperties: { origin: 'websocket' }, contentType: 'text/plain' };
  await ws.publish(up, text, opts);
  const m = await tcp.message(up, 'the QoS 1 message from WebSocket');
  check(m.payload.toString() === text, `${tcp.name}: got ${JSON.stringify(m.payload.toString())}, want ${JSON.stringify(text)}`);
  check(m.packet.qos === 1, `${tcp.name}: QoS 1 message delivered at QoS ${m.packet.qos}`);
  if (version === 5) {
    const p = m.packet.properties || {};
    check(p.userProperties && p.userProperties.origin === 'websocket', `${tcp.name}: user property lost: ${JSON.stringify(p)}`);
    check(p.contentType === 'text/plain', `${tcp.name}: content type lost: ${JSON.stringify(p)}`);
  }
  await Promise.all([ws.client.endAsync(), tcp.client.endAsync()]);
  const extra = version === 5 ? ' (user property and content type kept)' : '';
  console.log(`ok mqtt.js MQTT ${v} over ws: ws subscriber got QoS 0 and QoS 1 from tcp; tcp subscriber got QoS 1 from ws${extra}`);
}

/** (c): a BIG-byte payload each way, compared byte for byte. */
async function big() {
  const ws = await open('ws-big', WS_URL, 4);
  const tcp = await open('tcp-big', TCP_URL, 4);
  const up = topicOf('big/to-tcp');
  const down = topicOf('big/to-ws');
  await tcp.subscribe(up, 1);
  await ws.subscribe(down, 1);

  const a = randomBytes(BIG);
  await ws.publish(up, a, { qos: 1 });
  same((await tcp.message(up, `the ${BIG}-byte message from WebSocket`)).payload, a, `${BIG} bytes ws -> tcp`);
  const b = randomBytes(BIG);
  await tcp.publish(down, b, { qos: 1 });
  same((await ws.message(down, `the ${BIG}-byte message from TCP`)).payload, b, `${BIG} bytes tcp -> ws`);
  await Promise.all([ws.client.endAsync(), tcp.client.endAsync()]);
  console.log(`ok mqtt.js ${BIG}-byte payload intact ws -> tcp and tcp -> ws`);
}

/** (d): a message retained over TCP reaches a later WebSocket subscriber, flagged retained. */
async function retained() {
  const tcp = await open('tcp-retain', TCP_URL, 4);
  const topic = topicOf('retained');
  const text = `retained ${run}`;
  await tcp.publish(topic, text, { qos: 1, retain: true });
  const ws = await open('ws-retain', WS_URL, 4);
  await ws.subscribe(topic, 1);
  const m = await ws.message(topic, 'the retained message');
  check(m.payload.toString() === text, `${ws.name}: retained payload ${JSON.stringify(m.payload.toString())}, want ${JSON.stringify(text)}`);
  check(m.packet.retain === true, `${ws.name}: retained message delivered without the RETAIN flag`);
  // Clear it, so the broker keeps nothing from this run.
  await tcp.publish(topic, '', { qos: 1, retain: true });
  await Promise.all([ws.client.endAsync(), tcp.client.endAsync()]);
  console.log('ok mqtt.js retained message set over tcp received on ws subscribe');
}

try {
  await exchange(4);
  await exchange(5);
  await big();
  await retained();
} catch (e) {
  console.log(`FAIL mqttjs: ${e instanceof Failure ? e.message : e.stack || e}`);
  for (const c of clients) c.end(true);
  process.exit(1);
}
console.log(`ok mqttjs (${((Date.now() - started) / 1000).toFixed(1)} s)`);
process.exit(0);
