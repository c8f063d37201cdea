// Helpers shared by the browser tests: a tiny test runner, processes, ports, a private
// Mosquitto and headless Chromium.

import { chromium } from 'playwright-core';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const PREFIX = 'restaurant/main';

export const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

// ---- a tiny runner: steps run in order; once a step that later ones need has failed, those
// are skipped. The closing line is "N passed, N failed[, N skipped]".
export class Runner {
  constructor() {
    this.passed = 0;
    this.failed = 0;
    this.skipped = 0;
    this.broken = null;
  }

  async test(name, fn, { independent = false } = {}) {
    if (!independent && this.broken) {
      this.skip(name, `after failure of: ${this.broken}`);
      return;
    }
    const t0 = Date.now();
    try {
      await fn();
      this.passed += 1;
      console.log(`PASS ${name} (${Date.now() - t0} ms)`);
    } catch (e) {
      this.failed += 1;
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
      if (!independent && !this.broken) this.broken = name;
    }
  }

  skip(name, why) {
    this.skipped += 1;
    console.log(`SKIP ${name} (${why})`);
  }

  summary() {
    return `${this.passed} passed, ${this.failed} failed${this.skipped ? `, ${this.skipped} skipped` : ''}`;
  }

  get ok() {
    return this.failed === 0 && this.skipped === 0;
  }
}

// ---- ports and waiting ------------------------------------------------------------------------
export async function freePorts(n) {
  // Hold all listeners open at once so the ports are distinct, then release them.
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => resolve(s));
  })));
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

export function portOpen(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    const done = (ok) => { sock.destroy(); resolve(ok); };
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
    sock.setTimeout(1000, () => done(false));
  });
}

// Thrown inside a waitFor condition to stop waiting at once (a process died, say).
export class Fatal extends Error {}

export async function waitFor(what, fn, timeoutMs, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if (e instanceof Fatal) throw e;
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(intervalMs);
  }
}

export function tail(file, lines = 40) {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch (_) {
    return '(no log)';
  }
}

// ---- processes --------------------------------------------------------------------------------
// Starts a child process with its output in a log file; `exited` resolves with its exit status.
export function startProcess(name, cmd, args, opts, logFile) {
  const out = fs.openSync(logFile, 'a');
  const child = spawn(cmd, args, { ...opts, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.once('error', (e) => log(`${name}: ${e.message}`));
  child.label = name;
  return child;
}

export async function stopProcess(child, graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const r = await Promise.race([child.exited, sleep(graceMs).then(() => null)]);
  if (r === null) {
    log(`${child.label} ignored SIGTERM for ${graceMs} ms: SIGKILL`);
    child.kill('SIGKILL');
    await child.exited;
  }
}

// A private Mosquitto in DIR: plain MQTT on 127.0.0.1:mqttPort and WebSockets on wsPort (Mosquitto
// 2.0.11 binds a websockets listener on every interface whatever address is given). No
// persistence: a restart comes back with an empty retained store.
export async function startMosquitto(dir, mqttPort, wsPort) {
  const conf = path.join(dir, 'mosquitto.conf');
  fs.writeFileSync(conf, [
    '# Private broker for the browser tests (tests/browser)',
    'persistence false',
    'log_dest stdout',
    'allow_anonymous true',
    'max_queued_messages 10000',
    `listener ${mqttPort} 127.0.0.1`,
    `listener ${wsPort} 127.0.0.1`,
    'protocol websockets',
    '',
  ].join('\n'));
  const child = startProcess('mosquitto', 'mosquitto', ['-c', conf], {}, path.join(dir, 'mosquitto.log'));
  await waitFor('Mosquitto listeners', async () => {
    if (child.exitCode !== null) throw new Fatal(`mosquitto exited with ${child.exitCode}:\n${tail(path.join(dir, 'mosquitto.log'))}`);
    return (await portOpen(mqttPort)) && (await portOpen(wsPort));
  }, 10000);
  return child;
}

// The broker as shipped for a kitchen box (packaging/mosquitto/restaurant.conf + restaurant.acl,
// issue 11), on the test's ports, with its own password file: the bridge account writes, the
// display account reads, anonymous clients get nothing. Returns the child and the passwords.
export async function startSecureMosquitto(dir, mqttPort, wsPort, passwords) {
  const pw = passwords || {
    bridge: `bridge-${Math.random().toString(16).slice(2)}`,
    display: `display-${Math.random().toString(16).slice(2)}`,
  };
  const passwd = path.join(dir, 'restaurant.passwd');
  execFileSync('mosquitto_passwd', ['-b', '-c', passwd, 'restaurant-bridge', pw.bridge]);
  execFileSync('mosquitto_passwd', ['-b', passwd, 'restaurant-display', pw.display]);
  fs.chmodSync(passwd, 0o644);
  const shipped = fs.readFileSync(path.join(ROOT, 'packaging/mosquitto/restaurant.conf'), 'utf8');
  const lines = shipped.split('\n').map((l) => {
    const t = l.trim();
    if (t.startsWith('password_file ')) return `password_file ${passwd}`;
    if (t.startsWith('acl_file ')) return `acl_file ${path.join(ROOT, 'packaging/mosquitto/restaurant.acl')}`;
    if (t === 'listener 1883 127.0.0.1') return `listener ${mqttPort} 127.0.0.1`;
    if (t === 'listener 9001') return `listener ${wsPort} 127.0.0.1`;
    return l;
  });
  lines.push('persistence false', 'log_dest stdout', '');
  const conf = path.join(dir, 'mosquitto.conf');
  fs.writeFileSync(conf, lines.join('\n'));
  assert(lines.includes(`listener ${mqttPort} 127.0.0.1`) && lines.includes(`password_file ${passwd}`),
    'packaging/mosquitto/restaurant.conf no longer has the lines the test replaces');
  const child = startProcess('mosquitto', 'mosquitto', ['-c', conf], {}, path.join(dir, 'mosquitto.log'));
  await waitFor('Mosquitto listeners', async () => {
    if (child.exitCode !== null) throw new Fatal(`mosquitto exited with ${child.exitCode}:\n${tail(path.join(dir, 'mosquitto.log'))}`);
    return (await portOpen(mqttPort)) && (await portOpen(wsPort));
  }, 10000);
  child.passwords = pw;
  return child;
}

// ---- browser ----------------------------------------------------------------------------------
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// Runs in the page before its own scripts (page.addInitScript): records, by the page's clock
// (the same machine's clock as the test's), when each ticket first appeared and every status
// it was shown with.
export function pageRecorder() {
  window.__seen = {};
  window.__statuses = {};
  const note = (el) => {
    if (!(el instanceof Element)) return;
    for (const t of el.matches('article.ticket') ? [el] : el.querySelectorAll('article.ticket')) {
      const n = t.dataset.order;
      if (!(n in window.__seen)) window.__seen[n] = Date.now();
      const list = (window.__statuses[n] ||= []);
      if (list[list.length - 1] !== t.dataset.status) list.push(t.dataset.status);
    }
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === 'childList') r.addedNodes.forEach(note);
      else note(r.target);
    }
  }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'] });
}

// ---- a static server shaped like the tracking service's page routes ------------------------------
// /display, /display/<file>, /display/config.json (from `config()`), /board, /board/<file>; the
// committed web/ files, taken from where the tracking service embeds them (src/http/tracking.rs).
// `extra(url, res, req)` may answer other paths (return true when it did).
export const pageFile = (f) => path.join(ROOT, 'web', f === 'mqtt.min.js' ? 'dist' : 'src', f);
const PAGE_TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css' };

export function startPageServer(port, config, extra = () => false) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const p = url.pathname.replace(/\/+$/, '');
    if (p === '/display/config.json') {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify(config()));
      return;
    }
    if (extra(url, res, req)) return;
    const m = /^\/(display|board)(?:\/([a-z.]+))?$/.exec(p);
    const file = m && (m[2] || (m[1] === 'display' ? 'index.html' : 'board.html'));
    if (file && fs.existsSync(pageFile(file))) {
      res.writeHead(200, { 'content-type': PAGE_TYPES[path.extname(file)] || 'application/octet-stream' });
      res.end(fs.readFileSync(pageFile(file)));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

// ---- accessibility: axe-core's WCAG 2 A and AA rules (2.0 and 2.1) ----------------------------
// Injects the pinned axe-core (tests/browser/package.json) into the page and runs it on the whole
// document as it is now; returns the violations as short lines ("rule: target (summary)").
const AXE_SOURCE = path.join(ROOT, 'tests/browser/node_modules/axe-core/axe.min.js');
export async function axeViolations(page) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.addScriptTag({ path: AXE_SOURCE });
  const result = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
    resultTypes: ['violations'],
  }));
  return result.violations.flatMap((v) => v.nodes.map((n) => `${v.id}: ${n.target.join(' ')} (${(n.failureSummary || '').replace(/\s+/g, ' ').slice(0, 160)})`));
}

// Fails with every violation listed when the page breaks any WCAG 2 AA rule.
export async function assertAccessible(page, label) {
  const v = await axeViolations(page);
  assert(v.length === 0, `${label}: ${v.length} WCAG 2 AA violations (axe-core):\n  ${v.join('\n  ')}`);
  log(`${label}: axe-core WCAG 2 AA, no violations`);
}
