// Browser test of a kitchen with stations (issue 24) on the whole running system: three station
// screens (grill, fry, bar), the expo screen and the customer board open at once in Chromium,
// against restaurant-system --mode=all with [stations] configured (system.mjs starts it on a
// private Mosquitto with the shipped ACL and a fresh RabbitMQ vhost).
//
// Checks:
//   - one order routed to all three stations shows on each station screen with only that
//     station's item, and on expo with three parts waiting;
//   - it becomes ready, and reaches the customer board's "Ready", only after the last station
//     bumps (the grill taps its item, fry bumps its part, the bar bumps last);
//   - a station screen reloaded in the middle shows the same tickets;
//   - GET /orders/{n} and its history show each part's station, state and who bumped it;
//   - expo's Rush moves an order to the front of a station screen within a second;
//   - 40 open orders: a station screen and expo at 1920x1080 saved as
//     target/system-station-grill-1920x1080.png and target/system-expo-1920x1080.png (with
//     DOCS_SHOTS=1 also docs/kds-station.png, the README's picture of a station screen);
//   - axe-core WCAG 2 AA on every screen (station, expo, customer board).
//
// Run through tests/browser/run.sh (installs Chromium and the npm packages); RS_BIN, CHROMIUM,
// KEEP_TMP as for display.test.mjs.

import fs from 'node:fs';
import path from 'node:path';
import {
  ROOT, Runner, assert, assertAccessible, launchBrowser, log, sleep, waitFor,
} from './lib.mjs';
import { env, postOrder, setUp, token, runSuite } from './system.mjs';

const runner = new Runner();
const SHOTS = path.join(ROOT, 'target');
const STATIONS = ['grill', 'fry', 'bar'];

// confirm = false: the last station's bump makes the order ready at once.
const CONFIG = `
[stations]
default = "grill"
undo_seconds = 5

[[stations.station]]
name = "grill"
yellow_after_seconds = 420
red_after_seconds = 600

[[stations.station]]
name = "fry"

[[stations.station]]
name = "bar"

[[stations.rule]]
category = "burgers"
stations = ["grill"]

[[stations.rule]]
category = "sides"
stations = ["fry"]

[[stations.rule]]
category = "drinks"
stations = ["bar"]

[expo]
confirm = false
`;

const api = (port, p) => `http://127.0.0.1:${port}${p}`;
async function getJson(p) {
  const r = await fetch(api(env.ports.tracking, p));
  const text = await r.text();
  assert(r.ok, `GET ${p} answered ${r.status}: ${text}`);
  return JSON.parse(text);
}

const ticket = (page, num) => page.locator(`article.ticket[data-order="${num}"]`);
const shownOrders = (page) => page.$$eval('article.ticket', (els) => els.filter((e) => getComputedStyle(e).display !== 'none').map((e) => e.dataset.order));

function burgerOrder(i, extra = {}) {
  return {
    customer_name: ['Ana Lopez', 'Wei Chen', 'Priya Patel', 'John Doe'][i % 4],
    order_type: ['takeout', 'dine_in', 'delivery'][i % 3],
    ...(i % 3 === 1 ? { table_number: 3 + (i % 20) } : {}),
    ...(i % 3 === 2 ? { delivery_address: `${10 + i} Harbour Road` } : {}),
    items: [
      { name: i % 2 ? 'Bacon Burger' : 'Cheeseburger', quantity: 1 + (i % 2), price: 11.5, category: 'burgers', ...(i % 5 === 0 ? { allergens: ['gluten', 'milk'] } : {}) },
      ...(i % 3 !== 2 ? [{ name: 'Fries', quantity: 1, price: 3.5, category: 'sides' }] : []),
      ...(i % 4 !== 3 ? [{ name: i % 2 ? 'Cola' : 'Milkshake', quantity: 1, price: 3, category: 'drinks' }] : []),
    ],
    ...extra,
  };
}

async function main() {
  const screens = {};
  let ctx = null;

  await runner.test('system with stations starts (mosquitto, vhost, restaurant-system --mode=all)', () => setUp({ config: CONFIG }));

  await runner.test('three station screens, expo and the customer board open (paired)', async () => {
    env.browser = await launchBrowser();
    const tok = token('create', 'kds-stations', '--role', 'kitchen');
    ctx = await env.browser.newContext({ viewport: { width: 1280, height: 800 } });
    // Paired once for the whole browser, as a kitchen would pair each screen.
    await ctx.addInitScript((t) => localStorage.setItem('kds-token', t), tok);
    const open = async (name, p) => {
      const page = await ctx.newPage();
      page.errors = [];
      page.on('pageerror', (e) => page.errors.push(e.message));
      const r = await page.goto(api(env.ports.tracking, p));
      assert(r && r.ok(), `GET ${p} answered ${r && r.status()}`);
      screens[name] = page;
    };
    for (const st of STATIONS) await open(st, `/display?station=${st}`);
    await open('expo', '/display?view=expo');
    await open('board', '/board');
    for (const name of [...STATIONS, 'expo']) await screens[name].waitForSelector('#board[data-synced="true"]', { timeout: 15000 });
    await screens.board.waitForSelector('body[data-synced="true"]', { timeout: 15000 });
    assert(await screens.grill.locator('#views a.nav-station').count() === 3, 'the menu does not list the three stations');
  });

  let num = null;
  await runner.test('one order routed to grill, fry and bar: each screen shows its own item, expo all three', async () => {
    num = await postOrder({
      customer_name: 'Sam Lee', order_type: 'takeout',
      items: [
        { name: 'Bacon Burger', quantity: 2, price: 11.5, category: 'burgers', allergens: ['gluten'] },
        { name: 'Fries', quantity: 1, price: 3.5, category: 'sides' },
        { name: 'Cola', quantity: 1, price: 3, category: 'drinks' },
      ],
    });
    const t0 = Date.now();
    for (const st of STATIONS) await ticket(screens[st], num).waitFor({ timeout: 3000 });
    log(`the order reached all three station screens in ${Date.now() - t0} ms`);
    const want = { grill: 'Bacon Burger', fry: 'Fries', bar: 'Cola' };
    for (const st of STATIONS) {
      const text = await ticket(screens[st], num).innerText();
      for (const [other, item] of Object.entries(want)) {
        assert(text.includes(item) === (other === st), `${st} ticket: ${text}`);
      }
      assert(/also at:/.test(text), `${st} ticket does not name the other stations: ${text}`);
    }
    await ticket(screens.expo, num).waitFor({ timeout: 3000 });
    const chips = await ticket(screens.expo, num).locator('.chip').evaluateAll((els) => els.map((e) => `${e.dataset.station}:${e.dataset.state}`));
    assert(JSON.stringify(chips) === JSON.stringify(['grill:waiting', 'fry:waiting', 'bar:waiting']), `expo chips: ${chips}`);
    await screens.board.locator(`#preparing [data-order="${num}"]`).waitFor({ timeout: 3000 });
  });

  await runner.test('grill taps its item, fry bumps: still not ready; the bar reloaded shows the same', async () => {
    await ticket(screens.grill, num).locator('button.part-tap').first().click();
    await ticket(screens.grill, num).waitFor({ state: 'detached', timeout: 3000 });
    await screens.grill.locator(`button.undo[data-order="${num}"]`).waitFor({ timeout: 2000 });
    await ticket(screens.fry, num).locator('button.bump').click();
    await ticket(screens.fry, num).waitFor({ state: 'detached', timeout: 3000 });
    await waitFor('expo shows grill and fry done', async () => {
      const chips = await ticket(screens.expo, num).locator('.chip').evaluateAll((els) => els.map((e) => e.dataset.state));
      return JSON.stringify(chips) === JSON.stringify(['done', 'done', 'waiting']);
    }, 3000);
    const o = await getJson(`/orders/${num}`);
    assert(o.status === 'cooking', `after two of three stations the order is ${o.status}`);
    assert(await screens.board.locator(`#ready [data-order="${num}"]`).count() === 0, 'the board shows it ready');
    // The bar's screen reloaded mid-service: the same tickets at once (its retained topic).
    const before = await shownOrders(screens.bar);
    await screens.bar.reload();
    await ticket(screens.bar, num).waitFor({ timeout: 3000 });
    await screens.bar.waitForSelector('#board[data-synced="true"]', { timeout: 10000 });
    assert(JSON.stringify(await shownOrders(screens.bar)) === JSON.stringify(before), `bar after reload: ${await shownOrders(screens.bar)}, before ${before}`);
    assert(/also at:\s*grill ✓, fry ✓/.test(await ticket(screens.bar, num).innerText()), 'the bar ticket does not show grill and fry done');
  });

  await runner.test('the last station bumps: ready at once, on expo and the customer board', async () => {
    const t0 = Date.now();
    await ticket(screens.bar, num).locator('button.bump').click();
    await screens.board.locator(`#ready [data-order="${num}"]`).waitFor({ timeout: 3000 });
    log(`ready on the customer board ${Date.now() - t0} ms after the bar's bump`);
    await waitFor('expo shows it ready', async () => (await ticket(screens.expo, num).getAttribute('data-status')) === 'ready', 3000);
    const o = await getJson(`/orders/${num}`);
    assert(o.status === 'ready', `status ${o.status}`);
    const parts = o.items.flatMap((it) => it.stations.map((p) => `${p.station}:${p.state}:${p.bumped_by ? 'by' : 'nobody'}`));
    assert(JSON.stringify(parts) === JSON.stringify(['grill:done:by', 'fry:done:by', 'bar:done:by']), `parts: ${parts}`);
    for (const page of [...STATIONS, 'expo'].map((n) => screens[n])) assert(page.errors.length === 0, `page errors: ${page.errors}`);
  });

  await runner.test('the order\'s history names each station\'s bump', async () => {
    const h = await getJson(`/orders/${num}/history`);
    const entries = Array.isArray(h) ? h : h.history || h.entries || [];
    const stationEntries = entries.filter((e) => e.station);
    assert(JSON.stringify(stationEntries.map((e) => `${e.station}:${e.item_state}`)) === JSON.stringify(['grill:done', 'fry:done', 'bar:done']), `history: ${JSON.stringify(entries)}`);
  }, { independent: true });

  await runner.test('expo marks an order rush: it leads the grill screen within a second', async () => {
    const first = await postOrder(burgerOrder(1));
    const second = await postOrder(burgerOrder(2));
    await ticket(screens.grill, second).waitFor({ timeout: 3000 });
    await waitFor('oldest first', async () => JSON.stringify((await shownOrders(screens.grill)).slice(0, 2)) === JSON.stringify([first, second]), 3000);
    await ticket(screens.expo, second).locator('button.rush-toggle').click();
    const t0 = Date.now();
    await waitFor('the rushed order first', async () => (await shownOrders(screens.grill))[0] === second, 1000, 20);
    log(`rush reached the front of the grill screen ${Date.now() - t0} ms after the click`);
    const o = await getJson(`/orders/${second}`);
    assert(o.rush === true, 'GET /orders does not say rush');
  });

  await runner.test('40 open orders at 1920x1080: station and expo screenshots; WCAG 2 AA on every screen', async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    for (let i = 0; i < 38; i++) await postOrder(burgerOrder(i + 3));
    const big = await env.browser.newContext({ viewport: { width: 1920, height: 1080 } });
    try {
      await big.addInitScript((t) => localStorage.setItem('kds-token', t), token('create', 'kds-big', '--role', 'kitchen'));
      for (const [name, p, file] of [['grill', '/display?station=grill', 'system-station-grill-1920x1080.png'], ['expo', '/display?view=expo', 'system-expo-1920x1080.png']]) {
        const page = await big.newPage();
        await page.goto(api(env.ports.tracking, p));
        await page.waitForSelector('#board[data-synced="true"]', { timeout: 15000 });
        await waitFor(`${name}: open orders`, async () => (await page.evaluate(() => window.kitchenDisplay.orders.size)) >= 39, 15000);
        await sleep(500);
        const m = await page.evaluate(() => ({
          scroll: [document.scrollingElement.scrollWidth, document.scrollingElement.scrollHeight, innerWidth, innerHeight],
          shown: [...document.querySelectorAll('article.ticket')].filter((e) => getComputedStyle(e).display !== 'none').length,
          more: Number(document.querySelector('.more:not([hidden])')?.dataset.count || 0),
          open: document.querySelector('.column .count').textContent,
        }));
        assert(m.scroll[0] <= m.scroll[2] && m.scroll[1] <= m.scroll[3], `${name} scrolls: ${m.scroll}`);
        assert(m.shown + m.more === Number(m.open), `${name}: ${m.shown} shown + ${m.more} on "+N more" != ${m.open} open`);
        console.log(`${name} 1920x1080 (whole system): ${m.shown} shown, ${m.more} announced, ${m.open} open`);
        await page.screenshot({ path: path.join(SHOTS, file) });
        if (process.env.DOCS_SHOTS === '1' && name === 'grill') await page.screenshot({ path: path.join(ROOT, 'docs/kds-station.png') });
        await assertAccessible(page, `${name} screen (whole system, ${m.open} open)`);
        await page.close();
      }
    } finally {
      await big.close();
    }
    for (const st of STATIONS) await assertAccessible(screens[st], `${st} screen (1280x800)`);
    await assertAccessible(screens.expo, 'expo screen (1280x800)');
    await assertAccessible(screens.board, 'customer board (stations)');
  });
}

await runSuite(runner, main);
