// Browser tests of issue 13's pages, without the Rust services (like page.test.mjs): the committed
// web/ files served the way the tracking service serves them, a real private Mosquitto, retained
// payloads of the documented shape (docs/mqtt.md) published by a real MQTT client.
//
// Checks:
//   - a ticket shows the order note, item modifiers, item notes and allergens (a red band);
//   - with 40 open orders at 1920x1080 and 1280x800 (all orders and one order type): the page never
//     scrolls, every ticket is either wholly on screen or hidden and named by its column's
//     "+N more" marker, the shown ones are the first in the board's order (rush, then oldest),
//     and a new or removed ticket updates the marker;
//   - the header's rolling ticket time comes from /reports/speed-of-service;
//   - the customer board (/board): preparing and ready lanes, short numbers in large type, a
//     number that becomes ready is called out for a few seconds, completed ones leave, and
//     40 orders at 1280x800 are shown or counted.
// Screenshots: target/kds-board-1920x1080.png, target/kds-board-1280x800.png,
// target/customer-board.png.

import mqtt from 'mqtt';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ROOT, PREFIX, Runner, assert, assertAccessible, freePorts, launchBrowser, log, pageFile, sleep, startMosquitto,
  startPageServer, stopProcess, waitFor,
} from './lib.mjs';

const runner = new Runner();
const env = { tmp: null, ports: {}, mosquitto: null, server: null, browser: null, client: null, speedQueries: [] };
const SHOTS = path.join(ROOT, 'target');

const iso = (ms) => new Date(ms).toISOString();
let seq = 500;

function order(fields) {
  const created = Date.now() - (fields.createdAgoMs ?? 0);
  const o = {
    order_number: `ORD_20261125_${String(++seq).padStart(3, '0')}`,
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
    estimated_completion: null,
    version: 1,
    server_time: iso(Date.now()),
    ...fields,
  };
  delete o.createdAgoMs;
  if (o.order_type === 'dine_in' && o.table_number === null) o.table_number = 12;
  if (o.order_type === 'delivery' && !o.delivery_address) o.delivery_address = '12 Harbour Road, Flat 3';
  return o;
}

const publish = (topic, body, retain = true) => env.client.publishAsync(`${PREFIX}/${topic}`,
  body === '' ? '' : JSON.stringify(body), { qos: 1, retain });
const publishOrder = (o) => publish(`orders/${o.order_number}`, o);
const clearOrder = (num) => publish(`orders/${num}`, '');

// The kitchen board's order: rush first, then oldest (display.js compareTickets).
function boardOrder(a, b) {
  if (a.priority !== b.priority) return b.priority - a.priority;
  const d = Date.parse(a.created_at) - Date.parse(b.created_at);
  return d || (a.order_number < b.order_number ? -1 : 1);
}

const MENU = ['Margherita Pizza', 'Caesar Salad', 'Steak', 'Burger', 'Fries', 'Pad Thai', 'Tiramisu', 'Ribeye'];

// 40 open orders: 20 dine-in, 12 takeout, 8 delivery; mixed statuses, sizes, details, rush.
function fortyOrders() {
  const list = [];
  for (let i = 0; i < 40; i++) {
    const type = i % 5 < 2 ? 'dine_in' : i % 5 < 4 ? (i % 10 < 5 ? 'takeout' : 'dine_in') : i % 10 === 4 ? 'delivery' : 'takeout';
    const n = 1 + (i % 4);
    const items = Array.from({ length: n }, (_, k) => {
      const it = { name: MENU[(i + k * 3) % MENU.length], quantity: 1 + ((i + k) % 3), price: 9.5 };
      if ((i + k) % 7 === 0) it.modifiers = ['no onions', 'extra cheese'];
      if ((i + k) % 9 === 0) it.allergens = ['gluten', 'milk'];
      if ((i + k) % 11 === 0) it.notes = 'well done';
      return it;
    });
    list.push(order({
      order_type: type,
      items,
      priority: i % 13 === 0 ? 10 : 1,
      status: ['received', 'cooking', 'ready'][i % 3],
      notes: i % 8 === 0 ? 'Birthday: candle on the dessert' : undefined,
      createdAgoMs: (40 - i) * 20000,
      delivery_address: type === 'delivery' ? `${10 + i} Harbour Road, Flat ${i}` : null,
    }));
  }
  return list;
}

// What the kitchen page shows, measured in the page.
function measureKitchen() {
  const vw = window.innerWidth;
  const vh = window.innerHeight;
  const doc = document.scrollingElement;
  const inView = (r) => r.left >= -0.5 && r.top >= -0.5 && r.right <= vw + 0.5 && r.bottom <= vh + 0.5 && r.width > 0 && r.height > 0;
  const within = (r, b) => r.left >= b.left - 0.5 && r.top >= b.top - 0.5 && r.right <= b.right + 0.5 && r.bottom <= b.bottom + 0.5;
  const columns = [...document.querySelectorAll('.column')].map((col) => {
    const box = col.querySelector('.tickets');
    const b = box.getBoundingClientRect();
    const tickets = [...col.querySelectorAll('article.ticket')].map((t) => {
      const r = t.getBoundingClientRect();
      const shown = getComputedStyle(t).display !== 'none';
      return { order: t.dataset.order, shown, whole: shown && inView(r) && within(r, b) };
    });
    const more = col.querySelector('.more');
    const moreShown = !!more && getComputedStyle(more).display !== 'none';
    return {
      type: col.dataset.type,
      tickets,
      more: moreShown ? {
        count: Number(more.dataset.count),
        orders: (more.dataset.orders || '').split(' ').filter(Boolean),
        whole: inView(more.getBoundingClientRect()) && within(more.getBoundingClientRect(), col.getBoundingClientRect()),
        text: more.textContent,
      } : null,
    };
  });
  return {
    scroll: { h: doc.scrollHeight, w: doc.scrollWidth, vw, vh, y: window.scrollY },
    columns,
  };
}

// Asserts "nothing hidden without a marker" against the published open orders.
function checkNothingHidden(m, open, label) {
  assert(m.scroll.h <= m.scroll.vh && m.scroll.w <= m.scroll.vw,
    `${label}: the page scrolls (${m.scroll.w}x${m.scroll.h} in ${m.scroll.vw}x${m.scroll.vh})`);
  let shownTotal = 0;
  let announced = 0;
  for (const col of m.columns) {
    const expected = open.filter((o) => o.order_type === col.type).sort(boardOrder).map((o) => o.order_number);
    const shown = col.tickets.filter((t) => t.shown);
    const notWhole = shown.filter((t) => !t.whole).map((t) => t.order);
    assert(notWhole.length === 0, `${label} ${col.type}: tickets shown but not wholly on screen: ${notWhole.join(' ')}`);
    const hidden = expected.slice(shown.length);
    assert(JSON.stringify(shown.map((t) => t.order)) === JSON.stringify(expected.slice(0, shown.length)),
      `${label} ${col.type}: the shown tickets are not the first ${shown.length} in board order`);
    if (hidden.length) {
      assert(col.more, `${label} ${col.type}: ${hidden.length} tickets hidden and no "+N more" marker`);
      assert(col.more.whole, `${label} ${col.type}: the marker is not wholly on screen`);
      assert(col.more.count === hidden.length && new RegExp(`\\+${hidden.length} more`).test(col.more.text),
        `${label} ${col.type}: marker says ${col.more.text}, ${hidden.length} hidden`);
      assert(JSON.stringify(col.more.orders) === JSON.stringify(hidden), `${label} ${col.type}: marker names ${col.more.orders}, hidden ${hidden}`);
    } else {
      assert(!col.more, `${label} ${col.type}: a marker with nothing hidden`);
    }
    shownTotal += shown.length;
    announced += hidden.length;
  }
  return { shown: shownTotal, announced };
}

async function openKitchen(size, query = '') {
  const page = await env.browser.newPage({ viewport: size });
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  const resp = await page.goto(`http://127.0.0.1:${env.ports.http}/display${query}`);
  assert(resp && resp.ok(), `GET /display${query} answered ${resp && resp.status()}`);
  try {
    await page.waitForSelector('#board[data-synced="true"]', { timeout: 10000 });
  } catch (e) {
    throw new Error(`${e.message}; page errors: ${page.errors.join(' | ') || 'none'}`);
  }
  return page;
}

const openCount = (page) => page.evaluate(() => [...window.kitchenDisplay.orders.values()]
  .filter((o) => ['received', 'cooking', 'ready'].includes(o.status)).length);

async function main() {
  let forty = [];

  await runner.test('set up (private Mosquitto, static server, Chromium)', async () => {
    env.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rs-kds-test-'));
    fs.chmodSync(env.tmp, 0o755);
    const [mqttPort, ws, httpPort] = await freePorts(3);
    env.ports = { mqtt: mqttPort, ws, http: httpPort };
    for (const f of ['index.html', 'display.js', 'display.css', 'board.html', 'board.js', 'board.css', 'mqtt.min.js']) {
      assert(fs.existsSync(pageFile(f)), `${pageFile(f)} is missing`);
    }
    env.mosquitto = await startMosquitto(env.tmp, mqttPort, ws);
    env.server = await startPageServer(httpPort, () => ({
      mqtt_ws_url: `ws://127.0.0.1:${ws}`, topic_prefix: 'restaurant', site: 'main', order_service_url: '',
      yellow_after_seconds: 300, red_after_seconds: 480, server_time: iso(Date.now()),
    }), (url, res) => {
      if (url.pathname !== '/reports/speed-of-service') return false;
      env.speedQueries.push(url.search);
      const stats = { count: 7, avg_seconds: 307.4, p50_seconds: 280, p90_seconds: 512 };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ from: url.searchParams.get('from'), to: url.searchParams.get('to'), overall: { orders: 9, received_to_ready: stats, ready_to_completed: stats }, by_order_type: {}, by_worker: {} }));
      return true;
    });
    env.client = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: `rs-kds-test-${process.pid}`, reconnectPeriod: 300 });
    await publish('bridge/status', 'online');
    env.browser = await launchBrowser();
    fs.mkdirSync(SHOTS, { recursive: true });
  });

  await runner.test('a ticket shows the order note, modifiers, item notes and allergens', async () => {
    const o = order({
      order_type: 'takeout',
      notes: 'Customer waits at the bar',
      items: [
        { name: 'Burger', quantity: 2, price: 12.5, modifiers: ['no onions', 'extra cheese'], notes: 'well done', allergens: ['gluten', 'sesame'] },
        { name: 'Satay', quantity: 1, price: 9, allergens: ['peanuts'] },
        { name: 'Fries', quantity: 1, price: 4.5 },
      ],
    });
    await publishOrder(o);
    const page = await openKitchen({ width: 1280, height: 800 });
    try {
      const t = page.locator(`article.ticket[data-order="${o.order_number}"]`);
      await t.waitFor({ timeout: 5000 });
      const band = t.locator('.t-allergens');
      assert(await band.isVisible(), 'no allergen band on the ticket');
      const bandText = (await band.textContent()).toUpperCase();
      for (const a of ['GLUTEN', 'SESAME', 'PEANUTS']) assert(bandText.includes(a), `allergen band lacks ${a}: ${bandText}`);
      const bg = await band.evaluate((e) => getComputedStyle(e).backgroundColor);
      assert(bg === 'rgb(208, 28, 31)', `allergen band is not the alarm red (white text at 5.4:1): ${bg}`);
      assert(await t.evaluate((e) => e.classList.contains('has-allergens')), 'ticket is not marked has-allergens');
      const text = await t.innerText();
      for (const s of ['Customer waits at the bar', 'no onions', 'extra cheese', 'well done']) assert(text.includes(s), `ticket lacks "${s}": ${text}`);
      assert(await t.locator('.i-allergen[data-allergen="peanuts"]').count() === 1, 'item allergen badge missing');
      // A payload from an older bridge (no such fields) shows as before.
      const plain = order({ order_type: 'takeout' });
      await publishOrder(plain);
      await page.locator(`article.ticket[data-order="${plain.order_number}"]`).waitFor({ timeout: 5000 });
      assert(await page.locator(`article.ticket[data-order="${plain.order_number}"] .t-allergens, article.ticket[data-order="${plain.order_number}"] .t-notes`).count() === 0, 'a plain ticket shows details');
      assert(page.errors.length === 0, `page errors: ${page.errors.join(' | ')}`);
      await clearOrder(o.order_number);
      await clearOrder(plain.order_number);
    } finally {
      await page.close();
    }
  });

  await runner.test('header shows the rolling ticket time of the last hour', async () => {
    const page = await openKitchen({ width: 1920, height: 1080 });
    try {
      await waitFor('ticket time in the header', async () => (await page.locator('#speed .v').textContent()) === '05:07', 5000);
      const q = new URLSearchParams(env.speedQueries[env.speedQueries.length - 1]);
      const span = Date.parse(q.get('to')) - Date.parse(q.get('from'));
      assert(Math.abs(span - 3660000) < 5000, `queried a window of ${span} ms, expected the last hour (+1 min)`);
    } finally {
      await page.close();
    }
  });

  for (const size of [{ width: 1920, height: 1080 }, { width: 1280, height: 800 }]) {
    const label = `${size.width}x${size.height}`;
    await runner.test(`40 open orders at ${label}: every ticket shown or named by "+N more", no scrolling`, async () => {
      if (forty.length === 0) {
        forty = fortyOrders();
        for (const o of forty) await publishOrder(o);
      }
      const page = await openKitchen(size);
      try {
        await waitFor('40 orders received', async () => (await openCount(page)) === 40, 10000);
        await sleep(300);
        const r = checkNothingHidden(await page.evaluate(measureKitchen), forty, `all orders ${label}`);
        log(`all orders ${label}: ${r.shown} tickets shown, ${r.announced} on "+N more" markers`);
        console.log(`all orders ${label}: ${r.shown} shown, ${r.announced} announced`);
        assert(r.shown + r.announced === 40, `${r.shown} + ${r.announced} != 40`);
        assert(r.shown >= 3, `only ${r.shown} tickets fit`);
        await page.screenshot({ path: path.join(SHOTS, `kds-board-${label}.png`) });

        // One order type, the busiest.
        const p2 = await openKitchen(size, '?type=dine_in');
        try {
          await waitFor('orders on the dine-in page', async () => (await openCount(p2)) === 40, 10000);
          await sleep(300);
          const s = checkNothingHidden(await p2.evaluate(measureKitchen), forty.filter((o) => o.order_type === 'dine_in'), `dine_in ${label}`);
          console.log(`type dine_in ${label}: ${s.shown} shown, ${s.announced} announced`);
        } finally {
          await p2.close();
        }
        assert(page.errors.length === 0, `page errors: ${page.errors.join(' | ')}`);
      } finally {
        await page.close();
      }
    });
  }

  // Issue 24: every screen passes axe-core's WCAG 2 AA rules, with a full board (allergen
  // chips, rush and late tickets, the "+N more" strip) where the contrast rules have the most to check.
  await runner.test('kitchen page, all orders and one order type, 40 tickets: axe-core WCAG 2 AA', async () => {
    for (const [query, label] of [['', 'kitchen page (all orders)'], ['?type=dine_in', 'kitchen page (dine-in)']]) {
      const page = await openKitchen({ width: 1920, height: 1080 }, query);
      try {
        await waitFor('40 orders received', async () => (await openCount(page)) === 40, 10000);
        await sleep(300);
        assert(await page.locator('h1:visible').count() === 1, `${label}: not exactly one visible level-one heading`);
        await assertAccessible(page, label);
      } finally {
        await page.close();
      }
    }
  });

  await runner.test('a new ticket and a bumped one keep the marker right (live, 1280x800)', async () => {
    const page = await openKitchen({ width: 1280, height: 800 });
    try {
      await waitFor('40 orders received', async () => (await openCount(page)) === 40, 10000);
      const extra = order({ order_type: 'takeout', createdAgoMs: 0 });
      await publishOrder(extra);
      let open = [...forty, extra];
      await waitFor('41 open', async () => (await openCount(page)) === 41, 5000);
      await sleep(200);
      checkNothingHidden(await page.evaluate(measureKitchen), open, 'after a new ticket');
      // Completing the first shown takeout ticket brings the first hidden one on screen.
      const first = open.filter((o) => o.order_type === 'takeout').sort(boardOrder)[0];
      await publishOrder({ ...first, status: 'completed', version: first.version + 1 });
      open = open.filter((o) => o !== first);
      await waitFor('40 open', async () => (await openCount(page)) === 40, 5000);
      await sleep(200);
      checkNothingHidden(await page.evaluate(measureKitchen), open, 'after a bump');
      await publishOrder({ ...first, version: first.version + 2 }); // back (recall), for the next test
      await clearOrder(extra.order_number);
    } finally {
      await page.close();
    }
  });

  await runner.test('customer board: preparing and ready lanes, large short numbers, completed gone', async () => {
    const page = await env.browser.newPage({ viewport: { width: 1920, height: 1080 } });
    try {
      for (const o of forty) await clearOrder(o.order_number);
      const prep = order({ order_type: 'takeout', status: 'cooking', createdAgoMs: 60000 });
      const waiting = order({ order_type: 'delivery', status: 'received' });
      const ready = order({ order_type: 'takeout', status: 'ready', status_changed_at: iso(Date.now() - 60000), createdAgoMs: 120000 });
      const done = order({ order_type: 'takeout', status: 'completed' });
      for (const o of [prep, waiting, ready, done]) await publishOrder(o);
      const resp = await page.goto(`http://127.0.0.1:${env.ports.http}/board`);
      assert(resp && resp.ok(), `GET /board answered ${resp && resp.status()}`);
      await page.waitForSelector('body[data-synced="true"]', { timeout: 10000 });
      const lane = (id) => page.$$eval(`#${id} .num`, (els) => els.map((e) => [e.dataset.order, e.textContent]));
      await waitFor('lanes filled', async () => (await lane('preparing')).length === 2 && (await lane('ready')).length === 1, 5000);
      assert(JSON.stringify(await lane('preparing')) === JSON.stringify([[prep.order_number, prep.order_number.slice(-3)], [waiting.order_number, waiting.order_number.slice(-3)]]),
        `preparing lane: ${JSON.stringify(await lane('preparing'))}`);
      assert((await lane('ready'))[0][1] === ready.order_number.slice(-3), 'ready lane shows the short number');
      assert(await page.locator(`[data-order="${done.order_number}"]`).count() === 0, 'a completed order is on the board');
      assert(await page.locator('#ready .num.just-ready').count() === 0, 'an order ready for a minute is called out');
      const fontPx = await page.$eval('#preparing .num', (e) => parseFloat(getComputedStyle(e).fontSize));
      const headPx = await page.$eval('#ready h1', (e) => parseFloat(getComputedStyle(e).fontSize));
      assert(fontPx >= 100 && headPx >= 60, `numbers ${fontPx}px, headings ${headPx}px: too small to read across a room`);
      assert(/ready for pickup/i.test(await page.locator('#ready h1').textContent()), 'ready heading');
      assert(/preparing/i.test(await page.locator('#preparing h1').textContent()), 'preparing heading');

      // Becomes ready: moves lanes and is called out for a few seconds, then calms down.
      const t0 = Date.now();
      await publishOrder({ ...prep, status: 'ready', version: 2, status_changed_at: iso(Date.now()) });
      await page.locator(`#ready .num.just-ready[data-order="${prep.order_number}"]`).waitFor({ timeout: 3000 });
      assert((await lane('ready'))[0][0] === prep.order_number, 'the newest ready order is not first');
      await page.screenshot({ path: path.join(SHOTS, 'customer-board.png') });
      await page.locator(`#ready .num.just-ready`).waitFor({ state: 'detached', timeout: 15000 });
      const calledFor = Date.now() - t0;
      assert(calledFor >= 5000, `called out for only ${calledFor} ms`);
      log(`ready number called out for ~${calledFor} ms`);
      await page.locator(`#ready .num[data-order="${prep.order_number}"]`).waitFor({ timeout: 1000 });
      // Completed: gone.
      await publishOrder({ ...prep, status: 'completed', version: 3 });
      await page.locator(`[data-order="${prep.order_number}"]`).waitFor({ state: 'detached', timeout: 3000 });
      for (const o of [prep, waiting, ready, done]) await clearOrder(o.order_number);
    } finally {
      await page.close();
    }
  });

  await runner.test('customer board at 1280x800 with 40 orders: every number shown or counted', async () => {
    const page = await env.browser.newPage({ viewport: { width: 1280, height: 800 } });
    try {
      for (const o of forty) await publishOrder({ ...o, version: o.version + 10 });
      await page.goto(`http://127.0.0.1:${env.ports.http}/board`);
      await page.waitForSelector('body[data-synced="true"]', { timeout: 10000 });
      await waitFor('40 numbers known', async () => (await page.evaluate(() => window.customerBoard.orders.size)) === 40, 5000);
      await sleep(300);
      const m = await page.evaluate(() => {
        const vw = innerWidth;
        const vh = innerHeight;
        return {
          scroll: [document.scrollingElement.scrollWidth, document.scrollingElement.scrollHeight, vw, vh],
          lanes: ['preparing', 'ready'].map((id) => {
            const nums = [...document.querySelectorAll(`#${id} .num`)];
            const shown = nums.filter((e) => getComputedStyle(e).display !== 'none');
            const whole = shown.every((e) => { const r = e.getBoundingClientRect(); return r.right <= vw + 1 && r.bottom <= vh + 1; });
            const more = document.querySelector(`#${id} .more`);
            return { shown: shown.length, whole, more: more ? Number(more.dataset.count) : 0, moreWhole: !more || more.getBoundingClientRect().bottom <= vh };
          }),
        };
      });
      assert(m.scroll[0] <= m.scroll[2] && m.scroll[1] <= m.scroll[3], `board scrolls: ${m.scroll}`);
      await assertAccessible(page, 'customer board (40 orders)');
      const want = { preparing: forty.filter((o) => o.status !== 'ready').length, ready: forty.filter((o) => o.status === 'ready').length };
      for (const [i, id] of ['preparing', 'ready'].entries()) {
        const l = m.lanes[i];
        assert(l.whole && l.moreWhole, `${id}: a number or the marker is off screen`);
        assert(l.shown + l.more === want[id], `${id}: ${l.shown} shown + ${l.more} counted != ${want[id]}`);
        console.log(`customer board 1280x800 ${id}: ${l.shown} shown, ${l.more} counted`);
      }
    } finally {
      await page.close();
    }
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
