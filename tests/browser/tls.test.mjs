// Browser test of the screens over HTTPS (issue 27, docs/security.md).
//
// The whole system (system.mjs) with `[tls] mode = "self-signed"`: the box makes its own CA at
// start. The test trusts that CA the way a kitchen's IT person would on a Linux screen: an NSS
// database (certutil, package libnss3-tools) in the browser's $HOME/.pki/nssdb, after comparing
// the CA's fingerprint with `restaurant-system tls show`. Then, in Debian's Chromium, with no
// certificate flag and no warning clicked through:
//   - the kitchen display loads from https://localhost:PORT/display, pairs with a kitchen token
//     (the pairing form shows the CA's fingerprint) and reaches the broker over wss:// on its own
//     origin (/mqtt, passed on to Mosquitto);
//   - a posted order appears on it, becomes ready, and a bump (a call to the order service over
//     HTTPS) completes it;
//   - the customer board loads over HTTPS and shows the order.
// A page over HTTPS may not load anything over plain ws:// or http://, so a ticket on the screen
// proves the whole path was TLS.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Runner, assert, log, waitFor } from './lib.mjs';
import { env, postOrder, setUp, token, runSuite } from './system.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const runner = new Runner();

async function main() {
  let page;
  let board;
  let ctx;
  const pageErrors = [];
  const insecure = [];
  let num;

  await runner.test('system starts with [tls] mode = "self-signed"', () => setUp({
    extraEnv: (ports) => ({
      RESTAURANT_TLS__MODE: 'self-signed',
      // Relative to the process's working directory: the test's temp dir.
      RESTAURANT_TLS__DIR: 'tls',
      // The page's own default over HTTPS: wss:// on its own origin (/mqtt), passed on to
      // Mosquitto's WebSocket port.
      RESTAURANT_DISPLAY__MQTT_WS_URL: '',
      RESTAURANT_DISPLAY__MQTT_WS_PORT: String(ports.ws),
      // A box's order service is on 3000 of the page's host; here on a free port.
      RESTAURANT_DISPLAY__ORDER_SERVICE_URL: `https://localhost:${ports.order}`,
    }),
  }));

  await runner.test('the box\'s CA is trusted in an NSS database after checking its fingerprint', async () => {
    const ca = path.join(env.tmp, 'tls', 'ca.crt');
    assert(fs.existsSync(ca), `no CA at ${ca}`);
    const shown = execFileSync(env.bin, ['tls', 'show'], { cwd: env.tmp, env: env.rsEnv }).toString();
    const fp = execFileSync('openssl', ['x509', '-in', ca, '-noout', '-fingerprint', '-sha256'])
      .toString().trim().split('=')[1];
    assert(shown.includes(fp), `tls show does not print the CA's fingerprint ${fp}:\n${shown}`);
    env.caFingerprint = fp;
    env.home = path.join(env.tmp, 'home');
    const db = path.join(env.home, '.pki', 'nssdb');
    fs.mkdirSync(db, { recursive: true });
    execFileSync('certutil', ['-d', `sql:${db}`, '-N', '--empty-password']);
    execFileSync('certutil', ['-d', `sql:${db}`, '-A', '-t', 'C,,', '-n', 'restaurant-box', '-i', ca]);
    const list = execFileSync('certutil', ['-d', `sql:${db}`, '-L']).toString();
    assert(/restaurant-box\s+C,,/.test(list), `the CA is not in the NSS database:\n${list}`);
  });

  await runner.test('the kitchen display loads over HTTPS, pairs (fingerprint shown) and syncs over wss', async () => {
    env.browser = await chromium.launch({
      executablePath: CHROMIUM,
      env: { ...process.env, HOME: env.home },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    ctx = await env.browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await ctx.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('request', (r) => {
      if (/^(http|ws):/.test(r.url())) insecure.push(r.url());
    });
    page.on('console', (m) => {
      if (m.type() === 'error') log(`page error: ${m.text()}`);
    });
    const url = `https://localhost:${env.ports.tracking}/display`;
    const resp = await page.goto(url);
    assert(resp && resp.ok(), `GET ${url} answered ${resp && resp.status()}`);
    await page.waitForSelector('#pair:not([hidden])', { timeout: 10000 });
    const shown = await page.locator('#pair-ca').textContent();
    assert(shown.includes(env.caFingerprint), `the pairing form shows "${shown}", not the CA's fingerprint`);
    env.kdsToken = token('create', 'kds-tls', '--role', 'kitchen');
    await page.fill('#pair-token', env.kdsToken);
    await page.click('#pair-submit');
    await page.waitForSelector('body[data-pairing="paired"]', { timeout: 10000 });
    await page.waitForSelector('#conn-banner', { state: 'hidden', timeout: 15000 });
    await page.waitForSelector('#board[data-synced="true"]', { timeout: 15000 });
  });

  await runner.test('a posted order shows over wss, becomes ready, and a bump over HTTPS completes it', async () => {
    num = await postOrder({
      customer_name: 'Jane Smith', order_type: 'takeout',
      items: [{ name: 'Burger', quantity: 1, price: 12.5 }],
    });
    const sel = `article.ticket[data-order="${num}"]`;
    await page.waitForSelector(sel, { timeout: 10000 });
    board = await ctx.newPage();
    board.on('pageerror', (e) => pageErrors.push(`board: ${e.message}`));
    board.on('request', (r) => {
      if (/^(http|ws):/.test(r.url())) insecure.push(r.url());
    });
    const r = await board.goto(`https://localhost:${env.ports.tracking}/board`);
    assert(r && r.ok(), `GET /board over HTTPS answered ${r && r.status()}`);
    await board.waitForSelector('body[data-synced="true"]', { timeout: 15000 });
    await page.waitForSelector(`${sel}[data-status="ready"]`, { timeout: 20000 });
    await board.locator(`#ready [data-order="${num}"]`).waitFor({ timeout: 5000 });
    await page.click(`${sel} button.bump`);
    await page.waitForSelector(sel, { state: 'detached', timeout: 5000 });
    await waitFor('the order completed', async () => {
      const s = await fetch(`http://127.0.0.1:${env.ports.tracking}/orders/${num}/status`);
      return s.ok && /"completed"/.test(await s.text());
    }, 5000);
  });

  if (page) {
    await runner.test('nothing was loaded over plain http:// or ws://, and no page error', async () => {
      assert(insecure.length === 0, `insecure requests: ${insecure.join(', ')}`);
      assert(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
    }, { independent: true });
  } else {
    runner.skip('nothing was loaded over plain http:// or ws://', 'the page never loaded');
  }
}

await runSuite(runner, main);
