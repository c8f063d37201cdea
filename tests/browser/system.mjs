// The whole system for the browser tests that need it (display.test.mjs, expo.test.mjs): start,
// stop, tokens, pairing a screen, posting orders.

import mqtt from 'mqtt';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ROOT, PREFIX, Fatal, assert, freePorts, log, portOpen, startSecureMosquitto, startProcess,
  stopProcess, tail, waitFor,
} from './lib.mjs';

// ---- helpers --------------------------------------------------------------------------------
export function findBinary() {
  if (process.env.RS_BIN) {
    const bin = path.resolve(process.env.RS_BIN);
    if (!fs.existsSync(bin)) throw new Error(`RS_BIN=${bin} does not exist`);
    return bin;
  }
  const candidates = ['target/release/restaurant-system', 'target/debug/restaurant-system']
    .map((p) => path.join(ROOT, p))
    .filter((p) => fs.existsSync(p))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (candidates.length === 0) {
    throw new Error('no restaurant-system binary: build it first (cargo build --release) or set RS_BIN');
  }
  return candidates[0];
}

export function rabbitmqctl(...args) {
  return execFileSync('rabbitmqctl', ['-q', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000 }).toString();
}

function findOrderNumber(body) {
  if (!body || typeof body !== 'object') return null;
  if (typeof body.order_number === 'string') return body.order_number;
  for (const v of Object.values(body)) {
    const n = findOrderNumber(v);
    if (n) return n;
  }
  return null;
}

// ---- the system under test -------------------------------------------------------------------
export const env = {
  tmp: null,
  ports: {},
  vhost: null,
  mosquitto: null,
  rs: null,
  browser: null,
  mqttClient: null,
};

// Starts the whole system for a browser test: a private Mosquitto with the shipped ACL, a fresh
// RabbitMQ vhost, `restaurant-system --mode=all` on SQLite on free ports. `config` (TOML text),
// when given, is passed with --config; `extraEnv` adds settings (an object, or a function of the
// ports that returns one).
export async function setUp({ config = null, extraEnv = {} } = {}) {
  env.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rs-display-test-'));
  fs.chmodSync(env.tmp, 0o755); // mosquitto drops to its own user after reading the config
  const [mqttPort, ws, order, tracking, bridge] = await freePorts(5);
  env.ports = { mqtt: mqttPort, ws, order, tracking, bridge };
  log(`temp dir ${env.tmp}; ports ${JSON.stringify(env.ports)}`);

  const bin = findBinary();
  log(`binary ${bin}`);

  env.mosquitto = await startSecureMosquitto(env.tmp, mqttPort, ws);
  env.mqttPasswords = env.mosquitto.passwords;

  if (!(await portOpen(5672))) throw new Error('RabbitMQ is not listening on 127.0.0.1:5672 (start it: rabbitmq-server -detached)');
  env.vhost = `rs_display_test_${process.pid}_${Date.now().toString(36)}`;
  rabbitmqctl('add_vhost', env.vhost);
  rabbitmqctl('set_permissions', '-p', env.vhost, 'guest', '.*', '.*', '.*');
  log(`RabbitMQ vhost ${env.vhost}`);

  const rsEnv = {
    ...process.env,
    RESTAURANT_DATABASE__BACKEND: 'sqlite',
    RESTAURANT_DATABASE__SQLITE_PATH: path.join(env.tmp, 'r.db'),
    RESTAURANT_RABBITMQ__HOST: '127.0.0.1',
    RESTAURANT_RABBITMQ__VHOST: env.vhost,
    RESTAURANT_MQTT__HOST: '127.0.0.1',
    RESTAURANT_MQTT__PORT: String(mqttPort),
    RESTAURANT_MQTT__CLIENT_ID: `rs-display-test-${process.pid}`,
    RESTAURANT_MQTT__USER: 'restaurant-bridge',
    RESTAURANT_MQTT__PASSWORD: env.mqttPasswords.bridge,
    RESTAURANT_DISPLAY__MQTT_USERNAME: 'restaurant-display',
    RESTAURANT_DISPLAY__MQTT_PASSWORD: env.mqttPasswords.display,
    RESTAURANT_DISPLAY__MQTT_WS_URL: `ws://127.0.0.1:${ws}`,
    RESTAURANT_DISPLAY__ORDER_SERVICE_URL: `http://127.0.0.1:${order}`,
    RESTAURANT_KITCHEN__COOKING_SECONDS__DINE_IN: '2',
    RESTAURANT_KITCHEN__COOKING_SECONDS__TAKEOUT: '2',
    RESTAURANT_KITCHEN__COOKING_SECONDS__DELIVERY: '2',
    RESTAURANT_HTTP__ORDER_PORT: String(order),
    RESTAURANT_HTTP__TRACKING_PORT: String(tracking),
    RESTAURANT_HTTP__BRIDGE_PORT: String(bridge),
    RESTAURANT_LOG__FORMAT: 'json',
    // A function gets the ports chosen above (a setting that names one).
    ...(typeof extraEnv === 'function' ? extraEnv(env.ports) : extraEnv),
  };
  env.bin = bin;
  env.rsEnv = rsEnv;
  const rsLog = path.join(env.tmp, 'restaurant-system.log');
  const args = ['--mode=all'];
  if (config) {
    fs.writeFileSync(path.join(env.tmp, 'config.toml'), config);
    args.unshift('--config', path.join(env.tmp, 'config.toml'));
  }
  env.rs = startProcess('restaurant-system', bin, args, { cwd: env.tmp, env: rsEnv }, rsLog);
  await waitFor('restaurant-system health endpoints (order, tracking, bridge)', async () => {
    if (env.rs.exitCode !== null) throw new Fatal(`restaurant-system --mode=all exited with ${env.rs.exitCode} (log below)`);
    for (const p of [order, tracking, bridge]) {
      const r = await fetch(`http://127.0.0.1:${p}/health`);
      if (!r.ok) throw new Error(`GET :${p}/health answered ${r.status}`);
    }
    return true;
  }, 60000, 250);
  log('restaurant-system is up');

  // A real MQTT client of our own, to tell a bridge problem from a page problem.
  env.retained = new Map(); // order_number -> { at, payload }
  env.mqttClient = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, {
    clientId: `rs-display-test-sub-${process.pid}`, reconnectPeriod: 500,
    username: 'restaurant-display', password: env.mqttPasswords.display,
  });
  env.mqttClient.on('message', (topic, payload) => {
    const num = topic.slice(`${PREFIX}/orders/`.length);
    if (topic.startsWith(`${PREFIX}/orders/`) && payload.length) {
      try {
        env.retained.set(num, { at: Date.now(), payload: JSON.parse(payload.toString()) });
      } catch (_) { /* not ours to judge here */ }
    }
  });
  await new Promise((resolve, reject) => {
    env.mqttClient.once('connect', () => env.mqttClient.subscribe(`${PREFIX}/orders/+`, { qos: 1 }, (err) => (err ? reject(err) : resolve())));
    env.mqttClient.once('error', reject);
  });
}

export async function tearDown() {
  const steps = [
    ['browser', async () => env.browser && (await env.browser.close())],
    ['mqtt client', async () => env.mqttClient && (await env.mqttClient.endAsync(true))],
    ['restaurant-system', async () => stopProcess(env.rs, 10000)],
    ['mosquitto', async () => stopProcess(env.mosquitto)],
    ['vhost', async () => env.vhost && rabbitmqctl('delete_vhost', env.vhost)],
    ['temp dir', async () => {
      if (!env.tmp) return;
      if (process.env.KEEP_TMP === '1') log(`kept ${env.tmp}`);
      else fs.rmSync(env.tmp, { recursive: true, force: true });
    }],
  ];
  for (const [name, fn] of steps) {
    try {
      await fn();
    } catch (e) {
      log(`cleanup of ${name} failed: ${e.message}`);
    }
  }
}

// ---- tokens (the CLI, as a manager would) -----------------------------------------------------
export function token(...args) {
  return execFileSync(env.bin, ['token', ...args], { cwd: env.tmp, env: env.rsEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    .toString().trim().split('\n').pop();
}

export async function pair(page, tok) {
  await page.waitForSelector('#pair:not([hidden])', { timeout: 10000 });
  await page.fill('#pair-token', tok);
  await page.click('#pair-submit');
  await page.waitForSelector('body[data-pairing="paired"]', { timeout: 10000 });
}

// ---- HTTP helpers ----------------------------------------------------------------------------
export async function postOrder(order) {
  const r = await fetch(`http://127.0.0.1:${env.ports.order}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(order),
  });
  const text = await r.text();
  assert(r.ok, `POST /orders answered ${r.status}: ${text}`);
  const num = findOrderNumber(JSON.parse(text));
  assert(num, `POST /orders answer has no order_number: ${text}`);
  return num;
}

// ---- running a whole-system suite ---------------------------------------------------------------
// Runs `main` with `runner`: cleans up on SIGINT/SIGTERM and at the end (failed or not), prints
// the logs' tails when something failed, then the summary, and exits 0 only when all passed.
export async function runSuite(runner, main) {
  let interrupted = false;
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, async () => {
      interrupted = true;
      log(`${sig}: cleaning up`);
      await tearDown();
      process.exit(130);
    });
  }
  try {
    await main();
  } catch (e) {
    runner.failed += 1;
    console.log(`FAIL harness: ${e && e.stack ? e.stack : e}`);
  } finally {
    if (runner.failed && env.tmp) {
      console.log(`--- restaurant-system log (tail) ---\n${tail(path.join(env.tmp, 'restaurant-system.log'))}`);
      console.log(`--- mosquitto log (tail) ---\n${tail(path.join(env.tmp, 'mosquitto.log'), 15)}`);
    }
    if (!interrupted) await tearDown();
  }
  console.log(runner.summary());
  process.exit(runner.ok ? 0 : 1);
}
