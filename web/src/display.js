// Kitchen display: subscribes to the display-bridge's MQTT topics (see docs/mqtt.md)
// and draws the board. Plain browser JavaScript; the only dependency is mqtt.js,
// loaded before this file as the global `mqtt`.
'use strict';
(() => {
  const TYPES = [
    { id: 'dine_in', label: 'Dine-in' },
    { id: 'takeout', label: 'Takeout' },
    { id: 'delivery', label: 'Delivery' },
  ];
  const TYPE_LABEL = Object.fromEntries(TYPES.map((t) => [t.id, t.label]));
  const OPEN = new Set(['received', 'cooking', 'ready']);
  const STATUS_LABEL = { received: 'New', cooking: 'Cooking', ready: 'Ready', completed: 'Completed', cancelled: 'Cancelled' };
  const RECALL_MAX = 10;
  // After a (re)subscribe the broker sends every retained message at once; a ticket that
  // none of them confirmed within this window is no longer on the broker's board.
  const RESYNC_MS = 1200;
  // A ticket that arrives live counts as new (sound, highlight) only if created this recently:
  // a bridge republishing its snapshot after a broker restart must not make every ticket beep.
  const NEW_TICKET_MS = 120000;
  // Also how soon a display whose token was revoked notices it while idle.
  const CONFIG_REFRESH_MS = 60 * 1000;
  const TOKEN_KEY = 'kds-token';
  // The header's rolling ticket time: tickets received in the last hour, refreshed this often.
  const SPEED_WINDOW_MS = 3600 * 1000;
  const SPEED_REFRESH_MS = 30 * 1000;
  const MORE_LIST_MAX = 12; // order numbers named on a "+N more" marker

  const params = new URLSearchParams(location.search);
  // Three kinds of screen (docs/mqtt.md, docs/stations.md):
  //   /display, /display?type=dine_in   whole orders, one column per order type (or one type);
  //   /display?station=grill            a station: only its items of each open order, tap to bump;
  //   /display?view=expo                the expeditor: every open order, each item's state at
  //                                     each station, confirm (send) and rush.
  // A "station" is where an item is made (grill, bar), never an order type.
  const stationName = params.get('station');
  const mode = stationName ? 'station' : params.get('view') === 'expo' ? 'expo' : 'types';
  const orderType = mode === 'types' && TYPE_LABEL[params.get('type')] ? params.get('type') : null;
  const UNDO_FALLBACK_S = 10;

  const state = {
    cfg: null,
    prefix: '',
    offsetMs: 0, // server clock minus this device's clock
    orders: new Map(), // order_number -> latest accepted payload (any status)
    versions: new Map(), // order_number -> version of that payload (kept after clearing)
    recall: [], // completed orders seen in this session, newest first
    workers: new Map(), // worker_name -> payload
    bridge: null, // 'online' | 'offline' | null (unknown)
    box: null, // the box whose Mosquitto the screen is on (several boxes: after a failover, another)
    connected: false,
    everConnected: false,
    sync: null, // { orders: Set, workers: Set } awaiting confirmation after a subscribe
    synced: false,
    known: new Set(), // order numbers this screen has shown or announced (one beep per order)
    fresh: new Map(), // order_number -> local time until which the ticket is highlighted
    pending: new Set(), // order numbers with a bump or recall in flight
    // From GET /stations: { stations: [{name, yellow_after_seconds, red_after_seconds}],
    // undo_seconds, expo: {confirm} }; null until loaded (or on a server without it).
    stations: null,
    undo: [], // station screen: { id, num, station, indexes, names, until } bumps that can be taken back
    seq: 0,
    beeps: 0,
  };
  window.kitchenDisplay = state; // for debugging from the console

  const $ = (id) => document.getElementById(id);
  const board = $('board');
  const elements = new Map(); // order_number -> { el, key }

  // ---- time ---------------------------------------------------------------------------
  const serverNow = () => Date.now() + state.offsetMs;

  function fmtElapsed(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, '0');
    return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
  }

  function fmtClock(ms) {
    const d = new Date(ms);
    return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  }

  // ---- small DOM helper (textContent only: payload text never becomes markup) ----------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c) el.append(c);
    return el;
  }

  function toast(message, kind) {
    const t = h('div', { class: `toast ${kind || ''}`, text: message });
    $('toasts').append(t);
    setTimeout(() => t.remove(), 6000);
  }

  // ---- sound --------------------------------------------------------------------------
  // Browsers start audio only after a user gesture; until then beep() stays silent and
  // never throws. Any click on the page (a bump, say) unlocks it.
  let soundWanted = true;
  try { soundWanted = localStorage.getItem('kds-sound') !== 'off'; } catch (_) { /* storage blocked */ }
  let audioCtx = null;

  function audioContext() {
    if (!audioCtx) {
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) return null;
      audioCtx = new AC();
      audioCtx.onstatechange = renderSoundButton;
    }
    return audioCtx;
  }

  function unlockAudio() {
    if (!soundWanted) return;
    try {
      const ctx = audioContext();
      if (ctx && ctx.state !== 'running') ctx.resume().then(renderSoundButton, () => {});
    } catch (_) { /* no audio on this device */ }
  }

  function beep() {
    state.beeps += 1;
    document.body.dataset.beeps = String(state.beeps);
    if (!soundWanted) return;
    try {
      const ctx = audioContext();
      if (!ctx || ctx.state !== 'running') return;
      const t0 = ctx.currentTime;
      [[880, 0], [1320, 0.16]].forEach(([freq, at]) => {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        osc.type = 'sine';
        osc.frequency.value = freq;
        gain.gain.setValueAtTime(0.0001, t0 + at);
        gain.gain.exponentialRampToValueAtTime(0.4, t0 + at + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, t0 + at + 0.15);
        osc.connect(gain).connect(ctx.destination);
        osc.start(t0 + at);
        osc.stop(t0 + at + 0.16);
      });
    } catch (_) { /* audio blocked or unavailable: the ticket still shows */ }
  }

  function renderSoundButton() {
    const b = $('sound');
    const running = audioCtx && audioCtx.state === 'running';
    b.textContent = !soundWanted ? 'Sound off' : running ? 'Sound on' : 'Tap for sound';
    b.classList.toggle('pill-ok', soundWanted && !!running);
    b.classList.toggle('pill-bad', !soundWanted);
  }

  $('sound').addEventListener('click', () => {
    const running = audioCtx && audioCtx.state === 'running';
    if (soundWanted && running) {
      soundWanted = false;
    } else {
      soundWanted = true;
      unlockAudio();
      setTimeout(beep, 100);
    }
    try { localStorage.setItem('kds-sound', soundWanted ? 'on' : 'off'); } catch (_) { /* ignore */ }
    renderSoundButton();
  });
  document.addEventListener('pointerdown', unlockAudio, { capture: true });

  // ---- state changes ------------------------------------------------------------------
  // An item's parts (docs/stations.md): one per station it goes to, each with its state.
  const parts = (it) => (Array.isArray(it && it.stations) ? it.stations.filter((p) => p && typeof p.station === 'string') : []);
  const partAt = (it, st) => parts(it).find((p) => p.station === st) || null;
  const itemsOf = (o) => (Array.isArray(o.items) ? o.items : []);
  // This station's items of an order, with their index in the order (the routes name it).
  const stationItems = (o) => itemsOf(o).map((it, index) => ({ it, index, part: partAt(it, stationName) })).filter((x) => x.part);
  const openAtStation = (o) => (o.status === 'received' || o.status === 'cooking') && stationItems(o).some((x) => x.part.state !== 'done');

  function visible(o) {
    if (mode === 'station') return openAtStation(o);
    if (mode === 'expo') return true;
    return !orderType || o.order_type === orderType;
  }

  function isNewTicket(o) {
    const created = Date.parse(o.created_at);
    return o.status === 'received' && Number.isFinite(created) && serverNow() - created < NEW_TICKET_MS;
  }

  function announce(o) {
    if (state.known.has(o.order_number) || !visible(o)) return;
    state.known.add(o.order_number);
    state.fresh.set(o.order_number, Date.now() + 4000);
    beep();
  }

  function addRecall(o) {
    removeRecall(o.order_number);
    state.recall.push(o);
    const at = (x) => Date.parse(x.status_changed_at) || 0;
    state.recall.sort((a, b) => at(b) - at(a));
    state.recall.length = Math.min(state.recall.length, RECALL_MAX);
  }

  function removeRecall(num) {
    state.recall = state.recall.filter((x) => x.order_number !== num);
  }

  function handleOrder(num, payload, retained) {
    if (state.sync) state.sync.orders.delete(num);
    if (payload.length === 0) {
      // Cleared by the bridge: the order is gone from the board. Its version is kept so
      // that a late duplicate of an old payload cannot bring it back.
      state.orders.delete(num);
      return;
    }
    let o;
    try {
      o = JSON.parse(new TextDecoder().decode(payload));
    } catch (e) {
      console.warn('ignoring malformed payload on orders/%s: %s', num, e);
      return;
    }
    if (!o || typeof o !== 'object' || typeof o.status !== 'string') return;
    o.order_number = num;
    const shown = state.versions.get(num);
    const version = Number(o.version);
    if (Number.isFinite(version) && shown !== undefined && version <= shown) return; // stale or duplicate
    if (Number.isFinite(version)) state.versions.set(num, version);

    const prev = state.orders.get(num);
    o._seq = ++state.seq;
    state.orders.set(num, o);
    if (o.status === 'completed') addRecall(o);
    else removeRecall(num);
    // A ticket just became ready: the ticket time moved; refresh it soon (once per burst).
    if (!retained && o.status === 'ready' && prev && prev.status !== 'ready') refreshSpeedSoon();
    if (OPEN.has(o.status)) {
      if (!retained && (!prev || !OPEN.has(prev.status)) && isNewTicket(o)) announce(o);
      state.known.add(num);
    } else {
      state.pending.delete(num);
    }
  }

  function handleEvent(payload) {
    let ev;
    try {
      ev = JSON.parse(new TextDecoder().decode(payload));
    } catch (_) {
      return;
    }
    if (!ev || typeof ev.order_number !== 'string') return;
    if (ev.kind === 'order_created') {
      announce({ order_number: ev.order_number, order_type: ev.order_type });
    } else if (ev.new_status === 'completed' && !state.orders.has(ev.order_number)) {
      // A completion of an order we never saw in full: still offer it for recall.
      addRecall({
        order_number: ev.order_number,
        order_type: ev.order_type,
        status: 'completed',
        status_changed_at: ev.timestamp,
        items: [],
      });
    }
  }

  function handleWorker(name, payload) {
    if (state.sync) state.sync.workers.delete(name);
    if (payload.length === 0) {
      state.workers.delete(name);
      return;
    }
    try {
      const w = JSON.parse(new TextDecoder().decode(payload));
      if (w && typeof w === 'object') state.workers.set(name, w);
    } catch (_) { /* ignore malformed */ }
  }

  function onMessage(topic, payload, packet) {
    if (!topic.startsWith(state.prefix + '/')) return;
    const rest = topic.slice(state.prefix.length + 1);
    const stationTopic = `stations/${stationName}/orders/`;
    if (mode !== 'station' && rest.startsWith('orders/')) handleOrder(rest.slice(7), payload, !!packet.retain);
    else if (mode === 'station' && rest.startsWith(stationTopic)) handleOrder(rest.slice(stationTopic.length), payload, !!packet.retain);
    else if (rest === 'events') handleEvent(payload);
    else if (rest.startsWith('workers/')) handleWorker(rest.slice(8), payload);
    else if (rest === 'bridge/status') {
      const s = new TextDecoder().decode(payload).trim();
      state.bridge = s || null;
      if (s === 'online' && state.sync && state.sync.waitingForBridge) {
        // The bridge (re)connected and is republishing its snapshot: sweep after that.
        state.sync.waitingForBridge = false;
        setTimeout(() => finishSync(state.sync), RESYNC_MS);
      }
    }
    scheduleRender();
  }

  // Called when the subscriptions are granted. Everything shown before is marked
  // unconfirmed; the retained messages that follow confirm or replace it; whatever is
  // still unconfirmed after RESYNC_MS is no longer on the broker and leaves the board.
  // One exception: with no retained bridge status "online", the broker may have lost its
  // retained store (restart without persistence) and the bridge has not republished its
  // snapshot yet. Unconfirmed tickets then stay, dimmed, until the bridge says "online"
  // and has had RESYNC_MS to republish.
  function startSync() {
    const sync = { orders: new Set(state.orders.keys()), workers: new Set(state.workers.keys()), waitingForBridge: false };
    state.sync = sync;
    setTimeout(() => {
      if (state.sync !== sync) return; // superseded by a newer connection
      state.synced = true;
      board.dataset.synced = 'true';
      if (state.bridge === 'online' || sync.orders.size === 0) finishSync(sync);
      else {
        sync.waitingForBridge = true;
        scheduleRender();
      }
    }, RESYNC_MS);
  }

  function finishSync(sync) {
    if (!sync || state.sync !== sync) return;
    for (const num of sync.orders) {
      state.orders.delete(num);
      // The broker no longer has it: forget its version too, so that a bridge
      // republishing its snapshot later (same versions) is shown again.
      state.versions.delete(num);
    }
    for (const name of sync.workers) state.workers.delete(name);
    state.sync = null;
    scheduleRender();
  }

  const isStale = (num) => !!(state.sync && state.sync.waitingForBridge && state.sync.orders.has(num));

  // ---- pairing (issue 11) -------------------------------------------------------------
  // Bumps and recalls need a kitchen token. The page asks for one once, keeps it in this
  // browser's local storage, and sends it with every call. A 401/403 means the token was
  // revoked (or is not a kitchen token): the page says so and asks again.
  let token = null;
  try { token = localStorage.getItem(TOKEN_KEY); } catch (_) { /* storage blocked */ }
  let pairWaiter = null;

  function authHeaders() {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function setToken(t) {
    token = t;
    try {
      if (t) localStorage.setItem(TOKEN_KEY, t);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage blocked: paired for this session only */ }
  }

  // Shows the pairing form; `revoked` explains why it is back. Resolves once paired.
  function askForToken(revoked, detail) {
    document.body.dataset.pairing = revoked ? 'revoked' : 'needed';
    $('pair-title').textContent = revoked ? 'Paired device revoked' : 'Pair this display';
    $('pair-text').textContent = revoked
      ? 'This display\'s kitchen token is no longer accepted. Ask a manager for a new one (restaurant-system token create NAME --role kitchen) and enter it here.'
      : 'Bump and recall need a kitchen token. Ask a manager to run: restaurant-system token create NAME --role kitchen, and enter the token here.';
    $('pair-error').textContent = detail || '';
    // Over HTTPS with the box's own CA: what to compare before trusting this screen's link.
    const fp = state.cfg && state.cfg.ca_fingerprint;
    $('pair-ca').hidden = !fp;
    $('pair-ca').textContent = fp
      ? `This box's certificate authority, SHA-256: ${fp}. It must match what "restaurant-system tls show" prints on the box.`
      : '';
    $('pair').hidden = false;
    $('pair-token').value = '';
    $('pair-token').focus();
    if (!pairWaiter) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      pairWaiter = { promise, resolve };
    }
    return pairWaiter.promise;
  }

  function paired() {
    document.body.dataset.pairing = 'paired';
    $('pair').hidden = true;
    if (pairWaiter) {
      pairWaiter.resolve();
      pairWaiter = null;
    }
  }

  function revoked(detail) {
    setToken(null);
    askForToken(true, detail);
  }

  $('pair-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = $('pair-token').value.trim();
    if (!t) return;
    $('pair-error').textContent = 'Checking…';
    try {
      const r = await fetch('config.json', { cache: 'no-store', headers: { Authorization: `Bearer ${t}` } });
      if (r.ok) {
        setToken(t);
        state.cfg = await r.json();
        paired();
        return;
      }
      let msg = `HTTP ${r.status}`;
      try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
      $('pair-error').textContent = r.status === 401 ? 'This token is not valid.' : `Not accepted: ${msg}`;
    } catch (e) {
      $('pair-error').textContent = 'The display service is unreachable; try again.';
    }
  });

  // ---- actions ------------------------------------------------------------------------
  // `action` is the path after /orders/{n}/ (complete, recall, stations/grill/bump, ...);
  // `label` names it in messages. Resolves to the answer's JSON on success, else null.
  async function post(num, action, body, label) {
    const what = label || (action === 'complete' ? 'Bump' : action === 'recall' ? 'Recall' : action);
    if (state.pending.has(num)) return null;
    state.pending.add(num);
    scheduleRender();
    const url = `${orderServiceUrl()}/orders/${encodeURIComponent(num)}/${action}`;
    const headers = { ...authHeaders(), ...(body ? { 'Content-Type': 'application/json' } : {}) };
    let answer = null;
    try {
      const r = await fetch(url, { method: 'POST', mode: 'cors', cache: 'no-store', headers, body: body ? JSON.stringify(body) : undefined });
      if (r.status === 401 || r.status === 403) {
        state.pending.delete(num);
        revoked(`${what} of ${num} was refused (HTTP ${r.status}).`);
      } else if (!r.ok) {
        let detail = '';
        try {
          const b = await r.json();
          detail = b.message || b.error || '';
        } catch (_) { /* not JSON */ }
        toast(`${what} of ${num} failed: HTTP ${r.status} ${detail}`.trim(), 'bad');
        state.pending.delete(num);
      } else {
        try { answer = await r.json(); } catch (_) { answer = {}; }
        // The board changes when the bridge publishes the new state; stop waiting after a while
        // (at once for the item routes, whose ticket stays on screen).
        if (action === 'complete' || action === 'recall') setTimeout(() => { state.pending.delete(num); scheduleRender(); }, 5000);
        else state.pending.delete(num);
      }
    } catch (e) {
      toast(`${what} of ${num} failed: order service unreachable`, 'bad');
      state.pending.delete(num);
    }
    scheduleRender();
    return answer;
  }

  // ---- station actions (docs/stations.md) ----------------------------------------------
  const undoSeconds = () => Number(state.stations && state.stations.undo_seconds) || UNDO_FALLBACK_S;
  const stationPath = (st) => `stations/${encodeURIComponent(st)}`;
  let undoSeq = 0;

  function offerUndo(num, entries) {
    if (!entries.length) return;
    state.undo.unshift({
      id: ++undoSeq,
      num,
      indexes: entries.map((x) => x.index),
      names: entries.map((x) => String(x.it.name ?? '?')),
      // A little less than the server's window, so the button never offers what it refuses.
      until: Date.now() + Math.max(1, undoSeconds() - 0.5) * 1000,
    });
    scheduleRender();
  }

  // Tap an item: it is done at this station (a second tap on a done one takes it back).
  async function bumpItem(o, x) {
    const num = o.order_number;
    if (x.part.state === 'done') return undoBump({ num, indexes: [x.index] });
    const r = await post(num, `${stationPath(stationName)}/items/${x.index}/bump`, null, `Bump of ${x.it.name}`);
    if (r) offerUndo(num, [x]);
    return r;
  }

  // The station's whole part of the ticket.
  async function bumpStation(o) {
    const open = stationItems(o).filter((x) => x.part.state !== 'done');
    const r = await post(o.order_number, `${stationPath(stationName)}/bump`, null, 'Bump');
    if (r) offerUndo(o.order_number, open);
  }

  async function undoBump(u) {
    state.undo = state.undo.filter((x) => x !== u && x.id !== u.id);
    for (const i of u.indexes) {
      await post(u.num, `${stationPath(stationName)}/items/${i}/undo`, null, 'Undo');
    }
    scheduleRender();
  }

  // ---- rendering ----------------------------------------------------------------------
  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => { renderQueued = false; render(); }, 0);
  }

  const shortNumber = (num) => {
    const i = num.lastIndexOf('_');
    return i >= 0 ? num.slice(i + 1) : num;
  };

  function whereText(o) {
    if (o.order_type === 'dine_in' && o.table_number != null) return `Table ${o.table_number}`;
    if (o.order_type === 'delivery' && o.delivery_address) return o.delivery_address;
    return '';
  }

  const isRush = (o) => o.rush === true;
  const STATE_LABEL = { waiting: 'waiting', cooking: 'cooking', done: 'done' };

  // One item's line: quantity, name, modifiers, note, allergens.
  function itemLine(it, attrs) {
    const li = h('li', attrs || {},
      h('span', { class: 'qty', text: String(it.quantity ?? 1) }),
      h('span', { class: 'name', text: String(it.name ?? '?') }));
    for (const m of strings(it.modifiers)) li.append(h('span', { class: 'i-detail i-mod', text: m }));
    if (typeof it.notes === 'string' && it.notes) li.append(h('span', { class: 'i-detail i-note', text: it.notes }));
    const al = strings(it.allergens);
    if (al.length) {
      li.append(h('span', { class: 'i-detail' },
        ...al.map((a) => h('span', { class: 'i-allergen', 'data-allergen': a, text: a }))));
    }
    return li;
  }

  function buildTicket(o) {
    const pending = state.pending.has(o.order_number);
    const prio = Number(o.priority) || 1;
    const rush = isRush(o);
    const classes = ['ticket', `status-${o.status}`];
    if (rush || prio >= 10) classes.push('rush');
    else if (prio >= 5) classes.push('prio');
    if ((state.fresh.get(o.order_number) || 0) > Date.now()) classes.push('fresh');
    if (isStale(o.order_number)) classes.push('stale');

    // The items this screen shows: a station sees only its own.
    const mine = mode === 'station' ? stationItems(o) : itemsOf(o).map((it, index) => ({ it, index, part: null }));
    const items = h('ul', { class: 'items' });
    for (const x of mine) {
      if (mode === 'station') {
        const done = x.part.state === 'done';
        const li = itemLine(x.it, { class: `part part-${x.part.state}`, 'data-index': x.index, 'data-state': x.part.state });
        // The whole line is the button: greasy fingers do not aim.
        const btn = h('button', {
          type: 'button',
          class: 'part-tap',
          'data-index': x.index,
          disabled: pending,
          'aria-pressed': done ? 'true' : 'false',
          'aria-label': `${done ? 'Undo' : 'Done:'} ${x.it.quantity ?? 1} ${x.it.name ?? '?'}`,
          onclick: () => bumpItem(o, x),
        });
        li.prepend(btn);
        items.append(li);
      } else if (mode === 'expo') {
        const li = itemLine(x.it, { 'data-index': x.index });
        const ps = parts(x.it);
        if (ps.length) {
          li.append(h('span', { class: 'i-detail i-parts' },
            ...ps.map((p) => h('span', {
              class: `chip chip-${p.state}`,
              'data-station': p.station,
              'data-state': p.state,
              title: p.state === 'done' && p.bumped_by ? `done by ${p.bumped_by}` : null,
              text: `${p.station} ${p.state === 'done' ? '✓' : STATE_LABEL[p.state] || p.state}`,
            }))));
        }
        items.append(li);
      } else {
        items.append(itemLine(x.it));
      }
    }
    const allergens = orderAllergens(mine.map((x) => x.it));
    if (allergens.length) classes.push('has-allergens');
    const where = whereText(o);
    const foot = h('footer', { class: 't-foot' },
      h('span', { class: 't-status', text: o.expo && o.expo.waiting ? 'At expo' : STATUS_LABEL[o.status] || o.status }),
      mode !== 'station' && o.processed_by ? h('span', { class: 't-by', text: o.processed_by }) : null);
    if (mode === 'station') {
      foot.append(h('button', {
        type: 'button',
        class: 'bump',
        disabled: pending,
        text: pending ? 'Bumping…' : 'Bump',
        title: `Every ${stationName} item of this order done`,
        onclick: () => bumpStation(o),
      }));
    } else {
      if (mode === 'expo' && (o.status === 'received' || o.status === 'cooking')) {
        foot.append(h('button', {
          type: 'button',
          class: `rush-toggle${rush ? ' on' : ''}`,
          'aria-pressed': rush ? 'true' : 'false',
          disabled: pending,
          text: rush ? 'Unrush' : 'Rush',
          onclick: () => post(o.order_number, 'rush', { rush: !rush }, rush ? 'Unrush' : 'Rush'),
        }));
      }
      if (mode === 'expo' && o.expo && o.expo.waiting) {
        foot.append(h('button', {
          type: 'button',
          class: 'bump confirm',
          disabled: pending,
          text: pending ? 'Sending…' : 'Send',
          title: 'Every station is done: send the order (it becomes ready)',
          onclick: () => post(o.order_number, 'expo/confirm', null, 'Send'),
        }));
      }
      if (o.status === 'ready') {
        foot.append(h('button', {
          type: 'button',
          class: 'bump',
          disabled: pending,
          text: pending ? 'Bumping…' : 'Bump',
          onclick: () => post(o.order_number, 'complete'),
        }));
      }
    }
    // A station's ticket names the other stations working on the order.
    let also = null;
    if (mode === 'station') {
      const others = new Map();
      for (const it of itemsOf(o)) {
        for (const p of parts(it)) {
          if (p.station === stationName) continue;
          others.set(p.station, (others.get(p.station) ?? true) && p.state === 'done');
        }
      }
      if (others.size) {
        also = h('div', { class: 't-also', 'data-stations': [...others.keys()].join(' ') },
          h('span', { class: 'label', text: 'also at: ' }),
          h('span', { text: [...others].map(([st, done]) => (done ? `${st} ✓` : st)).join(', ') }));
      }
    }
    const el = h('article', {
      class: classes.join(' '),
      'data-order': o.order_number,
      'data-status': o.status,
      'data-type': o.order_type,
      'data-priority': prio,
      'data-rush': rush ? 'true' : null,
    },
    h('header', { class: 't-head' },
      h('span', { class: 't-num', text: `#${shortNumber(o.order_number)}` }),
      rush || prio >= 10 ? h('span', { class: 'badge badge-rush', text: 'RUSH' }) : prio >= 5 ? h('span', { class: 'badge badge-prio', text: 'PRIO' }) : null,
      h('span', { class: 'timer', 'data-created': o.created_at })),
    allergens.length ? h('div', { class: 't-allergens', role: 'alert', text: `Allergens: ${allergens.join(', ')}` }) : null,
    h('div', { class: 't-meta' },
      h('span', { class: 't-type', text: TYPE_LABEL[o.order_type] || o.order_type }),
      where ? h('span', { class: 't-where', text: where }) : null,
      o.customer_name ? h('span', { class: 't-cust', text: o.customer_name }) : null),
    typeof o.notes === 'string' && o.notes ? h('div', { class: 't-notes', text: o.notes }) : null,
    items,
    also,
    foot,
    h('div', { class: 't-full', text: o.order_number }));
    updateTimer(el);
    return el;
  }

  // Payload lists are shown only as plain strings (an older bridge sends none at all).
  const strings = (v) => (Array.isArray(v) ? v.filter((x) => typeof x === 'string' && x) : []);

  // Every allergen of the items shown, once, for the ticket's red band.
  function orderAllergens(items) {
    const all = new Set();
    for (const it of items) strings(it.allergens).forEach((a) => all.add(a));
    return [...all];
  }

  function ticketKey(o) {
    const fresh = (state.fresh.get(o.order_number) || 0) > Date.now();
    return `${o._seq}|${state.pending.has(o.order_number)}|${fresh}|${isStale(o.order_number)}`;
  }

  function updateTimer(el) {
    const timer = el.querySelector('.timer');
    const created = Date.parse(timer.dataset.created);
    if (!Number.isFinite(created)) {
      timer.textContent = '--:--';
      return;
    }
    const elapsed = serverNow() - created;
    const cfg = thisStation() || state.cfg || {};
    const yellow = (Number(cfg.yellow_after_seconds) || Number(state.cfg && state.cfg.yellow_after_seconds) || 300) * 1000;
    const red = (Number(cfg.red_after_seconds) || Number(state.cfg && state.cfg.red_after_seconds) || 480) * 1000;
    const level = elapsed >= red ? 'late' : elapsed >= yellow ? 'warn' : 'normal';
    timer.textContent = fmtElapsed(elapsed);
    for (const c of ['normal', 'warn', 'late']) {
      el.classList.toggle(c, c === level);
      timer.classList.toggle(c, c === level);
    }
  }

  // This screen's station as configured (its own thresholds), or null.
  function thisStation() {
    if (mode !== 'station' || !state.stations || !Array.isArray(state.stations.stations)) return null;
    return state.stations.stations.find((x) => x && x.name === stationName) || null;
  }

  // Rush (marked by expo) first, then priority, then oldest.
  function compareTickets(a, b) {
    const ra = isRush(a) ? 1 : 0;
    const rb = isRush(b) ? 1 : 0;
    if (ra !== rb) return rb - ra;
    const pa = Number(a.priority) || 1;
    const pb = Number(b.priority) || 1;
    if (pa !== pb) return pb - pa;
    const ca = Date.parse(a.created_at) || 0;
    const cb = Date.parse(b.created_at) || 0;
    if (ca !== cb) return ca - cb;
    return a.order_number < b.order_number ? -1 : 1;
  }

  function buildBoard() {
    board.replaceChildren();
    board.dataset.view = mode === 'types' ? orderType || 'all' : mode;
    if (mode !== 'types') {
      // One column: the station's tickets, or every open order for expo.
      const label = mode === 'station' ? stationName : 'Expo';
      board.append(h('section', { class: 'column', 'data-type': mode === 'station' ? stationName : 'expo', 'aria-label': label },
        h('h2', {}, h('span', { text: label }), h('span', { class: 'count', text: '0' })),
        h('div', { class: 'tickets' }),
        h('div', { class: 'more', role: 'status', hidden: true })));
      return;
    }
    for (const t of TYPES) {
      if (orderType && t.id !== orderType) continue;
      board.append(h('section', { class: 'column', 'data-type': t.id },
        h('h2', {}, h('span', { text: t.label }), h('span', { class: 'count', text: '0' })),
        h('div', { class: 'tickets' }),
        h('div', { class: 'more', role: 'status', hidden: true })));
    }
  }

  function render() {
    const open = [...state.orders.values()].filter((o) => OPEN.has(o.status) && visible(o));
    const keep = new Set();
    const lists = [];
    for (const col of board.querySelectorAll('.column')) {
      const list = open.filter((o) => mode !== 'types' || o.order_type === col.dataset.type).sort(compareTickets);
      lists.push([col, list]);
      const box = col.querySelector('.tickets');
      list.forEach((o, i) => {
        keep.add(o.order_number);
        let entry = elements.get(o.order_number);
        const key = ticketKey(o);
        if (!entry || entry.key !== key) {
          const el = buildTicket(o);
          if (entry) entry.el.replaceWith(el);
          entry = { el, key };
          elements.set(o.order_number, entry);
        }
        if (box.children[i] !== entry.el) box.insertBefore(entry.el, box.children[i] || null);
      });
      while (box.children.length > list.length) box.lastElementChild.remove();
      col.querySelector('.count').textContent = String(list.length);
      col.classList.toggle('empty', list.length === 0);
    }
    for (const [num, entry] of elements) {
      if (!keep.has(num)) {
        entry.el.remove();
        elements.delete(num);
      }
    }
    renderAllDay(open);
    renderRecall();
    renderStatus();
    shareWidth(lists);
    for (const [col, list] of lists) fitColumn(col, list);
  }

  // ---- a board that never scrolls -------------------------------------------------------
  // Tickets flow in lanes at least LANE_MIN px wide. The all-orders view shares the board's
  // lanes by load: every order type with tickets gets one, each further lane goes to the type
  // with the most tickets per lane, and an empty type shrinks to its heading.
  const LANE_MIN = 270;
  const GAP = 10;
  const COLUMN_PAD = 20; // .column padding, both sides
  const EMPTY_COLUMN = 150;

  function shareWidth(lists) {
    const style = getComputedStyle(board);
    const inner = board.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const boardGap = parseFloat(style.columnGap) || 0;
    const busy = lists.filter(([, list]) => list.length);
    const empty = lists.length - busy.length;
    const free = inner - boardGap * (lists.length - 1) - empty * EMPTY_COLUMN - busy.length * (COLUMN_PAD - GAP);
    const total = Math.max(busy.length, Math.floor(free / (LANE_MIN + GAP)));
    const lanes = new Map(busy.map(([col]) => [col, 1]));
    for (let left = busy.length ? total - busy.length : 0; left > 0; left -= 1) {
      let best = null;
      for (const [col, list] of busy) {
        if (!best || list.length / lanes.get(col) > best[1].length / lanes.get(best[0])) best = [col, list];
      }
      lanes.set(best[0], lanes.get(best[0]) + 1);
    }
    for (const [col] of lists) col.style.setProperty('--lanes', String(lanes.get(col) || 1));
    if (mode === 'types' && !orderType) {
      board.style.gridTemplateColumns = lists
        .map(([col]) => (lanes.has(col) ? `minmax(0, ${lanes.get(col)}fr)` : `${EMPTY_COLUMN}px`))
        .join(' ');
    }
  }

  // Shows the tickets in order until the column is full; the rest are hidden and counted on
  // a "+N more" strip at the foot of the column, which names them and the oldest one's age.
  // Measured after layout, so it holds for any screen size, font or ticket length.
  function fitColumn(col, list) {
    const box = col.querySelector('.tickets');
    const more = col.querySelector('.more');
    const els = list.map((o) => elements.get(o.order_number).el);
    for (const el of els) {
      el.hidden = false;
      el.classList.remove('clipped');
    }
    more.hidden = true;
    const firstCut = () => {
      const limit = box.getBoundingClientRect();
      return els.findIndex((el) => {
        const r = el.getBoundingClientRect();
        return r.right > limit.right + 0.5 || r.bottom > limit.bottom + 0.5;
      });
    };
    let k = firstCut();
    // The strip takes height from the tickets, and its text length depends on how many it
    // names: settle in a few rounds (hiding tickets never grows the strip's box).
    for (let round = 0; k >= 0 && round < 4; round += 1) {
      els.forEach((el) => { el.hidden = false; });
      fillMarker(more, list.slice(k));
      more.hidden = false;
      const next = firstCut();
      els.forEach((el, i) => { el.hidden = i >= k; });
      if (next < 0 || next >= k) break;
      k = next;
    }
    const shown = k >= 0 ? k : els.length;
    if (k >= 0) fillMarker(more, list.slice(k));
    // A single ticket taller than the column is cut at its height: mark it.
    for (const el of els.slice(0, shown)) el.classList.toggle('clipped', el.scrollHeight > el.clientHeight + 1);
    col.dataset.shown = String(shown);
    col.dataset.hidden = String(els.length - shown);
  }

  function fillMarker(more, hidden) {
    const nums = hidden.map((o) => `#${shortNumber(o.order_number)}`);
    const oldest = Math.min(...hidden.map((o) => Date.parse(o.created_at) || Infinity));
    more.dataset.count = String(hidden.length);
    more.dataset.orders = hidden.map((o) => o.order_number).join(' ');
    more.replaceChildren(
      h('span', { class: 'more-n', text: `+${hidden.length} more` }),
      h('span', { class: 'more-list', text: nums.slice(0, MORE_LIST_MAX).join(' ') + (nums.length > MORE_LIST_MAX ? ' …' : '') }),
      Number.isFinite(oldest) ? h('span', { class: 'more-age', text: `oldest waiting ${fmtElapsed(serverNow() - oldest)}` }) : null);
  }

  function renderAllDay(open) {
    const counts = new Map();
    for (const o of open) {
      if (o.status === 'ready') continue;
      // A station counts what it still has to make; other screens every item not yet ready.
      const todo = mode === 'station' ? stationItems(o).filter((x) => x.part.state !== 'done').map((x) => x.it) : itemsOf(o);
      for (const it of todo) {
        const name = String(it.name ?? '?');
        counts.set(name, (counts.get(name) || 0) + (Number(it.quantity) || 0));
      }
    }
    const box = $('allday-items');
    box.replaceChildren();
    const sorted = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    if (sorted.length === 0) box.append(h('span', { class: 'muted', text: 'nothing waiting' }));
    for (const [name, qty] of sorted) {
      box.append(h('span', { class: 'ad', 'data-item': name }, h('b', { text: String(qty) }), h('span', { text: name })));
    }
  }

  // A station screen's foot: the bumps it can still take back, each for a few seconds.
  function renderUndo() {
    const box = $('recall-list');
    box.replaceChildren();
    const now = Date.now();
    state.undo = state.undo.filter((u) => u.until > now);
    if (state.undo.length === 0) box.append(h('span', { class: 'muted', text: 'Bumps can be taken back here for a few seconds' }));
    for (const u of state.undo) {
      box.append(h('button', {
        type: 'button',
        class: 'recall undo',
        'data-order': u.num,
        'data-indexes': u.indexes.join(' '),
        disabled: state.pending.has(u.num),
        onclick: () => undoBump(u),
      },
      h('b', { text: `Undo #${shortNumber(u.num)}` }),
      h('span', { text: ` ${u.names.join(', ')}` }),
      h('span', { class: 'undo-left', text: ` ${Math.ceil((u.until - now) / 1000)} s` })));
    }
  }

  function renderRecall() {
    if (mode === 'station') {
      renderUndo();
      return;
    }
    const box = $('recall-list');
    box.replaceChildren();
    const list = state.recall.filter(visible);
    if (list.length === 0) box.append(h('span', { class: 'muted', text: 'No completed orders yet' }));
    for (const o of list) {
      const at = Date.parse(o.status_changed_at);
      box.append(h('button', {
        type: 'button',
        class: 'recall',
        'data-order': o.order_number,
        disabled: state.pending.has(o.order_number),
        title: `Bring ${o.order_number} back to the board`,
        onclick: () => post(o.order_number, 'recall'),
      },
      h('b', { text: `#${shortNumber(o.order_number)}` }),
      h('span', { text: ` ${TYPE_LABEL[o.order_type] || o.order_type || ''}` }),
      Number.isFinite(at) ? h('span', { class: 'muted', text: ` ${fmtClock(at)}` }) : null));
    }
  }

  function renderStatus() {
    const banner = $('conn-banner');
    banner.hidden = state.connected;
    document.body.dataset.conn = state.connected ? 'connected' : state.everConnected ? 'lost' : 'connecting';
    if (!state.connected) {
      banner.textContent = state.everConnected
        ? 'Connection to kitchen broker lost — reconnecting…'
        : state.cfg ? 'Connecting to kitchen broker…' : 'Loading display settings…';
    }
    const conn = $('conn-state');
    conn.textContent = state.connected ? 'broker connected' : 'broker offline';
    conn.className = `pill ${state.connected ? 'pill-ok' : 'pill-bad'}`;
    $('bridge-banner').hidden = !state.connected || state.bridge !== 'offline';

    const online = [...state.workers.values()].filter((w) => w.status === 'online');
    const wEl = $('workers');
    // With stations, cooks bump by hand: kitchen workers do not run (docs/stations.md).
    wEl.hidden = mode !== 'types';
    wEl.textContent = `${online.length} worker${online.length === 1 ? '' : 's'} online`;
    wEl.className = `pill ${online.length ? 'pill-ok' : 'pill-warn'}`;
    wEl.title = [...state.workers.values()]
      .map((w) => `${w.worker_name}: ${w.status}, ${w.orders_processed ?? 0} orders`)
      .join('\n') || 'No kitchen workers seen';
  }

  function tick() {
    for (const { el } of elements.values()) updateTimer(el);
    if (mode === 'station' && state.undo.length) renderUndo();
    $('clock').textContent = fmtClock(serverNow());
    // Drop highlights that have run out (rebuilds the few tickets concerned).
    let expired = false;
    for (const [num, until] of state.fresh) {
      if (until <= Date.now()) {
        state.fresh.delete(num);
        expired = true;
      }
    }
    if (expired) scheduleRender();
  }

  function buildNav() {
    const nav = $('views');
    nav.replaceChildren();
    const base = location.pathname;
    const links = [{ href: base, label: 'All orders', active: mode === 'types' && !orderType }];
    for (const t of TYPES) links.push({ href: `${base}?type=${t.id}`, label: t.label, active: orderType === t.id });
    const configured = state.stations && Array.isArray(state.stations.stations) ? state.stations.stations : [];
    if (configured.length) {
      links.push({ href: `${base}?view=expo`, label: 'Expo', active: mode === 'expo', cls: 'nav-expo' });
      for (const st of configured) links.push({ href: `${base}?station=${encodeURIComponent(st.name)}`, label: st.name, active: stationName === st.name, cls: 'nav-station' });
    }
    for (const l of links) {
      nav.append(h('a', { href: l.href, class: [l.cls, l.active ? 'active' : null].filter(Boolean).join(' ') || null, 'aria-current': l.active ? 'page' : null, text: l.label }));
    }
    const view = mode === 'station' ? `Station ${stationName}` : mode === 'expo' ? 'Expo' : orderType ? TYPE_LABEL[orderType] : 'All orders';
    document.title = `Kitchen — ${view}`;
    $('page-title').textContent = mode === 'station' ? stationName : `Kitchen · ${view}`;
    document.body.dataset.mode = mode;
    document.querySelector('#recall-bar .label').textContent = mode === 'station' ? 'Undo' : 'Recall';
  }

  // GET /stations (tracking service, the page's origin): the stations, their thresholds, the
  // undo window, whether expo confirms. Missing (an older server) means no stations.
  async function loadStations() {
    try {
      const r = await fetch('/stations', { cache: 'no-store', headers: authHeaders() });
      if (r.ok) state.stations = await r.json();
    } catch (_) { /* no stations: the order-type views work as before */ }
    buildNav();
    if (mode === 'station' && !thisStation()) {
      // A screen set up with a wrong name must not look like a quiet station.
      const head = board.querySelector('.column h2 span');
      if (head) head.textContent = `${stationName}: no such station`;
      toast(`No station named "${stationName}" is configured`, 'bad');
    }
  }

  // ---- rolling ticket time (GET /reports/speed-of-service on the tracking service) ------
  let speedTimer = null;
  function refreshSpeedSoon() {
    if (speedTimer) return;
    speedTimer = setTimeout(() => { speedTimer = null; refreshSpeed(); }, 2000);
  }

  async function refreshSpeed() {
    const el = $('speed');
    const to = serverNow() + 60000;
    const from = serverNow() - SPEED_WINDOW_MS;
    const q = `from=${encodeURIComponent(new Date(from).toISOString())}&to=${encodeURIComponent(new Date(to).toISOString())}`;
    try {
      const r = await fetch(`/reports/speed-of-service?${q}`, { cache: 'no-store', headers: authHeaders() });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const stats = (await r.json()).overall.received_to_ready;
      const avg = Number(stats.avg_seconds);
      el.querySelector('.v').textContent = stats.count > 0 && Number.isFinite(avg) ? fmtElapsed(avg * 1000) : '--:--';
      el.dataset.avgSeconds = stats.count > 0 ? String(avg) : '';
      el.dataset.count = String(stats.count);
      el.title = `Average received → ready over the last hour: ${stats.count} ticket${stats.count === 1 ? '' : 's'}`
        + (stats.count ? `, median ${fmtElapsed(stats.p50_seconds * 1000)}, 90% within ${fmtElapsed(stats.p90_seconds * 1000)}` : '');
    } catch (e) {
      el.title = `Ticket time unavailable (${e.message})`;
    }
  }

  // ---- configuration and connection ---------------------------------------------------
  function orderServiceUrl() {
    const u = state.cfg && state.cfg.order_service_url;
    if (u) return u.replace(/\/+$/, '');
    // The box whose broker the screen is on: its own box, or the next one after a failover.
    return `${location.protocol}//${state.box || location.hostname}:3000`;
  }

  function mqttUrl() {
    const u = state.cfg && state.cfg.mqtt_ws_url;
    if (u) return u;
    // Over HTTPS the broker is reached on the page's own origin (the tracking service passes
    // /mqtt on to Mosquitto): the certificate the screen already trusts, no second prompt.
    if (location.protocol === 'https:') return `wss://${location.host}/mqtt`;
    const port = (state.cfg && state.cfg.mqtt_ws_port) || 9001;
    return `ws://${location.hostname}:${port}`;
  }

  // Several boxes ([cluster] boxes, docs/multi-box.md): this page's own broker first, then every
  // other box's /mqtt, on the scheme and port this page came from (the tracking service of each
  // box passes /mqtt on to its Mosquitto, and each box's display bridge feeds its own Mosquitto).
  function mqttUrls() {
    const boxes = (state.cfg && state.cfg.boxes) || [];
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const port = location.port ? `:${location.port}` : '';
    const others = boxes.filter((b) => b !== location.hostname);
    const host = (b) => (b.includes(':') ? `[${b}]` : b);
    return [
      { url: mqttUrl(), box: location.hostname },
      ...others.map((b) => ({ url: `${scheme}://${host(b)}${port}/mqtt`, box: host(b) })),
    ];
  }

  async function loadConfig() {
    const t0 = Date.now();
    const r = await fetch('config.json', { cache: 'no-store', headers: authHeaders() });
    if ((r.status === 401 || r.status === 403) && token) {
      const e = new Error(`HTTP ${r.status}`);
      e.revoked = true;
      throw e;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const cfg = await r.json();
    const t1 = Date.now();
    const server = Date.parse(cfg.server_time);
    // The server's clock is the reference for every timer: kitchen screens' clocks drift.
    if (Number.isFinite(server)) state.offsetMs = server - (t0 + t1) / 2;
    return cfg;
  }

  function connect() {
    const cfg = state.cfg;
    state.prefix = `${cfg.topic_prefix || 'restaurant'}/${cfg.site || 'main'}`;
    // A station screen reads its own retained topic: only the tickets it has, at once after a reload.
    const orderTopic = mode === 'station' ? `stations/${stationName}/orders/+` : 'orders/+';
    const topics = [orderTopic, 'events', 'workers/+', 'bridge/status'].map((t) => `${state.prefix}/${t}`);
    const creds = cfg.mqtt_username ? { username: cfg.mqtt_username, password: cfg.mqtt_password || '' } : {};
    const urls = mqttUrls();
    const several = urls.length > 1;
    let at = 0;
    // With several boxes a dead box must be noticed within seconds (a power cut sends no close:
    // only the missing ping answers tell), and every reconnect after a loss tries the next box.
    const failover = several ? {
      keepalive: 3,
      connectTimeout: 3000,
      transformWsUrl: () => urls[at].url,
    } : {};
    const client = mqtt.connect(urls[0].url, {
      ...creds,
      clientId: `kds-${stationName || (mode === 'expo' ? 'expo' : orderType || 'all')}-${Math.random().toString(16).slice(2, 10)}`,
      clean: true, // the retained messages are the state; no session to keep
      keepalive: 10,
      reconnectPeriod: 1000,
      connectTimeout: 5000,
      resubscribe: false, // we subscribe on every connect ourselves (and resync)
      ...failover,
    });
    client.on('connect', () => {
      state.box = urls[at].box;
      state.connected = true;
      state.everConnected = true;
      state.bridge = null;
      scheduleRender();
      client.subscribe(topics, { qos: 1 }, (err) => {
        if (err) {
          console.error('subscribe failed', err);
          toast('Subscribing to the kitchen topics failed', 'bad');
          return;
        }
        startSync();
      });
    });
    client.on('message', onMessage);
    client.on('close', () => {
      if (state.connected) console.warn('MQTT connection lost');
      if (several) at = (at + 1) % urls.length;
      state.connected = false;
      state.sync = null;
      scheduleRender();
    });
    client.on('error', (e) => console.warn('MQTT error:', e && e.message));
    window.kitchenDisplayClient = client;
  }

  async function start() {
    buildNav();
    buildBoard();
    renderSoundButton();
    render();
    let delay = 1000;
    for (;;) {
      try {
        state.cfg = await loadConfig();
        break;
      } catch (e) {
        if (e.revoked) {
          revoked();
          await pairWaiter.promise;
          continue;
        }
        $('conn-banner').textContent = `Cannot load display settings (${e.message}) — retrying…`;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 15000);
      }
    }
    if (state.cfg.pairing && !token) await askForToken(false);
    if (state.cfg.pairing) paired();
    await loadStations();
    render();
    connect();
    setInterval(tick, 1000);
    refreshSpeed();
    setInterval(refreshSpeed, SPEED_REFRESH_MS);
    window.addEventListener('resize', scheduleRender);
    setInterval(async () => {
      try {
        const cfg = await loadConfig();
        state.cfg = { ...state.cfg, yellow_after_seconds: cfg.yellow_after_seconds, red_after_seconds: cfg.red_after_seconds };
      } catch (e) {
        if (e.revoked) revoked();
        /* otherwise keep the old offset */
      }
    }, CONFIG_REFRESH_MS);
  }

  start();
})();
