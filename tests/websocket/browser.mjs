// MQTT over WebSocket from a real browser: headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core) runs MQTT.js's browser bundle in page/index.html.
//
//   node browser.mjs --ws-url ws://127.0.0.1:P/mqtt --tcp-url mqtt://127.0.0.1:Q
//
// A node:http server on 127.0.0.1 (port 0) serves the page and the bundle; the page connects to
// --ws-url and subscribes; once its #status reads "subscribed", MQTT.js under Node publishes a
// unique text over --tcp-url, and the page must list it in #messages. The WebSocket handshake,
// seen through the DevTools protocol, must have agreed on subprotocol "mqtt". Exits 0 when all
// passes, 1 with "FAIL browser: ..." (and the page's status and console) otherwise or when still
// running after --limit-seconds (default 60). CHROMIUM overrides the browser's path.

import { randomBytes } from 'node:crypto';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Without the background-networking switches Chromium keeps calling out to a closed network.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const usage =
  'usage: node browser.mjs --ws-url ws://HOST:PORT/mqtt --tcp-url mqtt://HOST:PORT ' +
  '[--wait-seconds S] [--limit-seconds S]';
let args;
try {
  args = parseArgs({
    options: {
      'ws-url': { type: 'string' },
      'tcp-url': { type: 'string' },
      'wait-seconds': { type: 'string', default: '10' },
      'limit-seconds': { type: 'string', default: '60' },
    },
    strict: true,
  }).values;
} catch (e) {
  console.error(`${e.message}\n${usage}`);
  process.exit(2);
}
const WS_URL = args['ws-url'];
const TCP_URL = args['tcp-url'];
// Bound of each wait (the page subscribed, the message listed, ...), and of the whole run.
const WAIT_MS = Number(args['wait-seconds']) * 1000;
const LIMIT_MS = Number(args['limit-seconds']) * 1000;
if (!WS_URL || !TCP_URL || !(WAIT_MS > 0) || !(LIMIT_MS > 0)) {
  console.error(usage);
  process.exit(2);
}

const started = Date.now();
const run = randomBytes(4).toString('hex');
const topic = `shardmq-ws-test/${run}/browser`;
const text = `hello browser ${run}`;

// What is known when something fails.
const consoleLog = [];
const handshakes = [];
let page;
let browser;
let server;
let profile;
let publisher;
let finished = null;

class Failure extends Error {}

function bounded(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`${what}: not within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function statusText() {
  if (!page) return '(no page)';
  try {
    return await bounded(page.textContent('#status'), 'read #status', 2000);
  } catch (e) {
    return `(unreadable: ${e.message})`;
  }
}

async function cleanup() {
  const steps = [];
  if (publisher) steps.push(publisher.endAsync(true).catch(() => {}));
  if (browser) steps.push(browser.close().catch(() => {}));
  if (server) {
    steps.push(new Promise((resolve) => server.close(resolve)));
    server.closeAllConnections();
  }
  await bounded(Promise.all(steps), 'closing the browser and the server', 5000).catch(() => {});
  if (profile) await rm(profile, { recursive: true, force: true }).catch(() => {});
}

/**
 * Ends the run once: on failure (`message` set) prints what is known, closes everything and
 * exits 1; on success exits 0. A second call (the hard limit firing while the run ends) waits
 * for the first.
 */
function finish(message) {
  finished ??= (async () => {
    if (message !== undefined) {
      console.log(`FAIL browser: ${message}`);
      console.log(`  page #status: ${await statusText()}`);
      console.log(`  websocket handshakes: ${JSON.stringify(handshakes)}`);
      console.log(`  page console (${consoleLog.length} lines):`);
      for (const line of consoleLog) console.log(`    ${line}`);
    }
    await cleanup();
    if (message !== undefined) process.exit(1);
    console.log(`ok browser (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    process.exit(0);
  })();
  return finished;
}

setTimeout(() => finish(`still running after ${LIMIT_MS / 1000} s`), LIMIT_MS).unref();

/** Serves the page and MQTT.js's browser bundle on 127.0.0.1, on a free port. */
async function serve() {
  const files = {
    '/': ['page/index.html', 'text/html; charset=utf-8'],
    '/index.html': ['page/index.html', 'text/html; charset=utf-8'],
    '/app.js': ['page/app.js', 'text/javascript; charset=utf-8'],
    '/mqtt.min.js': ['node_modules/mqtt/dist/mqtt.min.js', 'text/javascript; charset=utf-8'],
  };
  const s = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const f = files[path];
    if (req.method !== 'GET' || !f) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    try {
      const body = await readFile(join(HERE, f[0]));
      res.writeHead(200, { 'content-type': f[1], 'cache-control': 'no-store' }).end(body);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`);
    }
  });
  await new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen(0, '127.0.0.1', resolve);
  });
  return s;
}

async function main() {
  try {
    await readFile(join(HERE, 'node_modules/mqtt/dist/mqtt.min.js'));
  } catch {
    throw new Failure(`MQTT.js bundle missing: run npm ci in ${HERE}`);
  }
  server = await serve();
  const origin = `http://127.0.0.1:${server.address().port}`;

  profile = await mkdtemp(join(tmpdir(), 'shardmq-chromium-'));
  try {
    const context = await bounded(
      chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_ARGS,
        timeout: WAIT_MS * 2,
      }),
      `launch ${CHROMIUM}`,
      WAIT_MS * 2,
    );
    browser = context;
    page = context.pages()[0] || (await context.newPage());
  } catch (e) {
    throw new Failure(`cannot start Chromium (${CHROMIUM}): ${e.message.split('\n')[0]}`);
  }
  page.on('console', (m) => consoleLog.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLog.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => consoleLog.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));

  // The handshake as Chromium saw it: the subprotocol the broker chose.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  const byId = new Map();
  cdp.on('Network.webSocketCreated', (e) => {
    const h = { url: e.url };
    byId.set(e.requestId, h);
    handshakes.push(h);
  });
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const h = byId.get(e.requestId) || { url: null };
    if (!handshakes.includes(h)) handshakes.push(h);
    const headers = Object.fromEntries(
      Object.entries(e.response.headers || {}).map(([k, v]) => [k.toLowerCase(), v]),
    );
    h.status = e.response.status;
    h.protocol = headers['sec-websocket-protocol'] ?? null;
  });

  // The page's own CONNACK bound ends before ours, so its status says what went wrong.
  const query = new URLSearchParams({ ws: WS_URL, topic, timeout: String(Math.max(1000, WAIT_MS - 2000)) });
  await bounded(page.goto(`${origin}/?${query}`, { timeout: WAIT_MS }), 'load the page');

  const status = await bounded(
    page.waitForFunction(
      () => {
        const s = document.getElementById('status').textContent;
        return (s === 'subscribed' || s.startsWith('error')) && s;
      },
      null,
      { timeout: WAIT_MS, polling: 50 },
    ),
    'page #status to become "subscribed"',
  )
    .then((h) => h.jsonValue())
    .catch((e) => {
      throw new Failure(e instanceof Failure ? e.message : `page #status: ${e.message.split('\n')[0]}`);
    });
  if (status !== 'subscribed') throw new Failure(`page did not subscribe: ${status}`);

  try {
    publisher = await bounded(
      mqtt.connectAsync(
        TCP_URL,
        { clientId: `browser-pub-${run}`, reconnectPeriod: 0, connectTimeout: WAIT_MS, clean: true },
        false,
      ),
      `connect the publisher to ${TCP_URL}`,
    );
  } catch (e) {
    throw new Failure(`cannot connect the TCP publisher to ${TCP_URL}: ${e.message || e}`);
  }
  await bounded(publisher.publishAsync(topic, text, { qos: 1 }), 'PUBACK for the TCP publish');

  try {
    await page.waitForFunction(
      (want) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent === want),
      text,
      { timeout: WAIT_MS, polling: 50 },
    );
  } catch {
    const got = await page.$$eval('#messages li', (lis) => lis.map((li) => li.textContent)).catch(() => []);
    throw new Failure(`page did not list ${JSON.stringify(text)} within ${WAIT_MS / 1000} s; it lists ${JSON.stringify(got)}`);
  }
  const listed = await page.$$eval('#messages li', (lis) => lis.map((li) => li.textContent));
  if (listed.length !== 1 || listed[0] !== text) throw new Failure(`page lists ${JSON.stringify(listed)}, want exactly ${JSON.stringify(text)}`);
  console.log(`browser: received "${text}"`);

  if (handshakes.length !== 1 || handshakes[0].status !== 101 || handshakes[0].protocol !== 'mqtt') {
    throw new Failure(`WebSocket subprotocol: want one handshake agreeing "mqtt", saw ${JSON.stringify(handshakes)}`);
  }
  console.log('browser: websocket subprotocol "mqtt"');
}

try {
  await main();
} catch (e) {
  await finish(e instanceof Failure ? e.message : e.stack || String(e));
}
await finish();
