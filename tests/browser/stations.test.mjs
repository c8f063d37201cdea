// Browser tests of the station and expo screens (issue 24), without the Rust services (like
// kds.test.mjs): the committed web/ files served the way the tracking service serves them, a real
// private Mosquitto, and retained payloads of the documented shape (docs/mqtt.md "Stations")
// published by a real MQTT client the way the display bridge publishes them: every order on
// P/orders/{n}, and on P/stations/{s}/orders/{n} while it has an open part at station s. The
// order service's station routes (docs/stations.md) are answered by the test's server, which
// records every call.
//
// Checks:
//   - a station screen shows only its items of each open order and names the other stations
//     ("also at: fry, bar"); all-day counts are the station's; thresholds are the station's;
//   - rush first, then oldest; an order marked rush moves to the front within a second;
//   - tapping an item calls the item's bump route and offers an undo for a few seconds, which
//     calls the undo route; "Bump" calls the station's bump route;
//   - a station screen reloaded shows the same tickets (retained per station);
//   - expo: every open order, each item's state at each station; "Send" when expo waits
//     (expo/confirm), "Rush" (rush);
//   - 40 open orders at 1920x1080 on a station screen and on expo: no scrolling, every ticket
//     shown or named by "+N more"; screenshots target/kds-station-1920x1080.png and
//     target/kds-expo-1920x1080.png;
//   - axe-core WCAG 2 AA on both screens.

import mqtt from 'mqtt';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ROOT, PREFIX, Runner, assert, assertAccessible, freePorts, launchBrowser, log, pageFile, sleep,
  startMosquitto, startPageServer, stopProcess, waitFor,
} from './lib.mjs';

const runner = new Runner();
const env = { tmp: null, ports: {}, mosquitto: null, server: null, browser: null, client: null, calls: [] };
const SHOTS = path.join(ROOT, 'target');
const STATIONS = {
  stations: [
    { name: 'grill', yellow_after_seconds: 120, red_after_seconds: 240 },
    { name: 'fry', yellow_after_seconds: 300, red_after_seconds: 480 },
    { name: 'bar', yellow_after_seconds: 300, red_after_seconds: 480 },
  ],
  default: 'grill',
  undo_seconds: 4,
  expo: { confirm: true },
};
const NAMES = STATIONS.stations.map((s) => s.name);

const iso = (ms) => new Date(ms).toISOString();
let seq = 700;

// An item routed to `stations` (all waiting unless `states` says otherwise).
function item(name, stations, fields = {}) {
  const states = fields.states || {};
  const it = { name, quantity: 1, price: 9.5, category: null, ...fields };
  delete it.states;
  it.stations = stations.map((st) => ({
    station: st, state: states[st] || 'waiting', started_at: null, started_by: null,
    bumped_by: states[st] === 'done' ? 'anna' : null, bumped_at: states[st] === 'done' ? iso(Date.now()) : null,
  }));
  return it;
}

function order(fields) {
  const created = Date.now() - (fields.createdAgoMs ?? 0);
  const o = {
    order_number: `ORD_20261207_${String(++seq).padStart(3, '0')}`,
    order_type: 'takeout',
    customer_name: 'Sam Lee',
    table_number: null,
    delivery_address: null,
    items: [item('Bacon Burger', ['grill'])],
    total_amount: 20,
    priority: 1,
    status: 'received',
    processed_by: null,
    created_at: iso(created),
    status_changed_at: iso(created),
    estimated_completion: null,
    rush: false,
    expo: { confirm: true, waiting: false, stations_done_at: null },
    version: 1,
    server_time: iso(Date.now()),
    ...fields,
  };
  delete o.createdAgoMs;
  return o;
}

const publish = (topic, body) => env.client.publishAsync(`${PREFIX}/${topic}`,
  body === '' ? '' : JSON.stringify(body), { qos: 1, retain: true });

// What the bridge does with one order's state: the order's topic, and each station's topic while
// the order has a part there that is not done (else an empty retained payload clears it).
async function publishOrder(o) {
  await publish(`orders/${o.order_number}`, o);
  const open = o.status === 'received' || o.status === 'cooking';
  for (const st of NAMES) {
    const here = o.items.some((it) => it.stations.some((p) => p.station === st && p.state !== 'done'));
    await publish(`stations/${st}/orders/${o.order_number}`, open && here ? o : '');
  }
}

async function clearOrder(o) {
  await publish(`orders/${o.order_number}`, '');
  for (const st of NAMES) await publish(`stations/${st}/orders/${o.order_number}`, '');
}

async function openScreen(query, size = { width: 1280, height: 800 }) {
  const page = await env.browser.newPage({ viewport: size });
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  const resp = await page.goto(`http://127.0.0.1:${env.ports.http}/display${query}`);
  assert(resp && resp.ok(), `GET /display${query} answered ${resp && resp.status()}`);
  await page.waitForSelector('#board[data-synced="true"]', { timeout: 10000 });
  return page;
}

const ticket = (page, o) => page.locator(`article.ticket[data-order="${o.order_number}"]`);
const shownOrders = (page) => page.$$eval('article.ticket', (els) => els.filter((e) => getComputedStyle(e).display !== 'none').map((e) => e.dataset.order));
const callsFor = (o) => env.calls.filter((c) => c.path.startsWith(`/orders/${o.order_number}/`));

// Station screen order: rush, then priority, then oldest.
function boardOrder(a, b) {
  if (a.rush !== b.rush) return a.rush ? -1 : 1;
  if (a.priority !== b.priority) return b.priority - a.priority;
  const d = Date.parse(a.created_at) - Date.parse(b.created_at);
  return d || (a.order_number < b.order_number ? -1 : 1);
}

// The page measured: no scrolling; tickets shown wholly, in order; the rest on "+N more".
async function checkNothingHidden(page, expected, label) {
  const m = await page.evaluate(() => {
    const vw = innerWidth;
    const vh = innerHeight;
    const col = document.querySelector('.column');
    const b = col.querySelector('.tickets').getBoundingClientRect();
    const shown = [...col.querySelectorAll('article.ticket')].filter((t) => getComputedStyle(t).display !== 'none').map((t) => {
      const r = t.getBoundingClientRect();
      return { order: t.dataset.order, whole: r.left >= b.left - 0.5 && r.top >= b.top - 0.5 && r.right <= b.right + 0.5 && r.bottom <= Math.min(b.bottom, vh) + 0.5 };
    });
    const more = col.querySelector('.more');
    const moreShown = getComputedStyle(more).display !== 'none';
    return {
      scroll: [document.scrollingElement.scrollWidth, document.scrollingElement.scrollHeight, vw, vh],
      shown,
      more: moreShown ? { count: Number(more.dataset.count), orders: (more.dataset.orders || '').split(' ').filter(Boolean), bottom: more.getBoundingClientRect().bottom } : null,
    };
  });
  assert(m.scroll[0] <= m.scroll[2] && m.scroll[1] <= m.scroll[3], `${label}: the page scrolls (${m.scroll})`);
  const want = expected.slice().sort(boardOrder).map((o) => o.order_number);
  const notWhole = m.shown.filter((t) => !t.whole).map((t) => t.order);
  assert(notWhole.length === 0, `${label}: shown but not wholly on screen: ${notWhole}`);
  assert(JSON.stringify(m.shown.map((t) => t.order)) === JSON.stringify(want.slice(0, m.shown.length)), `${label}: the shown tickets are not the first in board order`);
  const hidden = want.slice(m.shown.length);
  if (hidden.length) {
    assert(m.more && m.more.count === hidden.length && JSON.stringify(m.more.orders) === JSON.stringify(hidden), `${label}: marker ${JSON.stringify(m.more)} for ${hidden.length} hidden`);
    assert(m.more.bottom <= m.scroll[3] + 0.5, `${label}: the marker is off screen`);
  } else {
    assert(!m.more, `${label}: a marker with nothing hidden`);
  }
  return { shown: m.shown.length, announced: hidden.length };
}

async function main() {
  await runner.test('set up (private Mosquitto, static server with the station routes, Chromium)', async () => {
    env.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rs-stations-test-'));
    fs.chmodSync(env.tmp, 0o755);
    const [mqttPort, ws, httpPort] = await freePorts(3);
    env.ports = { mqtt: mqttPort, ws, http: httpPort };
    for (const f of ['index.html', 'display.js', 'display.css', 'mqtt.min.js']) assert(fs.existsSync(pageFile(f)), `${pageFile(f)} is missing`);
    env.mosquitto = await startMosquitto(env.tmp, mqttPort, ws);
    env.server = await startPageServer(httpPort, () => ({
      mqtt_ws_url: `ws://127.0.0.1:${ws}`, topic_prefix: 'restaurant', site: 'main',
      order_service_url: `http://127.0.0.1:${httpPort}`,
      yellow_after_seconds: 300, red_after_seconds: 480, server_time: iso(Date.now()),
    }), (url, res, req) => {
      if (url.pathname === '/stations') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(STATIONS));
        return true;
      }
      if (url.pathname.startsWith('/orders/') && req.method === 'POST') {
        let body = '';
        req.on('data', (c) => { body += c; });
        req.on('end', () => {
          env.calls.push({ path: url.pathname, body: body ? JSON.parse(body) : null });
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ changed: true }));
        });
        return true;
      }
      if (url.pathname === '/reports/speed-of-service') {
        res.writeHead(503, { 'content-type': 'application/json' });
        res.end('{"error":"not in this test"}');
        return true;
      }
      return false;
    });
    env.client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: `rs-stations-test-${process.pid}`, reconnectPeriod: 300 });
    await publish('bridge/status', 'online');
    env.browser = await launchBrowser();
    fs.mkdirSync(SHOTS, { recursive: true });
  });

  // One order at all three stations, another only at the grill.
  const combo = order({
    createdAgoMs: 150000,
    items: [
      item('Bacon Burger', ['grill'], { quantity: 2, allergens: ['gluten'] }),
      item('Fries', ['fry']),
      item('Cola', ['bar']),
    ],
  });
  const solo = order({ createdAgoMs: 60000, items: [item('Veggie Burger', ['grill'])] });

  await runner.test('a station screen shows only its items, names the other stations, counts its all-day', async () => {
    await publishOrder(combo);
    await publishOrder(solo);
    const grill = await openScreen('?station=grill');
    const fry = await openScreen('?station=fry');
    try {
      await ticket(grill, combo).waitFor({ timeout: 5000 });
      await ticket(grill, solo).waitFor({ timeout: 5000 });
      const g = await ticket(grill, combo).innerText();
      assert(g.includes('Bacon Burger') && !g.includes('Fries') && !g.includes('Cola'), `grill ticket shows: ${g}`);
      assert(/also at:\s*fry, bar/.test(g), `grill ticket does not name the other stations: ${g}`);
      assert((await ticket(grill, combo).locator('.t-allergens').textContent()).toUpperCase().includes('GLUTEN'), 'grill ticket lacks its allergen band');
      await ticket(fry, combo).waitFor({ timeout: 5000 });
      assert(await ticket(fry, solo).count() === 0, 'the fry screen shows an order with nothing for fry');
      const f = await ticket(fry, combo).innerText();
      assert(f.includes('Fries') && !f.includes('Bacon Burger') && /also at:\s*grill, bar/.test(f), `fry ticket: ${f}`);
      assert(!(await fry.locator('.t-allergens').count()), 'the fry ticket shows the burger\'s allergens');
      const allDay = await grill.$$eval('#allday-items .ad', (els) => els.map((e) => e.textContent));
      assert(JSON.stringify(allDay) === JSON.stringify(['2Bacon Burger', '1Veggie Burger']), `grill all-day: ${allDay}`);
      assert(await grill.locator('h1').textContent() === 'grill', 'the heading names the station');
      // Thresholds are the station's: 150 s is yellow at the grill (120 s), not at fry (300 s).
      await sleep(1100);
      assert(/\bwarn\b/.test(await ticket(grill, combo).getAttribute('class')), 'grill: not yellow after 150 s (its threshold is 120 s)');
      assert(/\bnormal\b/.test(await ticket(fry, combo).getAttribute('class')), 'fry: not normal after 150 s (its threshold is 300 s)');
      assert(grill.errors.length === 0 && fry.errors.length === 0, `page errors: ${grill.errors} ${fry.errors}`);
    } finally {
      await grill.close();
      await fry.close();
    }
  });

  await runner.test('rush first, then oldest; an order marked rush moves to the front within a second', async () => {
    const grill = await openScreen('?station=grill');
    try {
      await waitFor('two tickets', async () => (await shownOrders(grill)).length === 2, 5000);
      assert(JSON.stringify(await shownOrders(grill)) === JSON.stringify([combo.order_number, solo.order_number]), 'not oldest first');
      Object.assign(solo, { rush: true, version: solo.version + 1 });
      const t0 = Date.now();
      await publishOrder(solo);
      await waitFor('the rushed order in front', async () => (await shownOrders(grill))[0] === solo.order_number, 1000, 20);
      log(`rush reached the front of the grill screen in ${Date.now() - t0} ms`);
      assert(await ticket(grill, solo).locator('.badge-rush').count() === 1, 'no RUSH badge');
    } finally {
      await grill.close();
    }
  });

  await runner.test('tap an item: its bump route, an undo for a few seconds; Bump: the station route', async () => {
    const grill = await openScreen('?station=grill');
    try {
      await ticket(grill, combo).waitFor({ timeout: 5000 });
      env.calls = [];
      await ticket(grill, combo).locator('button.part-tap[data-index="0"]').click();
      await waitFor('the bump call', async () => callsFor(combo).length === 1, 3000);
      assert(callsFor(combo)[0].path === `/orders/${combo.order_number}/stations/grill/items/0/bump`, `called ${callsFor(combo)[0].path}`);
      const undo = grill.locator(`button.undo[data-order="${combo.order_number}"]`);
      await undo.waitFor({ timeout: 2000 });
      assert(/Bacon Burger/.test(await undo.textContent()), 'the undo button does not name the item');
      await undo.click();
      await waitFor('the undo call', async () => callsFor(combo).length === 2, 3000);
      assert(callsFor(combo)[1].path === `/orders/${combo.order_number}/stations/grill/items/0/undo`, `called ${callsFor(combo)[1].path}`);
      // The call goes out before the page redraws: wait for the redraw, not a fixed moment.
      await waitFor('the undo button to go after use', async () => (await undo.count()) === 0, 2000);
      // The bump's state comes back through MQTT: the part done, the ticket leaves the grill.
      await ticket(grill, solo).locator('button.part-tap').click();
      await grill.locator(`button.undo[data-order="${solo.order_number}"]`).waitFor({ timeout: 2000 });
      await grill.locator(`button.undo[data-order="${solo.order_number}"]`).waitFor({ state: 'detached', timeout: STATIONS.undo_seconds * 1000 + 2000 });
      // Bump: every grill item of the order at once.
      env.calls = [];
      await ticket(grill, combo).locator('button.bump').click();
      await waitFor('the station bump call', async () => callsFor(combo).length === 1, 3000);
      assert(callsFor(combo)[0].path === `/orders/${combo.order_number}/stations/grill/bump`, `called ${callsFor(combo)[0].path}`);
      await grill.locator(`button.undo[data-order="${combo.order_number}"]`).waitFor({ timeout: 2000 });
      // The bridge then publishes the grill part done: the ticket leaves the grill screen.
      combo.items[0].stations[0] = { ...combo.items[0].stations[0], state: 'done', bumped_by: 'grill', bumped_at: iso(Date.now()) };
      combo.status = 'cooking';
      combo.version += 2;
      await publishOrder(combo);
      await ticket(grill, combo).waitFor({ state: 'detached', timeout: 2000 });
      assert(grill.errors.length === 0, `page errors: ${grill.errors}`);
    } finally {
      await grill.close();
    }
  });

  await runner.test('a station screen reloaded shows the same tickets at once', async () => {
    const fry = await openScreen('?station=fry');
    try {
      await ticket(fry, combo).waitFor({ timeout: 5000 });
      const before = await shownOrders(fry);
      await fry.reload();
      await ticket(fry, combo).waitFor({ timeout: 3000 });
      await fry.waitForSelector('#board[data-synced="true"]', { timeout: 10000 });
      assert(JSON.stringify(await shownOrders(fry)) === JSON.stringify(before), `after the reload: ${await shownOrders(fry)}, before: ${before}`);
      assert(/also at:\s*grill ✓, bar/.test(await ticket(fry, combo).innerText()), 'the done grill part is not ticked on the fry ticket');
    } finally {
      await fry.close();
    }
  });

  await runner.test('expo: each item\'s state at each station; Send when every station is done; Rush', async () => {
    const expo = await openScreen('?view=expo');
    try {
      await ticket(expo, combo).waitFor({ timeout: 5000 });
      const chips = await ticket(expo, combo).locator('.chip').evaluateAll((els) => els.map((e) => `${e.dataset.station}:${e.dataset.state}`));
      assert(JSON.stringify(chips) === JSON.stringify(['grill:done', 'fry:waiting', 'bar:waiting']), `expo chips: ${chips}`);
      assert(await ticket(expo, combo).locator('button.confirm').count() === 0, 'Send offered while stations are open');
      // Fry and bar done: the order waits for expo (confirm = true).
      for (const i of [1, 2]) combo.items[i].stations[0] = { ...combo.items[i].stations[0], state: 'done', bumped_by: 'sam', bumped_at: iso(Date.now()) };
      combo.expo = { confirm: true, waiting: true, stations_done_at: iso(Date.now()) };
      combo.version += 2;
      await publishOrder(combo);
      const send = ticket(expo, combo).locator('button.confirm');
      await send.waitFor({ timeout: 2000 });
      assert(/at expo/i.test(await ticket(expo, combo).locator('.t-status').textContent()), 'status does not say it waits at expo');
      env.calls = [];
      await send.click();
      await waitFor('the confirm call', async () => callsFor(combo).length === 1, 3000);
      assert(callsFor(combo)[0].path === `/orders/${combo.order_number}/expo/confirm`, `called ${callsFor(combo)[0].path}`);
      env.calls = [];
      await ticket(expo, solo).locator('button.rush-toggle').click();
      await waitFor('the rush call', async () => callsFor(solo).length === 1, 3000);
      assert(callsFor(solo)[0].path === `/orders/${solo.order_number}/rush` && callsFor(solo)[0].body.rush === false, `rush call: ${JSON.stringify(callsFor(solo)[0])}`);
      assert(expo.errors.length === 0, `page errors: ${expo.errors}`);
      await clearOrder(combo);
      await clearOrder(solo);
    } finally {
      await expo.close();
    }
  });

  await runner.test('40 open orders at 1920x1080: station and expo never scroll, hide nothing unnamed; WCAG 2 AA', async () => {
    const menu = [['Bacon Burger', ['grill']], ['Fries', ['fry']], ['Cola', ['bar']], ['Burger Combo', ['grill', 'fry']], ['Onion Rings', ['fry']], ['Milkshake', ['bar']]];
    const forty = [];
    for (let i = 0; i < 40; i++) {
      const n = 1 + (i % 4);
      const items = Array.from({ length: n }, (_, k) => {
        const [name, sts] = menu[(i + k * 2) % menu.length];
        const states = Object.fromEntries(sts.map((st, j) => [st, (i + j) % 5 === 0 ? 'done' : (i + j) % 5 === 1 ? 'cooking' : 'waiting']));
        const extra = {};
        if ((i + k) % 7 === 0) extra.modifiers = ['no onions'];
        if ((i + k) % 9 === 0) extra.allergens = ['gluten', 'milk'];
        return item(name, sts, { quantity: 1 + ((i + k) % 3), states, ...extra });
      });
      forty.push(order({
        order_type: ['dine_in', 'takeout', 'delivery'][i % 3],
        table_number: i % 3 === 0 ? 4 + i : null,
        delivery_address: i % 3 === 2 ? `${10 + i} Harbour Road` : null,
        items,
        rush: i % 17 === 5,
        priority: i % 13 === 0 ? 10 : 1,
        status: i % 6 === 0 ? 'received' : 'cooking',
        createdAgoMs: (40 - i) * 15000,
      }));
    }
    for (const o of forty) await publishOrder(o);
    const size = { width: 1920, height: 1080 };
    const atGrill = forty.filter((o) => o.items.some((it) => it.stations.some((p) => p.station === 'grill' && p.state !== 'done')));
    const grill = await openScreen('?station=grill', size);
    try {
      await waitFor('the grill\'s tickets', async () => (await grill.evaluate(() => window.kitchenDisplay.orders.size)) === atGrill.length, 10000);
      await sleep(300);
      const r = await checkNothingHidden(grill, atGrill, 'grill 1920x1080');
      console.log(`station grill 1920x1080: ${r.shown} shown, ${r.announced} announced (${atGrill.length} open at the grill)`);
      await grill.screenshot({ path: path.join(SHOTS, 'kds-station-1920x1080.png') });
      await assertAccessible(grill, 'station screen (grill, 40 orders)');
    } finally {
      await grill.close();
    }
    const expo = await openScreen('?view=expo', size);
    try {
      await waitFor('40 orders on expo', async () => (await expo.evaluate(() => window.kitchenDisplay.orders.size)) === 40, 10000);
      await sleep(300);
      const r = await checkNothingHidden(expo, forty, 'expo 1920x1080');
      console.log(`expo 1920x1080: ${r.shown} shown, ${r.announced} announced`);
      await expo.screenshot({ path: path.join(SHOTS, 'kds-expo-1920x1080.png') });
      await assertAccessible(expo, 'expo screen (40 orders)');
    } finally {
      await expo.close();
    }
    for (const o of forty) await clearOrder(o);
  });
}

async function tearDown() {
  for (const [name, fn] of [
    ['browser', () => env.browser && env.browser.close()],
    ['mqtt client', () => env.client && env.client.endAsync(true)],
    ['server', () => env.server && new Promise((r) => env.server.close(r))],
    ['mosquitto', () => stopProcess(env.mosquitto)],
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
