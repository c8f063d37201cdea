// Customer order board (GET /board): "Preparing" and "Ready for pickup", short order numbers,
// read-only. It reads the display bridge's retained MQTT order topics (docs/mqtt.md) like the
// kitchen page does, and never talks to the order service.
//
//   /board                      every order type
//   /board?types=takeout,delivery   only these (e.g. a takeout counter)
'use strict';
(() => {
  const PREPARING = new Set(['received', 'cooking']);
  const HIGHLIGHT_MS = 8000; // how long a newly ready number is called out
  const RESYNC_MS = 1200; // see display.js: retained messages confirm what is still open

  const params = new URLSearchParams(location.search);
  const types = new Set((params.get('types') || 'dine_in,takeout,delivery').split(',').map((s) => s.trim()));

  const state = {
    orders: new Map(), // order_number -> { status, version, created_at, ready_since }
    versions: new Map(),
    highlight: new Map(), // order_number -> local time until which it is called out
    sync: null,
    offsetMs: 0,
  };
  window.customerBoard = state;

  const $ = (sel) => document.querySelector(sel);
  const shortNumber = (num) => num.slice(num.lastIndexOf('_') + 1);
  const serverNow = () => Date.now() + state.offsetMs;

  function tile(cls, text, attrs) {
    const el = document.createElement('div');
    el.className = cls;
    el.textContent = text;
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    return el;
  }

  function handleOrder(num, payload, retained) {
    if (state.sync) state.sync.delete(num);
    if (payload.length === 0) {
      state.orders.delete(num);
      return;
    }
    let o;
    try {
      o = JSON.parse(new TextDecoder().decode(payload));
    } catch (_) {
      return;
    }
    if (!o || typeof o.status !== 'string') return;
    const version = Number(o.version);
    const shown = state.versions.get(num);
    if (Number.isFinite(version) && shown !== undefined && version <= shown) return; // stale or duplicate
    if (Number.isFinite(version)) state.versions.set(num, version);
    const prev = state.orders.get(num);
    if (!types.has(o.order_type) || !(PREPARING.has(o.status) || o.status === 'ready')) {
      state.orders.delete(num); // completed, cancelled or not this board's: gone
      state.highlight.delete(num);
      return;
    }
    const changed = Date.parse(o.status_changed_at);
    if (o.status === 'ready' && (!prev || prev.status !== 'ready')) {
      // Call it out when it just became ready: live, or a retained state only seconds old.
      const age = serverNow() - changed;
      if (!retained || (Number.isFinite(age) && age < HIGHLIGHT_MS)) {
        state.highlight.set(num, Date.now() + HIGHLIGHT_MS - (retained ? Math.max(0, age) : 0));
      }
    }
    state.orders.set(num, {
      status: o.status,
      created_at: Date.parse(o.created_at) || 0,
      ready_since: o.status === 'ready' ? (Number.isFinite(changed) ? changed : serverNow()) : 0,
    });
  }

  // Fills `box` with tiles in order; what does not fit is counted on a "+N" tile.
  function fill(box, nums, cls, emptyText) {
    box.replaceChildren();
    if (nums.length === 0) {
      box.append(tile('empty', emptyText));
      box.parentElement.dataset.hidden = '0';
      return;
    }
    const els = nums.map((n) => {
      const el = tile(cls, shortNumber(n), { 'data-order': n });
      if ((state.highlight.get(n) || 0) > Date.now()) el.classList.add('just-ready');
      box.append(el);
      return el;
    });
    // offsetTop/offsetHeight ignore the pulse animation's transform.
    const fits = (el) => el.offsetTop + el.offsetHeight <= box.clientHeight + 0.5
      && el.offsetLeft + el.offsetWidth <= box.clientWidth + 0.5;
    let k = els.findIndex((el) => !fits(el));
    if (k >= 0) {
      const more = tile('more', '');
      box.append(more);
      for (;;) {
        els.forEach((el, i) => { el.hidden = i >= k; });
        more.textContent = `+${nums.length - k} more`;
        more.dataset.count = String(nums.length - k);
        if (k === 0 || fits(more)) break;
        k -= 1;
      }
    }
    box.parentElement.dataset.hidden = String(k >= 0 ? nums.length - k : 0);
  }

  function render() {
    const list = [...state.orders.entries()];
    const preparing = list.filter(([, o]) => o.status !== 'ready')
      .sort(([a, x], [b, y]) => x.created_at - y.created_at || (a < b ? -1 : 1))
      .map(([n]) => n);
    // Newest ready first: the number a customer is waiting for is at the top.
    const ready = list.filter(([, o]) => o.status === 'ready')
      .sort(([a, x], [b, y]) => y.ready_since - x.ready_since || (a < b ? -1 : 1))
      .map(([n]) => n);
    fill($('#preparing .nums'), preparing, 'num', '');
    fill($('#ready .nums'), ready, 'num', '');
  }

  let queued = false;
  function scheduleRender() {
    if (queued) return;
    queued = true;
    setTimeout(() => { queued = false; render(); }, 0);
  }

  function expireHighlights() {
    let expired = false;
    for (const [n, until] of state.highlight) {
      if (until <= Date.now()) {
        state.highlight.delete(n);
        expired = true;
      }
    }
    if (expired) scheduleRender();
  }

  async function loadConfig() {
    for (let delay = 1000; ; delay = Math.min(delay * 2, 15000)) {
      try {
        const t0 = Date.now();
        // A screen paired once at /display (same origin) has a kitchen token: with it,
        // config.json also gives the MQTT read account a secured broker asks for.
        let token = null;
        try { token = localStorage.getItem('kds-token'); } catch (_) { /* storage blocked */ }
        const headers = token ? { Authorization: `Bearer ${token}` } : {};
        const r = await fetch('/display/config.json', { cache: 'no-store', headers });
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        const cfg = await r.json();
        const server = Date.parse(cfg.server_time);
        if (Number.isFinite(server)) state.offsetMs = server - (t0 + Date.now()) / 2;
        return cfg;
      } catch (_) {
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  async function start() {
    const cfg = await loadConfig();
    const prefix = `${cfg.topic_prefix || 'restaurant'}/${cfg.site || 'main'}`;
    // Over HTTPS: the page's own origin, passed on to Mosquitto (as the kitchen display does).
    const url = cfg.mqtt_ws_url || (location.protocol === 'https:'
      ? `wss://${location.host}/mqtt`
      : `ws://${location.hostname}:${cfg.mqtt_ws_port || 9001}`);
    const creds = cfg.mqtt_username ? { username: cfg.mqtt_username, password: cfg.mqtt_password || '' } : {};
    const client = mqtt.connect(url, {
      ...creds,
      clientId: `board-${Math.random().toString(16).slice(2, 10)}`,
      clean: true,
      keepalive: 10,
      reconnectPeriod: 1000,
      connectTimeout: 5000,
      resubscribe: false,
    });
    client.on('connect', () => {
      document.body.dataset.conn = 'connected';
      $('#conn-banner').hidden = true;
      client.subscribe([`${prefix}/orders/+`], { qos: 1 }, (err) => {
        if (err) return;
        // Orders shown before a reconnect and not retained any more were cleared meanwhile.
        const sync = new Set(state.orders.keys());
        state.sync = sync;
        setTimeout(() => {
          if (state.sync !== sync) return;
          for (const n of sync) state.orders.delete(n);
          state.sync = null;
          document.body.dataset.synced = 'true';
          scheduleRender();
        }, RESYNC_MS);
      });
    });
    client.on('message', (topic, payload, packet) => {
      if (!topic.startsWith(`${prefix}/orders/`)) return;
      handleOrder(topic.slice(prefix.length + 8), payload, !!packet.retain);
      scheduleRender();
    });
    client.on('close', () => {
      document.body.dataset.conn = 'lost';
      $('#conn-banner').hidden = false;
      state.sync = null;
    });
    setInterval(expireHighlights, 500);
    window.addEventListener('resize', scheduleRender);
    render();
  }

  start();
})();
