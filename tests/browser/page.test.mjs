// Browser test of the kitchen display page's own logic, without the Rust services: the committed
// web/dist files are served the way the tracking service serves them (/display, /display/<file>,
// /display/config.json), the page connects to a real private Mosquitto over WebSockets, and the
// test publishes retained payloads of the documented shape (docs/mqtt.md) with a real MQTT client.
//
// Checks: tickets per order type with table/address, items, rush marks and all-day counts; a live
// ticket beeps once; stale and duplicate versions are dropped; an empty payload removes a ticket;
// timers use the server's clock and colour at the thresholds; a one-type view; the banner while
// the broker is down; the board rebuilt from retained messages after a broker restart (orders
// cleared meanwhile leave the board), without a reload.

import mqtt from 'mqtt';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  PREFIX, Runner, assert, freePorts, launchBrowser, log, pageFile, pageRecorder, sleep,
  startMosquitto, startPageServer, stopProcess, waitFor,
} from './lib.mjs';

const runner = new Runner();
const env = { tmp: null, ports: {}, mosquitto: null, mosquitto2: null, server: null, browser: null, client: null, skewMs: 0, boxes: [] };

// ---- payloads (docs/mqtt.md) -------------------------------------------------------------------
const iso = (ms) => new Date(ms).toISOString();
const serverNow = () => Date.now() + env.skewMs;
let seq = 0;

function order(fields) {
  const created = fields.createdAgoMs !== undefined ? serverNow() - fields.createdAgoMs : serverNow();
  const o = {
    order_number: fields.order_number || `ORD_20261125_${String(++seq).padStart(3, '0')}`,
    order_type: 'dine_in',
    customer_name: 'Jane Smith',
    table_number: null,
    delivery_address: null,
    items: [{ name: 'Steak', quantity: 1, price: 29.99 }],
    total_amount: 29.99,
    priority: 1,
    status: 'received',
    processed_by: null,
    created_at: iso(created),
    status_changed_at: iso(created),
    estimated_completion: iso(created + 600000),
    version: 1,
    server_time: iso(serverNow()),
    ...fields,
  };
  delete o.createdAgoMs;
  if (o.order_type === 'dine_in' && o.table_number === null) o.table_number = 12;
  return o;
}

function publish(topic, payload, { retain = true } = {}) {
  const body = payload === '' ? '' : typeof payload === 'string' ? payload : JSON.stringify(payload);
  return env.client.publishAsync(`${PREFIX}/${topic}`, body, { qos: 1, retain });
}
const publishOrder = (o) => publish(`orders/${o.order_number}`, o);
const clearOrder = (num) => publish(`orders/${num}`, '');

// ---- the page's settings, as the tracking service serves them --------------------------------------
const pageConfig = () => ({
  mqtt_ws_url: `ws://127.0.0.1:${env.ports.ws}`,
  topic_prefix: 'restaurant',
  site: 'main',
  order_service_url: '',
  yellow_after_seconds: 300,
  red_after_seconds: 480,
  server_time: iso(serverNow()),
  boxes: env.boxes || [],
});

// ---- page helpers ---------------------------------------------------------------------------------
async function openPage(query = '') {
  const page = await env.browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  await page.addInitScript(pageRecorder);
  const resp = await page.goto(`http://127.0.0.1:${env.ports.http}/display${query}`);
  assert(resp && resp.ok(), `GET /display${query} answered ${resp && resp.status()}`);
  await page.waitForSelector('#conn-banner', { state: 'hidden', timeout: 10000 });
  await page.waitForSelector('#board[data-synced="true"]', { timeout: 10000 });
  return page;
}

const ticket = (page, num) => page.locator(`article.ticket[data-order="${num}"]`);
const ticketCount = (page) => page.locator('article.ticket').count();
const allDay = (page) => page.evaluate(() => Object.fromEntries(
  [...document.querySelectorAll('#allday-items .ad')].map((e) => [e.dataset.item, Number(e.querySelector('b').textContent)])));

// ---- the board used by most tests ------------------------------------------------------------------
const board = {
  dine: order({ order_number: 'ORD_20261125_101', order_type: 'dine_in', table_number: 7, status: 'cooking', processed_by: 'chef_mario', version: 2,
    items: [{ name: 'Burger', quantity: 2, price: 12.5 }, { name: 'Fries', quantity: 2, price: 4.5 }], createdAgoMs: 60000 }),
  rush: order({ order_number: 'ORD_20261125_102', order_type: 'takeout', priority: 10, total_amount: 126, customer_name: 'John Doe',
    items: [{ name: 'Ribeye', quantity: 3, price: 42 }], createdAgoMs: 30000 }),
  prio: order({ order_number: 'ORD_20261125_103', order_type: 'delivery', priority: 5, total_amount: 58, delivery_address: '12 Harbour Road, Flat 3',
    items: [{ name: 'Pad Thai', quantity: 4, price: 14.5 }], status: 'cooking', processed_by: 'chef_ana', version: 2 }),
  ready: order({ order_number: 'ORD_20261125_104', order_type: 'takeout', status: 'ready', processed_by: 'chef_luigi', version: 3,
    items: [{ name: 'Fries', quantity: 5, price: 4.5 }] }),
  done: order({ order_number: 'ORD_20261125_105', order_type: 'dine_in', status: 'completed', processed_by: 'chef_mario', version: 4 }),
};

async function publishBoard() {
  for (const o of Object.values(board)) await publishOrder(o);
  await publish('workers/chef_mario', { worker_name: 'chef_mario', status: 'online', orders_processed: 5, last_seen: iso(serverNow()) });
  await publish('workers/chef_luigi', { worker_name: 'chef_luigi', status: 'online', orders_processed: 2, last_seen: iso(serverNow()) });
  await publish('workers/chef_ana', { worker_name: 'chef_ana', status: 'offline', orders_processed: 9, last_seen: iso(serverNow()) });
  await publish('bridge/status', 'online');
}

// ---- tests ----------------------------------------------------------------------------------------
async function main() {
  let page;

  await runner.test('set up (private Mosquitto, static server, Chromium)', async () => {
    env.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rs-page-test-'));
    fs.chmodSync(env.tmp, 0o755);
    const [mqttPort, ws, httpPort] = await freePorts(3);
    env.ports = { mqtt: mqttPort, ws, http: httpPort };
    for (const f of ['index.html', 'display.js', 'display.css', 'mqtt.min.js']) {
      assert(fs.existsSync(pageFile(f)), `${pageFile(f)} is missing (mqtt.min.js: run bash web/build.sh)`);
    }
    env.mosquitto = await startMosquitto(env.tmp, mqttPort, ws);
    env.server = await startPageServer(httpPort, pageConfig);
    env.client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: `rs-page-test-${process.pid}`, reconnectPeriod: 300 });
    env.browser = await launchBrowser();
    log(`ports ${JSON.stringify(env.ports)}`);
  });

  await runner.test('retained messages build the board', async () => {
    await publishBoard();
    page = await openPage();
    assert(await ticketCount(page) === 4, `expected 4 open tickets, found ${await ticketCount(page)}`);
    for (const [type, n] of [['dine_in', 1], ['takeout', 2], ['delivery', 1]]) {
      const found = await page.locator(`.column[data-type="${type}"] article.ticket`).count();
      assert(found === n, `${type} column has ${found} tickets, expected ${n}`);
    }
    assert(await ticket(page, board.dine.order_number).getAttribute('data-status') === 'cooking', 'dine-in ticket is not cooking');
    const dineText = await ticket(page, board.dine.order_number).innerText();
    assert(/Table 7/.test(dineText) && /Burger/.test(dineText) && /chef_mario/.test(dineText), `dine-in ticket text: ${dineText}`);
    assert(/12 Harbour Road/.test(await ticket(page, board.prio.order_number).innerText()), 'delivery address missing');
    assert(await ticket(page, board.rush.order_number).evaluate((e) => e.classList.contains('rush')), 'priority 10 is not marked rush');
    assert(await ticket(page, board.prio.order_number).evaluate((e) => e.classList.contains('prio')), 'priority 5 is not marked');
    assert(await page.locator(`article.ticket[data-status="ready"] button.bump`).count() === 1, 'ready ticket has no bump button');
    assert(await page.locator(`article.ticket:not([data-status="ready"]) button.bump`).count() === 0, 'bump button on a ticket that is not ready');
    // Rush first in its column.
    const firstTakeout = await page.locator('.column[data-type="takeout"] article.ticket').first().getAttribute('data-order');
    assert(firstTakeout === board.rush.order_number, `rush ticket is not first in its column (${firstTakeout})`);
    // All day: received and cooking only (the ready ticket's 5 Fries do not count).
    const ad = await allDay(page);
    assert(ad.Burger === 2 && ad.Fries === 2 && ad.Ribeye === 3 && ad['Pad Thai'] === 4, `all-day counts: ${JSON.stringify(ad)}`);
    assert(await page.locator(`button.recall[data-order="${board.done.order_number}"]`).count() === 1, 'completed order is not in the recall list');
    assert(/2 workers online/.test(await page.locator('#workers').textContent()), 'workers online count');
    assert(await page.locator('#bridge-banner').isHidden(), 'bridge banner shown while the bridge is online');
  });

  await runner.test('a live new ticket appears and beeps once', async () => {
    const beeps = Number(await page.evaluate(() => document.body.dataset.beeps || 0));
    const o = order({ order_number: 'ORD_20261125_110', order_type: 'delivery', delivery_address: '1 Quay Street' });
    board.live = o;
    const t0 = Date.now();
    await publishOrder(o);
    await publish('events', { kind: 'order_created', order_number: o.order_number, order_type: o.order_type, old_status: null,
      new_status: 'received', changed_by: 'order-service', timestamp: o.created_at, version: 1 }, { retain: false });
    await ticket(page, o.order_number).waitFor({ timeout: 2000 });
    log(`live ticket shown ${(await page.evaluate((n) => window.__seen[n], o.order_number)) - t0} ms after publish`);
    await sleep(300);
    const after = Number(await page.evaluate(() => document.body.dataset.beeps || 0));
    assert(after === beeps + 1, `expected one beep, got ${after - beeps}`);
    assert(await ticket(page, o.order_number).evaluate((e) => e.classList.contains('fresh')), 'new ticket is not highlighted');
  });

  await runner.test('stale and duplicate versions are dropped, newer ones shown', async () => {
    const num = board.dine.order_number;
    await publishOrder({ ...board.dine, status: 'received', version: 1 }); // older
    await publishOrder({ ...board.dine, status: 'ready', version: 2 }); // same version, other content
    await sleep(400);
    assert(await ticket(page, num).getAttribute('data-status') === 'cooking', 'an old or duplicate version changed the ticket');
    board.dine = { ...board.dine, status: 'ready', version: 3, status_changed_at: iso(serverNow()) };
    await publishOrder(board.dine);
    await page.locator(`article.ticket[data-order="${num}"][data-status="ready"]`).waitFor({ timeout: 2000 });
  });

  await runner.test('completed leaves the board and joins the recall list; empty payload removes', async () => {
    const num = board.dine.order_number;
    board.dine = { ...board.dine, status: 'completed', version: 4, status_changed_at: iso(serverNow()) };
    await publishOrder(board.dine);
    await ticket(page, num).waitFor({ state: 'detached', timeout: 2000 });
    await page.locator(`button.recall[data-order="${num}"]`).waitFor({ timeout: 2000 });
    const firstRecall = await page.locator('button.recall').first().getAttribute('data-order');
    assert(firstRecall === num, `newest completion is not first in the recall list (${firstRecall})`);
    await clearOrder(board.ready.order_number);
    await ticket(page, board.ready.order_number).waitFor({ state: 'detached', timeout: 2000 });
    delete board.ready;
    await clearOrder(num);
    await sleep(300);
    assert(await page.locator(`button.recall[data-order="${num}"]`).count() === 1, 'clearing removed the order from the recall list');
    await publishOrder({ ...board.dine, status: 'cooking', version: 2 }); // a late duplicate after clearing
    await sleep(300);
    assert(await ticket(page, num).count() === 0, 'a late old version brought a cleared order back');
    delete board.dine;
  });

  await runner.test("timers use the server's clock and colour at 300 s / 480 s", async () => {
    env.skewMs = 3600 * 1000; // this screen's clock is an hour behind the server's
    const p2 = await openPage('?type=dine_in');
    try {
      const fresh = order({ order_number: 'ORD_20261125_120', createdAgoMs: 10000 });
      const warn = order({ order_number: 'ORD_20261125_121', createdAgoMs: 400000 });
      const late = order({ order_number: 'ORD_20261125_122', createdAgoMs: 500000 });
      for (const o of [fresh, warn, late]) await publishOrder(o);
      await ticket(p2, late.order_number).waitFor({ timeout: 2000 });
      await sleep(1100);
      const cls = async (o) => ticket(p2, o.order_number).getAttribute('class');
      const timer = async (o) => ticket(p2, o.order_number).locator('.timer').textContent();
      assert(/\bnormal\b/.test(await cls(fresh)) && /^00:1\d$/.test(await timer(fresh)), `fresh: ${await cls(fresh)} ${await timer(fresh)}`);
      assert(/\bwarn\b/.test(await cls(warn)) && /^06:4\d$/.test(await timer(warn)), `warn: ${await cls(warn)} ${await timer(warn)}`);
      assert(/\blate\b/.test(await cls(late)) && /^08:2\d$/.test(await timer(late)), `late: ${await cls(late)} ${await timer(late)}`);
      // The dine-in view: only dine-in tickets.
      const types = await p2.locator('article.ticket').evaluateAll((els) => [...new Set(els.map((e) => e.dataset.type))]);
      assert(types.length === 1 && types[0] === 'dine_in', `dine-in view shows ${types}`);
      assert(await p2.locator('.column').count() === 1, 'dine-in view has more than one column');
      assert(p2.errors.length === 0, `page errors: ${p2.errors.join(' | ')}`);
      for (const o of [fresh, warn, late]) await clearOrder(o.order_number);
    } finally {
      env.skewMs = 0;
      await p2.close();
    }
  });

  await runner.test('broker restart: banner, then the board rebuilt from retained messages without a reload', async () => {
    await page.evaluate(() => { window.__noReload = true; });
    await waitFor('board settled', async () => (await ticketCount(page)) === 3, 3000);
    await stopProcess(env.mosquitto);
    await page.locator('#conn-banner').waitFor({ state: 'visible', timeout: 15000 });
    const text = await page.locator('#conn-banner').textContent();
    assert(/lost/i.test(text), `banner says: ${text}`);
    assert(await page.evaluate(() => document.body.dataset.conn) === 'lost', 'body data-conn is not "lost"');
    env.mosquitto = await startMosquitto(env.tmp, env.ports.mqtt, env.ports.ws); // empty: no persistence
    await page.locator('#conn-banner').waitFor({ state: 'hidden', timeout: 15000 });
    // The broker came back empty and no bridge said "online": the tickets stay, dimmed.
    await sleep(2000);
    assert(await ticketCount(page) === 3, `tickets after an empty reconnect: ${await ticketCount(page)}`);
    assert(await page.locator('article.ticket.stale').count() === 3, 'tickets are not marked stale');
    // "The bridge" republishes its snapshot: the rush order was completed and cleared meanwhile.
    delete board.rush;
    await waitFor('test client reconnected', () => env.client.connected, 10000);
    await publishBoard();
    await waitFor('the board rebuilt (2 tickets, none stale)', async () => (await ticketCount(page)) === 2
      && (await page.locator('article.ticket.stale').count()) === 0, 5000);
    assert(await ticket(page, 'ORD_20261125_102').count() === 0, 'the order cleared while away is still shown');
    assert(await page.evaluate(() => window.__noReload === true), 'the page was reloaded');
  });

  await runner.test('bridge offline: warning strip', async () => {
    await publish('bridge/status', 'offline');
    await page.locator('#bridge-banner').waitFor({ state: 'visible', timeout: 2000 });
    await publish('bridge/status', 'online');
    await page.locator('#bridge-banner').waitFor({ state: 'hidden', timeout: 2000 });
  });

  await runner.test('several boxes: when its box stops answering, the screen carries on from the next one within 10 s', async () => {
    // Box 2: a broker of its own, reached like every box's, through /mqtt on the page's port
    // (the tracking service passes it on; here the page server does).
    const dir2 = path.join(env.tmp, 'box2');
    fs.mkdirSync(dir2);
    fs.chmodSync(dir2, 0o755);
    const [m2, ws2] = await freePorts(2);
    env.mosquitto2 = await startMosquitto(dir2, m2, ws2);
    const proxy = (req, socket, head) => {
      if (!req.url.startsWith('/mqtt')) return socket.destroy();
      const up = net.connect(ws2, '127.0.0.1', () => {
        const lines = [`${req.method} ${req.url} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
        up.write(`${lines.join('\r\n')}\r\n\r\n`);
        if (head && head.length) up.write(head);
        socket.pipe(up).pipe(socket);
      });
      up.on('error', () => socket.destroy());
      socket.on('error', () => up.destroy());
    };
    env.server.on('upgrade', proxy);
    const c2 = await mqtt.connectAsync(`mqtt://127.0.0.1:${m2}`, { clientId: `rs-page-test-box2-${process.pid}` });
    // Box 2's bridge has fed its broker everything, including an order box 1's screen has not seen yet.
    const moved = order({ order_number: 'ORD_20261125_120', order_type: 'takeout', items: [{ name: 'Lasagne', quantity: 1, price: 16 }] });
    for (const o of [...Object.values(board), moved]) {
      await c2.publishAsync(`${PREFIX}/orders/${o.order_number}`, JSON.stringify(o), { qos: 1, retain: true });
    }
    await c2.publishAsync(`${PREFIX}/bridge/status`, 'online', { qos: 1, retain: true });
    env.boxes = ['127.0.0.1', 'localhost'];
    const p3 = await openPage();
    try {
      await p3.evaluate(() => { window.__noReload = true; });
      assert(await ticket(p3, moved.order_number).count() === 0, 'box 2 order shown while on box 1');
      // Box 1 stops answering without closing anything, as a box that lost its power does.
      env.mosquitto.kill('SIGSTOP');
      const t0 = Date.now();
      await ticket(p3, moved.order_number).waitFor({ timeout: 10000 });
      log(`screen on the next box ${Date.now() - t0} ms after its own stopped answering`);
      assert(await p3.evaluate(() => window.__noReload === true), 'the page was reloaded');
      assert(p3.errors.length === 0, `page errors: ${p3.errors.join(' | ')}`);
    } finally {
      env.mosquitto.kill('SIGCONT');
      env.boxes = [];
      env.server.off('upgrade', proxy);
      await p3.close();
      await c2.endAsync(true);
      await stopProcess(env.mosquitto2);
    }
  });

  if (page) {
    await runner.test('no JavaScript errors on the page', async () => {
      assert(page.errors.length === 0, `page errors: ${page.errors.join(' | ')}`);
    }, { independent: true });
  }
}

async function tearDown() {
  for (const [name, fn] of [
    ['browser', () => env.browser && env.browser.close()],
    ['mqtt client', () => env.client && env.client.endAsync(true)],
    ['server', () => env.server && new Promise((r) => env.server.close(r))],
    ['mosquitto', () => stopProcess(env.mosquitto)],
    ['second mosquitto', () => stopProcess(env.mosquitto2)],
    ['temp dir', () => env.tmp && fs.rmSync(env.tmp, { recursive: true, force: true })],
  ]) {
    try {
      await fn();
    } catch (e) {
      log(`cleanup of ${name} failed: ${e.message}`);
    }
  }
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, async () => {
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
  await tearDown();
}
console.log(runner.summary());
process.exit(runner.ok ? 0 : 1);
