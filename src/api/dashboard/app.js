// Homeostat's dashboard: decisions and their paths, rules, approvals and a
// SQL console, kept live by the server's event stream.
//
// No framework and no build step: the page is served as it is written, under
// a CSP that forbids inline script and style. Server data only ever reaches
// the page as text nodes (textContent, createTextNode), never as markup.
//
// The decisions list is built once per decision: each row is kept in a Map
// by id with a precomputed search string, filters only toggle `hidden`, and
// a refresh fetches only the decisions changed since the last one
// (`?after=`, the list's version) and rebuilds only their rows; the whole list
// is fetched again once a minute, to reconcile.

'use strict';

(() => {
  // ---------------------------------------------------------------- helpers

  const SVG_NS = 'http://www.w3.org/2000/svg';

  const byId = (id) => document.getElementById(id);

  /** Appends children: nodes as they are, anything else as text. */
  function append(el, children) {
    for (const c of children) {
      if (c == null || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  /** An element: `h('a', {class: 'x', href: '#/'}, 'text', child)`. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k === 'testid') el.dataset.testid = v;
        else if (k === 'data') Object.assign(el.dataset, v);
        else if (k === 'hidden') el.hidden = true;
        else if (k.startsWith('on')) {
          // Never an inline handler attribute: only functions become listeners.
          if (typeof v === 'function') el.addEventListener(k.slice(2), v);
        } else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    return append(el, children);
  }

  /** An SVG element. */
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, String(v));
    return append(el, children);
  }

  const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  const arr = (v) => (Array.isArray(v) ? v : []);
  const obj = (v) => (isObj(v) ? v : {});
  const str = (v) => (v == null ? '' : String(v));

  /** UTC nanoseconds (beyond 2^53, so approximate) to epoch milliseconds. */
  function nsToMs(ns) {
    const n = typeof ns === 'string' ? Number(ns) : ns;
    return typeof n === 'number' && Number.isFinite(n) && n > 0 ? n / 1e6 : NaN;
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function fmtDateTime(ns) {
    const ms = nsToMs(ns);
    if (Number.isNaN(ms)) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtClock(ns) {
    const ms = nsToMs(ns);
    if (Number.isNaN(ms)) return '—';
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtDay(ns) {
    const ms = nsToMs(ns);
    if (Number.isNaN(ms)) return '';
    const d = new Date(ms);
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return 'today';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }

  /** "12s ago", "in 3m". */
  function fmtRelative(ns) {
    const ms = nsToMs(ns);
    if (Number.isNaN(ms)) return '';
    const diff = ms - Date.now();
    const span = fmtSpan(Math.abs(diff) / 1000);
    return diff >= 0 ? `in ${span}` : `${span} ago`;
  }

  /** Seconds, roughly: "45s", "3m 20s", "2h 5m", "3d 4h". */
  function fmtSpan(sec) {
    if (!Number.isFinite(sec)) return '—';
    if (sec < 1) return '<1s';
    if (sec < 60) return `${Math.floor(sec)}s`;
    const m = Math.floor(sec / 60);
    if (m < 60) return sec % 60 >= 1 ? `${m}m ${Math.floor(sec % 60)}s` : `${m}m`;
    const hr = Math.floor(m / 60);
    if (hr < 24) return m % 60 ? `${hr}h ${m % 60}m` : `${hr}h`;
    const d = Math.floor(hr / 24);
    return hr % 24 ? `${d}d ${hr % 24}h` : `${d}d`;
  }

  /** A duration in nanoseconds: "850 µs", "41.2 ms", "1.24 s", "2m 3s". */
  function fmtDuration(ns) {
    const n = Number(ns);
    if (!Number.isFinite(n) || n < 0) return '—';
    if (n < 1e3) return `${n} ns`;
    if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 1 : 0)} µs`;
    if (n < 1e9) return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)} ms`;
    if (n < 60e9) return `${(n / 1e9).toFixed(2)} s`;
    return fmtSpan(n / 1e9);
  }

  function fmtNumber(v) {
    if (typeof v !== 'number') return str(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e9)) return v.toExponential(3);
    return String(Number(v.toPrecision(4)));
  }

  /** Any JSON value as short text. */
  function fmtValue(v) {
    if (v === null || v === undefined) return 'null';
    if (typeof v === 'number') return fmtNumber(v);
    if (typeof v === 'string') return v;
    if (typeof v === 'boolean') return String(v);
    try {
      return JSON.stringify(v);
    } catch {
      return String(v);
    }
  }

  function fmtKV(map, limit = Infinity) {
    const parts = [];
    for (const [k, v] of Object.entries(obj(map))) {
      if (parts.length >= limit) {
        parts.push('…');
        break;
      }
      parts.push(`${k}=${fmtValue(v)}`);
    }
    return parts.join('  ');
  }

  function plural(n, one, many = `${one}s`) {
    return `${n} ${n === 1 ? one : many}`;
  }

  const words = (name) => str(name).replace(/_/g, ' ');

  // Status words to tones. Colour is never the only signal: every badge
  // carries its word, and each tone its own icon (see app.css).
  const TONES = {
    effective: 'good', ineffective: 'bad', pending: 'warn', none: 'muted',
    allowed: 'good', approved: 'good', suppressed: 'muted', awaiting_approval: 'warn',
    denied: 'bad', expired: 'bad', claimed_by_other: 'muted',
    running: 'info', succeeded: 'good', skipped: 'muted', failed: 'bad', interrupted: 'warn',
    ok: 'good', error: 'bad', timeout: 'bad', dry_run: 'info',
    inactive: 'muted', firing: 'bad', resolved: 'good', passed: 'good', unset: 'muted',
  };
  const toneOf = (word) => TONES[word] || 'muted';

  /** A status badge: its text is the status word, spaces for underscores. */
  function badge(word, props = {}) {
    const w = str(word) || 'none';
    return h('span', { ...props, class: `badge tone-${toneOf(w)}${props.class ? ` ${props.class}` : ''}`, data: { ...(props.data || {}), status: w } }, words(w));
  }

  function tag(text, cls = '') {
    return h('span', { class: `tag ${cls}`.trim() }, text);
  }

  /** A decision's trigger (firing, resolved, repeat, ineffective); its class only from a plain word. */
  function triggerTag(trigger) {
    const t = str(trigger);
    return tag(t, `trig trig-${/^[a-z_]+$/.test(t) ? t : 'other'}`);
  }

  function labelChips(labels) {
    return Object.entries(obj(labels)).map(([k, v]) => h('span', { class: 'chip' }, h('span', { class: 'chip-k' }, k), '=', h('span', { class: 'chip-v' }, str(v))));
  }

  function safeHref(url) {
    try {
      const u = new URL(url, location.href);
      return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
    } catch {
      return null;
    }
  }

  /** The external trace viewer's link for a trace, or null. */
  function traceLink(traceId) {
    const tpl = state.status && state.status.trace_url;
    if (!tpl || !traceId) return null;
    return safeHref(tpl.split('{trace_id}').join(encodeURIComponent(traceId)));
  }

  const hrefDecision = (id) => `#/decisions/${encodeURIComponent(id)}`;
  const hrefRule = (name) => `#/rules/${encodeURIComponent(name)}`;

  /**
   * Runs `fn` with at most one call in flight, and once more if asked
   * meanwhile; calls start at least `gapMs` apart.
   */
  function coalesced(fn, gapMs = 0) {
    let running = null;
    let again = false;
    let lastStart = -Infinity;
    return function run() {
      if (running) {
        again = true;
        return running;
      }
      running = (async () => {
        try {
          do {
            again = false;
            const wait = lastStart + gapMs - performance.now();
            if (wait > 0) await new Promise((r) => setTimeout(r, wait));
            lastStart = performance.now();
            try {
              await fn();
            } catch (e) {
              if (!(e instanceof ApiError && e.status === 401)) console.warn(e);
            }
          } while (again);
        } finally {
          running = null;
        }
      })();
      return running;
    };
  }

  const FOCUSABLE = 'a[href], button, summary, input, select, textarea, [tabindex]';

  /**
   * Rebuilds `root` keeping what the person was doing in it: the open state
   * of <details data-key>, and the focus (by position among its focusable
   * elements) with what was being typed there. Live views rebuild every few
   * seconds; without this, a keyboard user would be thrown back to the top
   * of the page, and a comment half written would be lost.
   */
  function keepOpen(root, rebuild) {
    const open = new Set();
    for (const d of root.querySelectorAll('details[data-key]')) if (d.open) open.add(d.dataset.key);
    const active = document.activeElement;
    const focusAt = active && active !== root && root.contains(active) ? [...root.querySelectorAll(FOCUSABLE)].indexOf(active) : -1;
    rebuild();
    for (const d of root.querySelectorAll('details[data-key]')) if (open.has(d.dataset.key)) d.open = true;
    if (focusAt >= 0 && !root.contains(active)) {
      const again = root.querySelectorAll(FOCUSABLE)[focusAt];
      if (!again) return;
      if ((again instanceof HTMLInputElement || again instanceof HTMLTextAreaElement) && again.type === active.type) {
        again.value = active.value;
      }
      again.focus({ preventScroll: true });
    }
  }

  // -------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  let leaving = false;

  /** The longest plain-text error shown as it came. */
  const ERROR_TEXT_MAX = 300;

  /** Calls the API; resolves to its JSON body. */
  async function api(path, options = {}) {
    return (await request(path, options)).body;
  }

  /** Calls the API; resolves to {body, chars}: the JSON body and its length as text. */
  async function request(path, options = {}) {
    const init = { credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (options.json !== undefined) {
      init.method = 'POST';
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(options.json);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      showBanner(`Cannot reach Homeostat (${e.message || e}). Retrying…`);
      setLive('offline');
      throw new ApiError(0, `network error: ${e.message || e}`);
    }
    if (res.status === 401) {
      if (!leaving) {
        leaving = true;
        location.assign('/login');
      }
      throw new ApiError(401, 'signed out');
    }
    const text = await res.text();
    let body = null;
    let parsed = true;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      parsed = false;
    }
    if (!res.ok) {
      // The API's own {"error"}; plain text as it is; a page (a proxy's) by its status only.
      const plain = /^text\/plain/.test(res.headers.get('Content-Type') || '');
      const message = (isObj(body) && typeof body.error === 'string' && body.error) || (plain && text.slice(0, ERROR_TEXT_MAX)) || res.statusText || 'failed';
      throw new ApiError(res.status, `${message} (HTTP ${res.status})`);
    }
    // Not JSON on success (a proxy's page, a cut-off body): an error, not an empty list.
    if (!parsed) throw new ApiError(res.status, `the server's answer to ${path.split('?')[0]} is not JSON`);
    hideBanner();
    if (byId('live').dataset.state === 'offline') setLive(state.es && state.es.readyState === 1 ? 'live' : 'polling');
    return { body, chars: text.length };
  }

  function showBanner(message) {
    const b = byId('banner');
    b.textContent = message;
    b.hidden = false;
  }

  function hideBanner() {
    const b = byId('banner');
    if (!b.hidden) b.hidden = true;
  }

  /**
   * Says in a view (decisions, rules, approvals) why it could not be
   * loaded, rather than leaving it blank or stale without a word. An
   * unreachable server is the banner's to say; a 401 is leaving for /login.
   */
  function showViewError(view, what, e) {
    if (e instanceof ApiError && (e.status === 0 || e.status === 401)) return;
    const el = byId(`${view}-error`);
    const text = `${what}: ${e && e.message ? e.message : e}`;
    if (el.textContent !== text) el.textContent = text; // the same failure again is not news
    el.hidden = false;
    const empty = byId(`${view}-empty`);
    if (empty.dataset.loading === 'true') empty.hidden = true;
  }

  function clearViewError(view) {
    const el = byId(`${view}-error`);
    if (!el.hidden) el.hidden = true;
  }

  // ------------------------------------------------------------- the state

  const state = {
    status: null,
    /** id → entry {d, id, sig, row, rule, service, outcome, at, atMs, search}. */
    entries: new Map(),
    /** The entries newest first (see newestFirst), as the rows are in the list. */
    order: [],
    loaded: false,
    /** The server's version of the list that the page reflects (see refreshDecisions). */
    version: null,
    /** When the whole list was last fetched (performance.now()), and whether it must be again. */
    fullAt: -Infinity,
    fullDue: false,
    limit: 1000,
    filters: { rule: '', service: '', outcome: '', time: 'all', q: '' },
    view: null,
    detailId: null,
    /** Whether the next render of the detail takes the focus (it was just opened). */
    focusDetail: false,
    detail: null,
    listScroll: 0,
    rulesRoute: null,
    spans: new Map(),
    es: null,
    everOpened: false,
    pollTimer: null,
    retryTimer: null,
  };

  window.homeostatTimings = { firstRender: null, lastFilter: null };

  let resolveStatus;
  const statusReady = new Promise((r) => (resolveStatus = r));

  async function loadStatus() {
    try {
      const st = await api('/api/v1/status');
      state.status = obj(st);
      byId('node-name').textContent = str(state.status.node) || 'homeostat';
      byId('version').textContent = state.status.version ? `v${state.status.version}` : '';
      byId('node-name').title = [
        `node ${str(state.status.node)}`,
        state.status.data ? `data ${state.status.data}` : '',
        state.status.started_at ? `started ${fmtDateTime(state.status.started_at)}` : '',
      ].filter(Boolean).join('\n');
      byId('logout-form').hidden = !state.status.auth;
      const kept = Number(state.status.decisions_kept);
      if (Number.isInteger(kept) && kept > 0) state.limit = kept;
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) console.warn('status', e);
    } finally {
      resolveStatus();
    }
  }

  // ------------------------------------------------------- decisions list

  const hostCallStatuses = ['ok', 'dry_run', 'error', 'timeout', 'denied'];

  /** What changes when a decision changes. */
  function signature(d) {
    const run = obj(d.run);
    return [d.updated_at, d.outcome, obj(d.policy).verdict, run.status, run.attempts, arr(d.host_calls).length, obj(d.verification).checked_at].join('|');
  }

  function searchText(d) {
    const p = obj(d.policy);
    const r = obj(d.reasoning);
    const run = obj(d.run);
    const parts = [d.id, d.trace_id, d.rule, d.fingerprint, d.trigger, d.outcome, p.verdict, p.reason, p.dry_run ? 'dry run dry_run' : '', run.status, run.script, d.escalates];
    for (const [k, v] of Object.entries(obj(d.labels))) parts.push(`${k}=${v}`);
    for (const c of arr(p.checks)) if (c && !c.passed) parts.push(c.policy, c.detail);
    const ap = obj(p.approval);
    parts.push(ap.by, ap.comment);
    for (const c of arr(r.considered)) parts.push(obj(c).option, obj(c).reason);
    if (r.decision) parts.push(obj(r.decision).option, obj(r.decision).reason);
    if (r.expectation) parts.push(obj(r.expectation).description);
    parts.push(r.skipped);
    for (const line of arr(r.output)) parts.push(line);
    for (const c of arr(d.host_calls)) {
      const call = obj(c);
      parts.push(call.function, call.target, call.status, call.error);
    }
    const err = obj(run.error);
    parts.push(err.kind, err.message);
    for (const t of arr(obj(d.detection).evidence_trace_ids)) parts.push(t);
    const v = obj(d.verification);
    parts.push(v.expected, v.escalation);
    return parts.filter((x) => x != null && x !== '').join('\n').toLowerCase();
  }

  // One row, cloned for every decision (cloning a template is much faster
  // than building each row element by element).
  const ROW_CELLS = ['time', 'rule', 'evidence', 'policy', 'options', 'choice', 'calls', 'run', 'outcome'];
  const ROW_TEMPLATE = h('a', { class: 'drow', testid: 'decision-row' },
    ROW_CELLS.map((c, i) => h('span', { class: `cell c-${c}${i > 0 ? ' step' : ''}` }, h('span', { class: 'main' }), h('span', { class: 'sub' }))));

  function buildRow(d) {
    const row = ROW_TEMPLATE.cloneNode(true);
    const p = obj(d.policy);
    const det = obj(d.detection);
    const r = obj(d.reasoning);
    const run = isObj(d.run) ? d.run : null;
    const calls = arr(d.host_calls);
    const runStatus = run ? str(run.status) || 'none' : 'none';
    row.href = hrefDecision(str(d.id));
    row.dataset.id = str(d.id);
    row.dataset.rule = str(d.rule);
    row.dataset.outcome = str(d.outcome) || 'none';
    row.dataset.verdict = str(p.verdict);
    row.dataset.status = runStatus;
    const cells = row.children;
    const put = (i, main, sub, subTitle) => {
      const m = cells[i].firstChild;
      const sb = cells[i].lastChild;
      append(m, Array.isArray(main) ? main : [main]);
      if (sub) {
        sb.textContent = sub;
        if (subTitle !== false) sb.title = subTitle || sub;
      }
    };

    put(0, fmtClock(d.at), fmtDay(d.at), fmtDateTime(d.at));
    cells[0].title = `${fmtDateTime(d.at)} (${fmtRelative(d.at)})`;

    const labels = obj(d.labels);
    const service = labels.service_name;
    const labelText = Object.entries(labels).filter(([k]) => k !== 'service_name').map(([k, v]) => `${k}=${v}`).join(' ');
    put(1, [h('span', { class: 'rule-name' }, str(d.rule)), d.trigger && d.trigger !== 'firing' ? triggerTag(d.trigger) : null],
      [service ? `${service}` : '', labelText].filter(Boolean).join(' · ') || str(d.fingerprint));

    const rows = Number(det.rows);
    put(2, [plural(Number.isFinite(rows) ? rows : arr(det.evidence).length, 'row'), det.state ? h('span', { class: 'dim' }, ` · ${det.state}`) : null], fmtKV(det.values, 4));

    put(3, [badge(p.verdict), p.dry_run ? tag('dry run', 'tag-info') : null], str(p.reason));

    const considered = arr(r.considered);
    put(4, considered.length ? plural(considered.length, 'option') : h('span', { class: 'dim' }, '—'), considered.map((c) => str(obj(c).option)).join(', '));

    if (r.skipped != null) put(5, [tag('skip', 'tag-muted')], str(r.skipped));
    else if (r.decision) put(5, h('span', { class: 'choice' }, str(obj(r.decision).option)), str(obj(r.decision).reason));
    else put(5, h('span', { class: 'dim' }, '—'));

    if (calls.length) {
      const counts = {};
      for (const c of calls) counts[obj(c).status] = (counts[obj(c).status] || 0) + 1;
      const first = obj(calls[0]);
      put(6, [plural(calls.length, 'call'), ' ', hostCallStatuses.filter((st) => counts[st]).map((st) => h('span', { class: `mini tone-${toneOf(st)}`, title: `${counts[st]} ${words(st)}` }, `${counts[st]}`))],
        `${str(first.function)} ${str(first.target)}`.trim());
    } else put(6, h('span', { class: 'dim' }, '—'));

    if (run) {
      const err = obj(run.error);
      const dur = run.ended_at && run.started_at ? fmtDuration(Number(run.ended_at) - Number(run.started_at)) : '';
      put(7, badge(runStatus), err.kind ? `${err.kind}: ${str(err.message)}` : [dur, Number(run.attempts) > 1 ? `${run.attempts} attempts` : ''].filter(Boolean).join(' · '));
    } else put(7, h('span', { class: 'dim' }, 'not run'));

    const v = isObj(d.verification) ? d.verification : null;
    let outSub = '';
    if (v && v.escalation) outSub = `escalated: ${v.escalation}`;
    else if (d.escalates) outSub = `escalates ${d.escalates}`;
    else if (v && d.outcome === 'pending') outSub = `by ${fmtClock(v.deadline)}`;
    else if (v) outSub = str(v.expected);
    put(8, badge(str(d.outcome) || 'none'), outSub);
    row.classList.add(`tone-row-${rowTone(d.outcome, p.verdict, runStatus)}`);
    return row;
  }

  /** The row's edge: the worst of its outcome, verdict and run. */
  function rowTone(outcome, verdict, runStatus) {
    const tones = [toneOf(str(outcome)), (verdict === 'suppressed' || verdict === 'claimed_by_other') ? 'muted' : toneOf(str(verdict)), runStatus === 'none' ? 'muted' : toneOf(runStatus)];
    for (const t of ['bad', 'warn', 'good']) if (tones.includes(t)) return t;
    return 'muted';
  }

  function makeEntry(d, sig) {
    const labels = obj(d.labels);
    const at = Number(d.at);
    return {
      d,
      id: d.id,
      sig,
      row: buildRow(d),
      rule: str(d.rule),
      service: str(labels.service_name),
      outcome: str(d.outcome) || 'none',
      at: Number.isFinite(at) ? at : -Infinity,
      atMs: nsToMs(d.at),
      search: searchText(d),
    };
  }

  /** The list's order: newest `at` first, then by id, so that equal times always sort the same. */
  function newestFirst(a, b) {
    if (a.at !== b.at) return a.at > b.at ? -1 : 1;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  }

  const TIME_WINDOWS = { '15m': 15 * 60e3, '1h': 3600e3, '6h': 6 * 3600e3, '24h': 24 * 3600e3 };

  function compileFilters() {
    const f = state.filters;
    const win = TIME_WINDOWS[f.time];
    return {
      rule: f.rule,
      service: f.service,
      outcome: f.outcome,
      since: win ? Date.now() - win : null,
      terms: f.q.toLowerCase().split(/\s+/).filter(Boolean),
    };
  }

  function matches(e, f) {
    if (f.rule && e.rule !== f.rule) return false;
    if (f.service && e.service !== f.service) return false;
    if (f.outcome && e.outcome !== f.outcome) return false;
    if (f.since !== null && !(e.atMs >= f.since)) return false;
    for (const t of f.terms) if (!e.search.includes(t)) return false;
    return true;
  }

  /** Shows the rows the filters select; `user` when the filters changed. */
  function applyFilters(user) {
    const t0 = performance.now();
    const f = compileFilters();
    let shown = 0;
    for (const e of state.order) {
      const show = matches(e, f);
      if (e.row.hidden === show) e.row.hidden = !show;
      if (show) shown++;
    }
    const total = state.order.length;
    byId('decisions-count').textContent = `${shown} of ${total}`;
    const empty = byId('decisions-empty');
    if (state.loaded) delete empty.dataset.loading;
    if (!state.loaded) {
      empty.textContent = 'Loading decisions…';
      empty.hidden = false;
    } else if (total === 0) {
      empty.textContent = 'No decisions yet. A decision is recorded each time a rule with an [action] triggers, whether the action runs or not.';
      empty.hidden = false;
    } else if (shown === 0) {
      empty.textContent = 'No decision matches these filters.';
      empty.hidden = false;
    } else empty.hidden = true;
    const dt = performance.now() - t0;
    if (user) window.homeostatTimings.lastFilter = dt;
    else window.homeostatTimings.lastRefilter = dt;
    return shown;
  }

  /** Fills a <select> with values, keeping its selection. */
  function setOptions(select, values, allLabel) {
    const current = select.value;
    const want = [...values];
    if (current && !want.includes(current)) want.push(current);
    const key = want.join('\u0000');
    if (select.dataset.key === key) return;
    select.dataset.key = key;
    select.replaceChildren(h('option', { value: '' }, allLabel), ...want.map((v) => h('option', { value: v }, v)));
    select.value = current;
  }

  function updateFilterOptions() {
    const rules = new Set();
    const services = new Set();
    for (const e of state.order) {
      rules.add(e.rule);
      if (e.service) services.add(e.service);
    }
    const sorted = (set) => [...set].sort((a, b) => a.localeCompare(b));
    setOptions(byId('filter-rule'), sorted(rules), 'All rules');
    setOptions(byId('filter-service'), sorted(services), 'All services');
  }

  /** A decision from the server, or null for anything else. */
  const asDecision = (d) => (isObj(d) && typeof d.id === 'string' ? d : null);

  /** An entry for `d`: the one shown if `d` did not change, else a new one (its row replacing the old one in place). */
  function entryFor(d) {
    const sig = signature(d);
    const old = state.entries.get(d.id);
    if (old && old.sig === sig) return old;
    const e = makeEntry(d, sig);
    if (old) {
      e.row.hidden = old.row.hidden;
      if (old.row.parentNode) old.row.replaceWith(e.row);
    }
    return e;
  }

  /**
   * Takes in the whole list (the first load, and the reconciliation every
   * FULL_RELOAD_MS): builds new rows, rebuilds changed ones, drops those the
   * server no longer has.
   */
  function applyDecisions(list) {
    const fresh = new Map();
    let order = [];
    for (const raw of arr(list)) {
      const d = asDecision(raw);
      if (!d || fresh.has(d.id)) continue;
      const e = entryFor(d);
      fresh.set(d.id, e);
      order.push(e);
    }
    // The server lists in the order decisions were first recorded; sorting
    // here gives the order that merged updates keep (see mergeDecisions).
    order.sort(newestFirst);
    if (order.length > state.limit) {
      for (const e of order.slice(state.limit)) {
        fresh.delete(e.id);
        e.row.remove(); // a changed entry's row may have taken an old one's place
      }
      order = order.slice(0, state.limit);
    }
    for (const [id, e] of state.entries) if (fresh.get(id) !== e) e.row.remove();
    state.entries = fresh;
    state.order = order;
    placeRows(order);
    afterListChange();
  }

  /** Puts the rows in the list in `order`, moving only those out of place. */
  function placeRows(order) {
    const list = byId('decisions-list');
    if (!list.firstChild) {
      const frag = document.createDocumentFragment();
      for (const e of order) frag.append(e.row);
      list.append(frag);
      return;
    }
    let cursor = list.firstElementChild;
    for (const e of order) {
      if (e.row === cursor) cursor = cursor.nextElementSibling;
      else list.insertBefore(e.row, cursor);
    }
  }

  /** Where `e` belongs in state.order (binary search: the order is sorted). */
  function insertionIndex(e) {
    let lo = 0;
    let hi = state.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (newestFirst(state.order[mid], e) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Takes in the decisions changed since the last fetch: a decision shown is
   * updated in place, a new one is inserted where it belongs, and the oldest
   * go past state.limit. Returns how many rows changed.
   */
  function mergeDecisions(list) {
    const list_ = byId('decisions-list');
    let changed = 0;
    for (const raw of arr(list)) {
      const d = asDecision(raw);
      if (!d) continue;
      const old = state.entries.get(d.id);
      const e = entryFor(d);
      if (e === old) continue;
      changed++;
      state.entries.set(d.id, e);
      const i = old ? state.order.indexOf(old) : -1;
      if (i >= 0) {
        if (old.at === e.at) {
          state.order[i] = e; // its row already took the old one's place
          continue;
        }
        state.order.splice(i, 1); // `at` changed (it should not): place it again
      }
      const at = insertionIndex(e);
      state.order.splice(at, 0, e);
      const next = state.order[at + 1];
      list_.insertBefore(e.row, next ? next.row : null);
    }
    while (state.order.length > state.limit) {
      const gone = state.order.pop();
      state.entries.delete(gone.id);
      gone.row.remove();
      changed++;
    }
    if (changed) afterListChange();
    return changed;
  }

  /** Filter choices, counts and the first-render marks, after the list changed. */
  function afterListChange() {
    const first = !state.loaded;
    state.loaded = true;
    updateFilterOptions();
    if (first) {
      const dt = applyFiltersTimed();
      window.homeostatTimings.firstRender = performance.now();
      window.homeostatTimings.lastFilter = dt;
      window.homeostatTimings.rows = state.order.length;
      document.body.dataset.decisionsLoaded = 'true';
      requestAnimationFrame(() => setTimeout(() => {
        window.homeostatTimings.firstFrame = performance.now();
      }, 0));
    } else applyFilters(false);
  }

  function applyFiltersTimed() {
    const t0 = performance.now();
    applyFilters(false);
    return performance.now() - t0;
  }

  // After the first load, a change fetches only the decisions changed after
  // the version of the list the page last saw: the server counts every change,
  // so nothing is missed and nothing is fetched twice, whatever the clocks.
  // The whole list is fetched again now and then, for what an update cannot
  // tell: decisions the server dropped to keep its last 1000.
  const FULL_RELOAD_MS = 60e3;

  function fullLoadDue() {
    if (!state.loaded || state.fullDue) return true;
    // A tab in the background reconciles when it is looked at again.
    return !document.hidden && performance.now() - state.fullAt >= FULL_RELOAD_MS;
  }

  /** The whole list; a server keeping fewer decisions than asked for gets asked for fewer. */
  async function fetchAllDecisions() {
    const asked = state.limit;
    try {
      return await request(`/api/v1/decisions?limit=${asked}`);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 400)) throw e;
      // Ask for what /api/v1/status says it keeps, or for its default.
      await statusReady;
      if (state.limit === asked) state.limit = 100;
      return request(`/api/v1/decisions?limit=${state.limit}`);
    }
  }

  // At most one fetch a second, however many changes are announced.
  const refreshDecisions = coalesced(async () => {
    const full = fullLoadDue();
    const first = !state.loaded;
    const t0 = performance.now();
    let res;
    try {
      if (full) {
        state.fullDue = false;
        res = await fetchAllDecisions();
      } else {
        res = await request(`/api/v1/decisions?limit=${state.limit}&after=${state.version}`);
      }
    } catch (e) {
      if (full) state.fullDue = true;
      showViewError('decisions', state.loaded ? 'Could not refresh the decisions (the list shows the last ones loaded)' : 'Could not load the decisions', e);
      throw e;
    }
    clearViewError('decisions');
    const body = obj(res.body);
    if (Number.isSafeInteger(body.version)) state.version = body.version;
    const t1 = performance.now();
    const received = arr(body.decisions);
    // The server answers with the whole list when the version asked for is
    // from before it restarted.
    const whole = full || body.full === true;
    let changed;
    if (whole) {
      state.fullAt = t0;
      applyDecisions(received);
      changed = received.length;
    } else changed = mergeDecisions(received);
    window.homeostatTimings.lastUpdate = {
      kind: whole ? 'full' : 'after', received: received.length, changed, chars: res.chars, ms: performance.now() - t0,
    };
    if (first) {
      // Where the first render's time went: the request (and JSON parse), then the DOM.
      window.homeostatTimings.fetchMs = t1 - t0;
      window.homeostatTimings.buildMs = performance.now() - t1;
    }
    if (state.view === 'detail') refreshDetail();
  }, 1000);

  function readFiltersFromControls() {
    state.filters = {
      rule: byId('filter-rule').value,
      service: byId('filter-service').value,
      outcome: byId('filter-outcome').value,
      time: byId('filter-time').value || 'all',
      q: byId('filter-search').value,
    };
  }

  function filtersQuery() {
    const p = new URLSearchParams();
    const f = state.filters;
    if (f.rule) p.set('rule', f.rule);
    if (f.service) p.set('service', f.service);
    if (f.outcome) p.set('outcome', f.outcome);
    if (f.time && f.time !== 'all') p.set('time', f.time);
    if (f.q) p.set('q', f.q);
    const q = p.toString();
    return q ? `?${q}` : '';
  }

  function onFilterChange() {
    readFiltersFromControls();
    applyFilters(true);
    const target = `#/decisions${filtersQuery()}`;
    if (state.view === 'decisions' && location.hash !== target) history.replaceState(null, '', target);
    byId('back-to-list').href = target;
  }

  /** Filters given in the address (a reload, a shared link) win over the controls. */
  function filtersFromParams(params) {
    if ([...params.keys()].length === 0) return;
    const f = {
      rule: params.get('rule') || '',
      service: params.get('service') || '',
      outcome: params.get('outcome') || '',
      time: params.get('time') || 'all',
      q: params.get('q') || '',
    };
    setOptions(byId('filter-rule'), f.rule ? [f.rule] : [], 'All rules');
    setOptions(byId('filter-service'), f.service ? [f.service] : [], 'All services');
    byId('filter-rule').value = f.rule;
    byId('filter-service').value = f.service;
    byId('filter-outcome').value = f.outcome;
    byId('filter-time').value = TIME_WINDOWS[f.time] ? f.time : 'all';
    byId('filter-search').value = f.q;
    readFiltersFromControls();
    if (state.loaded) updateFilterOptions();
  }

  // --------------------------------------------------------- decision detail

  function section(id, title, testid, ...children) {
    return h('section', { class: 'panel', id, testid }, h('h2', null, title), ...children);
  }

  function kvList(pairs) {
    const dl = h('dl', { class: 'kv' });
    for (const [k, v] of pairs) {
      if (v == null || v === '' || (Array.isArray(v) && v.length === 0)) continue;
      dl.append(h('dt', null, k), h('dd', null, v instanceof Node || Array.isArray(v) ? v : String(v)));
    }
    return dl;
  }

  function timeEl(ns) {
    if (Number.isNaN(nsToMs(ns))) return h('span', { class: 'dim' }, '—');
    return h('time', { datetime: new Date(nsToMs(ns)).toISOString(), title: new Date(nsToMs(ns)).toISOString() }, `${fmtDateTime(ns)} `, h('span', { class: 'dim' }, `(${fmtRelative(ns)})`));
  }

  function jsonPre(v, cls = '') {
    let text;
    try {
      text = JSON.stringify(v, null, 2);
    } catch {
      text = String(v);
    }
    return h('pre', { class: `code ${cls}`.trim() }, text === undefined ? 'null' : text);
  }

  /** Rows of objects as a table; columns in the order they first appear. */
  function objectTable(rows, testid) {
    const cols = [];
    const seen = new Set();
    for (const r of rows) for (const k of Object.keys(obj(r))) if (!seen.has(k)) { seen.add(k); cols.push(k); }
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'grid', testid },
        h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', null, rows.map((r) => h('tr', null, cols.map((c) => cell(obj(r)[c])))))));
  }

  function cell(v) {
    if (v === null || v === undefined) return h('td', { class: 'null' }, 'null');
    if (typeof v === 'number') return h('td', { class: 'num' }, fmtValue(v));
    if (typeof v === 'object') return h('td', { class: 'json' }, JSON.stringify(v));
    return h('td', null, String(v));
  }

  function stepBox(target, title, word, value) {
    return h('button', {
      type: 'button',
      class: `pstep tone-${word ? toneOf(word) : 'muted'}`,
      onclick: () => byId(target) && byId(target).scrollIntoView({ behavior: 'smooth', block: 'start' }),
    }, h('span', { class: 'pstep-title' }, title), h('span', { class: 'pstep-value' }, value));
  }

  function pathSteps(d) {
    const det = obj(d.detection);
    const p = obj(d.policy);
    const r = obj(d.reasoning);
    const run = isObj(d.run) ? d.run : null;
    const calls = arr(d.host_calls);
    const bad = calls.filter((c) => toneOf(obj(c).status) === 'bad').length;
    const choice = r.skipped != null ? 'skip' : r.decision ? str(obj(r.decision).option) : '—';
    return h('nav', { class: 'path', 'aria-label': 'Decision path' },
      stepBox('sec-rule', 'Rule', det.state === 'firing' ? 'firing' : det.state, `${str(d.rule)} · ${str(d.trigger)}`),
      stepBox('sec-detection', 'Evidence', null, `${plural(Number(det.rows) || 0, 'row')}`),
      stepBox('sec-policy', 'Policy', p.verdict, words(str(p.verdict) || '—')),
      stepBox('sec-reasoning', 'Options', null, arr(r.considered).length ? plural(arr(r.considered).length, 'considered', 'considered') : '—'),
      stepBox('sec-reasoning', 'Choice', r.skipped != null ? 'skipped' : null, choice),
      stepBox('sec-calls', 'Host calls', calls.length ? (bad ? 'error' : 'ok') : null, calls.length ? `${plural(calls.length, 'call')}${bad ? `, ${bad} failed` : ''}` : '—'),
      stepBox('sec-run', 'Run', run ? run.status : null, run ? words(str(run.status)) : 'not run'),
      stepBox('sec-outcome', 'Outcome', d.outcome, words(str(d.outcome) || 'none')));
  }

  function renderDetail(d) {
    const root = byId('decision-detail');
    const det = obj(d.detection);
    const p = obj(d.policy);
    const r = obj(d.reasoning);
    const run = isObj(d.run) ? d.run : null;
    const calls = arr(d.host_calls);
    const v = isObj(d.verification) ? d.verification : null;
    const link = traceLink(str(d.trace_id));

    keepOpen(root, () => {
      root.replaceChildren();
      root.dataset.id = str(d.id);
      root.dataset.outcome = str(d.outcome);

      // Heading.
      root.append(h('header', { class: 'detail-head', id: 'sec-rule' },
        h('h1', { tabindex: '-1', class: 'detail-title' }, h('a', { href: hrefRule(str(d.rule)) }, str(d.rule)), ' ', triggerTag(d.trigger)),
        h('div', { class: 'detail-meta' },
          h('span', null, 'decision ', h('code', { class: 'sel' }, str(d.id))),
          h('span', null, 'at ', timeEl(d.at)),
          h('span', null, `episode ${str(d.episode)}`),
          d.node ? h('span', null, 'node ', h('code', null, str(d.node))) : null,
          isObj(d.claim) ? h('span', null, `cluster episode ${str(d.claim.episode)} held by `, h('code', null, str(d.claim.holder)),
            d.claim.took_over_from ? ` (taken over from ${str(d.claim.took_over_from)})` : '') : null,
          h('span', null, 'fingerprint ', h('code', { class: 'sel' }, str(d.fingerprint))),
          d.escalates ? h('span', null, 'escalates ', h('a', { href: hrefDecision(d.escalates) }, h('code', null, str(d.escalates)))) : null),
        h('div', { class: 'chips' }, labelChips(d.labels))));

      root.append(pathSteps(d));

      const grid = h('div', { class: 'detail-grid' });
      root.append(grid);

      // Detection and evidence.
      const evidence = arr(det.evidence);
      const traces = arr(det.evidence_trace_ids);
      grid.append(section('sec-detection', 'Evidence', 'detail-detection',
        kvList([
          ['state', det.state ? badge(det.state) : null],
          ['window', `${fmtDateTime(det.window_start)} → ${fmtClock(det.window_end)}`],
          ['rows returned', str(det.rows)],
          ['matching since', det.since ? timeEl(det.since) : null],
          ['values', Object.keys(obj(det.values)).length ? h('span', { class: 'mono' }, fmtKV(det.values)) : null],
          ['evidence traces', traces.length ? traces.map((t) => {
            const href = traceLink(str(t));
            return h('span', { class: 'trace-ref' }, href ? h('a', { href, target: '_blank', rel: 'noopener noreferrer' }, h('code', null, str(t))) : h('code', null, str(t)));
          }) : null],
        ]),
        h('h3', null, `Evidence rows (${evidence.length})`),
        evidence.length ? objectTable(evidence, 'detail-evidence') : h('table', { class: 'grid', testid: 'detail-evidence' }, h('tbody')),
        evidence.length ? null : h('p', { class: 'dim' }, 'No evidence rows were kept.'),
        h('h3', null, 'SQL'),
        h('pre', { class: 'code sql', testid: 'detail-sql' }, str(det.sql))));

      // Policy.
      const checks = arr(p.checks);
      const ap = isObj(p.approval) ? p.approval : null;
      const policy = section('sec-policy', 'Policy', 'detail-policy',
        h('p', { class: 'verdict' }, badge(p.verdict, { testid: 'detail-verdict' }), ' ', h('span', null, str(p.reason)), p.dry_run ? [' ', tag('dry run', 'tag-info')] : null),
        checks.length ? h('div', { class: 'table-wrap' }, h('table', { class: 'grid checks' },
          h('thead', null, h('tr', null, h('th', null, 'check'), h('th', null, 'result'), h('th', null, 'detail'))),
          h('tbody', null, checks.map((c) => h('tr', null,
            h('td', null, str(obj(c).policy)),
            h('td', null, badge(obj(c).passed ? 'passed' : 'failed')),
            h('td', null, str(obj(c).detail))))))) : h('p', { class: 'dim' }, 'No policy checks recorded.'),
        kvList([['decided at', p.decided_at ? timeEl(p.decided_at) : null]]));
      if (ap) {
        const answered = ap.answered_at != null;
        policy.append(h('h3', null, 'Approval'), kvList([
          ['requested', timeEl(ap.requested_at)],
          ['expires', timeEl(ap.expires_at)],
          ['answer', answered ? badge(ap.approved ? 'approved' : 'denied') : badge('pending')],
          ['answered', answered ? timeEl(ap.answered_at) : null],
          ['by', ap.by],
          ['comment', ap.comment],
        ]));
        if (p.verdict === 'awaiting_approval') policy.append(approvalControls(d, 'detail-'));
      }
      grid.append(policy);

      // Reasoning.
      const considered = arr(r.considered);
      const chosen = r.decision ? str(obj(r.decision).option) : null;
      const exp = isObj(r.expectation) ? r.expectation : null;
      grid.append(section('sec-reasoning', 'Reasoning', 'detail-reasoning',
        considered.length ? h('ol', { class: 'options' }, considered.map((c) => {
          const isChosen = chosen !== null && str(obj(c).option) === chosen;
          return h('li', { class: isChosen ? 'chosen' : '' }, h('b', null, str(obj(c).option)), isChosen ? tag('chosen', 'tag-good') : null, h('span', { class: 'reason' }, str(obj(c).reason)));
        })) : h('p', { class: 'dim' }, run ? 'The script considered no options explicitly.' : 'Nothing was considered: the script did not run.'),
        kvList([
          ['choice', r.decision ? h('span', null, h('b', null, str(obj(r.decision).option)), ' — ', str(obj(r.decision).reason)) : null],
          ['skipped', r.skipped != null ? str(r.skipped) : null],
          ['expectation', exp ? `${str(exp.description)} within ${str(exp.within)}` : null],
        ]),
        arr(r.output).length ? [h('h3', null, 'Script output'), h('pre', { class: 'code output', testid: 'detail-output' }, arr(r.output).map(str).join('\n'))] : null));

      // Host calls.
      grid.append(section('sec-calls', `Host calls (${calls.length})`, 'detail-host-calls',
        calls.length ? h('div', { class: 'table-wrap' }, h('table', { class: 'grid calls' },
          h('thead', null, h('tr', null, ['#', 'function', 'target', 'status', 'duration', 'detail / error'].map((c) => h('th', null, c)))),
          h('tbody', null, calls.map((c) => {
            const call = obj(c);
            return h('tr', { class: `tone-row-${toneOf(call.status)}` },
              h('td', { class: 'num', title: 'attempt' }, str(call.attempt)),
              h('td', null, h('code', null, str(call.function))),
              h('td', { class: 'wrap' }, str(call.target)),
              h('td', null, badge(call.status)),
              h('td', { class: 'num', title: fmtDateTime(call.started_at) }, fmtDuration(call.duration_ns)),
              h('td', { class: 'wrap' }, call.error ? h('span', { class: 'err' }, str(call.error)) : h('code', null, fmtValue(call.detail))));
          })))) : h('p', { class: 'dim' }, run ? 'The script made no host calls.' : 'Nothing ran.')));

      // Run.
      const err = run && isObj(run.error) ? run.error : null;
      grid.append(section('sec-run', 'Run', 'detail-run',
        h('p', { class: 'verdict' }, badge(run ? run.status : 'none', { testid: 'detail-run-status' }),
          run ? null : h('span', { class: 'dim' }, ' the action did not run')),
        run ? kvList([
          ['script', h('code', null, str(run.script))],
          ['started', timeEl(run.started_at)],
          ['ended', run.ended_at ? timeEl(run.ended_at) : null],
          ['took', run.ended_at ? fmtDuration(Number(run.ended_at) - Number(run.started_at)) : null],
          ['attempts', str(run.attempts)],
          ['operations', str(run.operations)],
          ['value', run.value !== undefined && run.value !== null ? h('code', null, fmtValue(run.value)) : null],
        ]) : null,
        err ? h('div', { class: 'error-box', testid: 'detail-run-error' }, h('b', null, str(err.kind)), ': ', str(err.message)) : null));

      // Outcome.
      grid.append(section('sec-outcome', 'Outcome', 'detail-outcome-section',
        h('p', { class: 'verdict' }, badge(d.outcome, { testid: 'detail-outcome' })),
        v ? kvList([
          ['expected', str(v.expected)],
          ['deadline', timeEl(v.deadline)],
          ['checked', v.checked_at ? timeEl(v.checked_at) : 'not yet'],
          ['resolved', v.resolved_at ? timeEl(v.resolved_at) : null],
          ['escalation', v.escalation ? h('a', { href: hrefDecision(v.escalation) }, h('code', null, str(v.escalation))) : null],
        ]) : h('p', { class: 'dim' }, 'Nothing to verify.')));

      // Trace.
      const spansBox = h('div', { class: 'spans', id: 'detail-spans' });
      grid.append(section('sec-trace', 'Rationale trace', 'detail-trace',
        kvList([
          ['trace id', h('code', { class: 'sel', testid: 'detail-trace-id' }, str(d.trace_id))],
          ['viewer', link ? h('a', { href: link, target: '_blank', rel: 'noopener noreferrer', testid: 'detail-trace-link' }, 'Open in trace viewer ↗') : null],
          ['updated', timeEl(d.updated_at)],
        ]),
        spansBox));
      loadSpans(d, spansBox);

      root.append(h('details', { class: 'raw', 'data-key': 'raw' }, h('summary', null, 'Raw JSON'), jsonPre(d)));
    });
    if (state.focusDetail && state.view === 'detail') {
      state.focusDetail = false;
      root.querySelector('.detail-title').focus({ preventScroll: true });
    }
  }

  /** The rationale trace's spans, from the local spans table. */
  async function loadSpans(d, box) {
    const id = str(d.trace_id);
    if (!/^[0-9a-f]{32}$/.test(id)) return;
    const cached = state.spans.get(id);
    if (cached && cached.sig === signature(d)) {
      box.replaceChildren(cached.node.cloneNode(true));
      return;
    }
    box.replaceChildren(h('p', { class: 'dim' }, 'Loading spans…'));
    const sql = `SELECT span_name, span_id, parent_span_id, start_time, duration_ns, status_code FROM spans WHERE trace_id = '${id}' ORDER BY start_time`;
    let res;
    try {
      res = obj(await api('/api/v1/query', { json: { sql } }));
    } catch (e) {
      box.replaceChildren(h('p', { class: 'dim' }, `Spans unavailable: ${e.message}`));
      return;
    }
    const cols = arr(res.columns);
    const rows = arr(res.rows).map((r) => Object.fromEntries(cols.map((c, i) => [c, arr(r)[i]])));
    let node;
    if (!rows.length) {
      node = h('p', { class: 'dim' }, 'No spans yet: they are stored as each part of the decision ends.');
    } else {
      const parent = new Map(rows.map((r) => [r.span_id, r.parent_span_id]));
      const depth = (sid) => {
        let n = 0;
        let cur = parent.get(sid);
        while (cur && parent.has(cur) && n < 20) {
          n++;
          cur = parent.get(cur);
        }
        return n;
      };
      node = h('div', { class: 'table-wrap' }, h('table', { class: 'grid spans-table' },
        h('thead', null, h('tr', null, ['span', 'span id', 'duration', 'status'].map((c) => h('th', null, c)))),
        h('tbody', null, rows.map((r) => h('tr', null,
          h('td', { class: `indent-${Math.min(depth(r.span_id), 5)}` }, str(r.span_name)),
          h('td', null, h('code', { class: 'sel' }, str(r.span_id))),
          h('td', { class: 'num' }, fmtDuration(r.duration_ns)),
          h('td', null, badge(str(r.status_code).toLowerCase() || 'unset')))))));
    }
    state.spans.set(id, { sig: signature(d), node });
    if (state.spans.size > 50) state.spans.delete(state.spans.keys().next().value);
    if (box.isConnected) box.replaceChildren(node.cloneNode(true));
  }

  function showDetailMessage(text) {
    const root = byId('decision-detail');
    root.replaceChildren(h('p', { class: 'empty' }, text));
    delete root.dataset.id;
  }

  const refreshDetail = coalesced(async () => {
    const id = state.detailId;
    if (!id) return;
    let d;
    try {
      d = await api(`/api/v1/decisions/${encodeURIComponent(id)}`);
    } catch (e) {
      if (state.detailId !== id) return;
      if (e instanceof ApiError && e.status === 404) {
        if (!state.detail) showDetailMessage(`No decision ${id}: the server keeps the last ${state.limit} decisions.`);
      } else if (!state.detail) showDetailMessage(`Cannot load decision ${id}: ${e.message}`);
      return;
    }
    if (state.detailId !== id || !isObj(d)) return;
    await statusReady;
    if (!state.detail || signature(state.detail) !== signature(d) || byId('decision-detail').dataset.id !== id) {
      state.detail = d;
      renderDetail(d);
    }
  });

  // -------------------------------------------------------------- approvals

  function approvalControls(d, prefix) {
    // Several approvals share a page: each control says which action it answers.
    const what = [str(d.rule), fmtKV(d.labels)].filter(Boolean).join(' ');
    const comment = h('input', { type: 'text', class: 'comment', placeholder: 'Comment (optional)', 'aria-label': `Comment on ${what} (optional)`, maxlength: 500 });
    const note = h('span', { class: 'answer-note', 'aria-live': 'polite' });
    const approve = h('button', { type: 'button', class: 'btn btn-approve', testid: `${prefix}approve-button`, 'aria-label': `Approve ${what}` }, 'Approve');
    const deny = h('button', { type: 'button', class: 'btn btn-deny', testid: `${prefix}deny-button`, 'aria-label': `Deny ${what}` }, 'Deny');
    const answer = async (decision) => {
      approve.disabled = true;
      deny.disabled = true;
      note.textContent = decision === 'approve' ? 'approving…' : 'denying…';
      try {
        await api(`/api/v1/approvals/${encodeURIComponent(str(d.id))}`, { json: { decision, by: 'dashboard', comment: comment.value } });
        note.textContent = decision === 'approve' ? 'approved — the action runs' : 'denied';
        const row = approve.closest('.approval-row');
        if (row) row.classList.add('answered');
      } catch (e) {
        note.textContent = e.status === 404 ? 'no longer waiting (answered or expired)' : `failed: ${e.message}`;
        note.classList.add('err');
        if (e.status !== 404) {
          approve.disabled = false;
          deny.disabled = false;
        }
      }
      refreshApprovals();
      refreshDecisions();
      if (state.view === 'detail') refreshDetail();
    };
    approve.addEventListener('click', () => answer('approve'));
    deny.addEventListener('click', () => answer('deny'));
    return h('div', { class: 'answer' }, comment, approve, deny, note);
  }

  function buildApprovalRow(d) {
    const det = obj(d.detection);
    const ap = obj(obj(d.policy).approval);
    const expires = h('span', { class: 'expires' });
    const row = h('div', { class: 'approval-row', testid: 'approval-row', data: { id: str(d.id), rule: str(d.rule) } },
      h('div', { class: 'approval-main' },
        h('div', { class: 'approval-title' },
          badge('awaiting_approval'), ' ',
          h('a', { href: hrefDecision(str(d.id)), class: 'rule-name' }, str(d.rule)), ' ',
          triggerTag(d.trigger)),
        h('div', { class: 'chips' }, labelChips(d.labels)),
        h('div', { class: 'approval-meta' },
          h('span', null, 'requested ', h('time', { title: fmtDateTime(ap.requested_at || d.at) }, fmtRelative(ap.requested_at || d.at))),
          expires,
          h('span', null, `${plural(Number(det.rows) || 0, 'row')} · `, h('span', { class: 'mono' }, fmtKV(det.values, 6)))),
        h('div', { class: 'approval-reason' }, str(obj(d.policy).reason))),
      approvalControls(d, ''));
    row._expires = expires;
    row._expiresAt = ap.expires_at;
    updateExpiry(row);
    return row;
  }

  function updateExpiry(row) {
    if (row._expiresAt) row._expires.textContent = `expires ${fmtRelative(row._expiresAt)}`;
  }

  const approvalRows = new Map();

  function applyApprovals(list) {
    const root = byId('approvals-list');
    const fresh = new Map();
    const order = [];
    for (const d of arr(list)) {
      if (!isObj(d) || typeof d.id !== 'string') continue;
      let row = approvalRows.get(d.id);
      if (!row) row = buildApprovalRow(d);
      fresh.set(d.id, row);
      order.push(row);
    }
    for (const [id, row] of approvalRows) if (!fresh.has(id)) row.remove();
    approvalRows.clear();
    for (const [id, row] of fresh) approvalRows.set(id, row);
    let cursor = root.firstElementChild;
    for (const row of order) {
      if (row === cursor) cursor = cursor.nextElementSibling;
      else root.insertBefore(row, cursor);
    }
    const n = order.length;
    const pill = byId('approvals-pill');
    // Read as "Approvals, 3 waiting", shown as a number.
    pill.replaceChildren(h('span', { class: 'sr-only' }, ', '), String(n), h('span', { class: 'sr-only' }, ' waiting'));
    pill.hidden = n === 0;
    const empty = byId('approvals-empty');
    delete empty.dataset.loading;
    empty.textContent = 'No action is waiting for approval.';
    empty.hidden = n > 0;
  }

  const refreshApprovals = coalesced(async () => {
    try {
      applyApprovals(obj(await api('/api/v1/approvals')).approvals);
    } catch (e) {
      showViewError('approvals', 'Could not load the approvals', e);
      throw e;
    }
    clearViewError('approvals');
  });

  // ------------------------------------------------------------------ rules

  const STATE_ORDER = { firing: 0, pending: 1, resolved: 2, inactive: 3 };
  /** name → card {el, parts: {head, evaluation, instances, extra}, sigs, rule}. */
  const ruleCards = new Map();
  // A rule grouping by a busy column can have thousands of instances: a card
  // shows the most urgent few, and more, INSTANCES_STEP at a time, up to
  // INSTANCES_MAX, when asked to.
  const INSTANCES_FEW = 10;
  const INSTANCES_STEP = 50;
  const INSTANCES_MAX = 200;
  /** name → how many instances its card shows, when not INSTANCES_FEW. */
  const instancesShown = new Map();
  let lastRules = null;

  function evaluationChart(evals) {
    const W = 1000;
    const H = 110;
    const L = 70;
    const R = 70;
    const T = 8;
    const B = 16;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', 'data-testid': 'rule-chart', role: 'img' });
    const n = evals.length;
    svg.append(s('title', null, `Last ${n} evaluations: duration (bars) and rows (line)`));
    svg.append(s('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' }));
    if (!n) {
      svg.append(s('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, 'no evaluation yet'));
      return svg;
    }
    const durs = evals.map((e) => Math.max(0, Number(obj(e).duration_seconds) * 1000 || 0));
    const rows = evals.map((e) => Math.max(0, Number(obj(e).rows) || 0));
    const maxD = Math.max(...durs) || 1;
    const maxR = Math.max(...rows, 1);
    const slots = Math.max(n, 60);
    const slot = (W - L - R) / slots;
    const bw = Math.max(1, slot * 0.72);
    const x0 = W - R - n * slot; // newest at the right edge
    const plotH = H - T - B;
    for (let i = 0; i < n; i++) {
      const e = obj(evals[i]);
      const failed = e.error != null;
      const hgt = failed ? plotH : Math.max(1, (durs[i] / maxD) * plotH);
      const rect = s('rect', { x: (x0 + i * slot + (slot - bw) / 2).toFixed(1), y: (H - B - hgt).toFixed(1), width: bw.toFixed(1), height: hgt.toFixed(1), class: failed ? 'bar bar-error' : 'bar' });
      rect.append(s('title', null, `${fmtDateTime(e.at)}\n${fmtDuration(durs[i] * 1e6)} · ${plural(rows[i], 'row')}${failed ? `\nerror: ${str(e.error)}` : ''}`));
      svg.append(rect);
    }
    const pts = rows.map((r, i) => `${(x0 + i * slot + slot / 2).toFixed(1)},${(H - B - (r / maxR) * plotH).toFixed(1)}`);
    svg.append(s('polyline', { points: pts.join(' '), class: 'rows-line' }));
    if (n <= 60) for (let i = 0; i < n; i++) {
      const [cx, cy] = pts[i].split(',');
      svg.append(s('circle', { cx, cy, r: 1.6, class: 'rows-dot' }));
    }
    svg.append(s('text', { x: L - 4, y: T + 8, class: 'tick-label', 'text-anchor': 'end' }, fmtDuration(maxD * 1e6)));
    svg.append(s('text', { x: L - 4, y: H - B, class: 'tick-label', 'text-anchor': 'end' }, '0'));
    svg.append(s('text', { x: W - R + 4, y: T + 8, class: 'tick-label rows-label' }, plural(maxR, 'row')));
    svg.append(s('text', { x: W - R + 4, y: H - B, class: 'tick-label rows-label' }, '0'));
    svg.append(s('text', { x: x0, y: H - 3, class: 'tick-label' }, fmtClock(obj(evals[0]).at)));
    svg.append(s('text', { x: W - R, y: H - 3, class: 'tick-label', 'text-anchor': 'end' }, fmtClock(obj(evals[n - 1]).at)));
    return svg;
  }

  // The rules view is fetched every 2 s and every evaluation changes every
  // rule (its last evaluation, each instance's `last_seen`). A card is built
  // once, in parts that are rebuilt only when what they show changed, and
  // the instances table keeps a row per instance, rebuilt only when that
  // instance changed: with a thousand instances, rebuilding whole cards kept
  // the page busy (style and layout of every row) most of the time.

  const INSTANCE_COLUMNS = ['state', 'labels', 'values', 'episode', 'since', 'fired', 'resolved', 'last seen', 'transitions'];

  /** A cell showing how long ago `ns` was; updateAgo refreshes it in place. */
  function agoCell(ns) {
    const td = h('td', { class: 'ago' });
    setAgo(td, ns);
    return td;
  }

  function setAgo(td, ns) {
    if (td._ns === ns) return;
    td._ns = ns;
    td.title = ns ? fmtDateTime(ns) : '';
    updateAgo(td);
  }

  function updateAgo(td) {
    const text = td._ns ? fmtRelative(td._ns) : '—';
    if (td.textContent !== text) td.textContent = text;
  }

  function instanceRow(inst) {
    const trans = arr(inst.transitions);
    const tr = h('tr', { class: `inst-row tone-row-${toneOf(inst.state)}`, data: { fingerprint: str(inst.fingerprint), state: str(inst.state) } },
      h('td', null, badge(inst.state)),
      h('td', { class: 'wrap' }, labelChips(inst.labels)),
      h('td', { class: 'mono wrap' }, fmtKV(inst.values, 6)),
      h('td', { class: 'num' }, str(inst.episode)),
      agoCell(inst.active_since),
      agoCell(inst.fired_at),
      agoCell(inst.resolved_at),
      agoCell(inst.last_seen),
      h('td', null, trans.length ? h('details', { 'data-key': `tr-${str(inst.fingerprint)}` }, h('summary', null, plural(trans.length, 'transition')),
        h('ol', { class: 'transitions' }, trans.map((t) => h('li', null, h('span', { class: 'dim' }, fmtClock(obj(t).at)), ' ', badge(obj(t).from), ' → ', badge(obj(t).to))))) : '—'));
    tr._lastSeen = tr.children[7];
    return tr;
  }

  /** What changes an instance's row, but for `last_seen` (new at each evaluation, updated in place). */
  function instanceSig(inst) {
    return JSON.stringify([inst.state, inst.labels, inst.values, inst.episode, inst.active_since, inst.fired_at, inst.resolved_at, inst.transitions]);
  }

  /** The instances part of a card: a table kept row by row, and what is not shown. */
  function makeInstancesPart(name) {
    const tbody = h('tbody');
    const table = h('div', { class: 'table-wrap' }, h('table', { class: 'grid' },
      h('thead', null, h('tr', null, INSTANCE_COLUMNS.map((c) => h('th', { scope: 'col' }, c)))), tbody));
    const none = h('p', { class: 'dim' }, 'No instance: the query returns no rows.');
    const more = h('div', { class: 'more' });
    return { name, box: h('div', { class: 'instances', testid: 'rule-instances' }, table, none, more), table, tbody, none, more, rows: new Map(), moreSig: null };
  }

  function updateInstances(part, rule) {
    // Firing first, then pending, resolved, inactive; within each the latest
    // to become active first, then by labels: an order that does not move
    // between two fetches.
    const all = arr(rule.instances).filter(isObj).map((inst) => ({
      inst, rank: STATE_ORDER[inst.state] ?? 9, since: Number(inst.active_since) || 0, key: fmtKV(inst.labels),
    }));
    all.sort((a, b) => a.rank - b.rank || b.since - a.since || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const sorted = all.map((x) => x.inst);
    const limit = Math.min(instancesShown.get(part.name) || INSTANCES_FEW, INSTANCES_MAX);
    const shown = sorted.slice(0, limit);
    // The server sends at most INSTANCES_MAX, and says how many there are.
    const total = Number.isSafeInteger(rule.instances_total) ? rule.instances_total : all.length;
    part.box.dataset.count = String(total);
    part.table.hidden = shown.length === 0;
    part.none.hidden = shown.length > 0;

    const fresh = new Map();
    const order = [];
    for (const inst of shown) {
      const fp = str(inst.fingerprint);
      if (fresh.has(fp)) continue;
      const sig = instanceSig(inst);
      let row = part.rows.get(fp);
      if (!row) row = { sig, tr: instanceRow(inst) };
      else if (row.sig !== sig) {
        const old = row.tr;
        row = { sig, tr: instanceRow(inst) };
        if (old.parentNode) keepOpen(part.tbody, () => old.replaceWith(row.tr));
      } else setAgo(row.tr._lastSeen, inst.last_seen);
      fresh.set(fp, row);
      order.push(row);
    }
    for (const [fp, row] of part.rows) if (fresh.get(fp) !== row) row.tr.remove();
    part.rows = fresh;
    let cursor = part.tbody.firstElementChild;
    for (const row of order) {
      if (row.tr === cursor) cursor = cursor.nextElementSibling;
      else part.tbody.insertBefore(row.tr, cursor);
    }
    // "12s ago" moves on even when nothing else does.
    for (const td of part.tbody.querySelectorAll('td.ago')) updateAgo(td);
    updateInstancesMore(part, total, shown.length, limit);
  }

  /** The line under the table: how many are not shown, and buttons to show more or fewer. */
  function updateInstancesMore(part, total, shown, limit) {
    const sig = `${total}|${shown}|${limit}`;
    if (part.moreSig === sig) return;
    part.moreSig = sig;
    const show = (n) => () => {
      if (n === INSTANCES_FEW) instancesShown.delete(part.name);
      else instancesShown.set(part.name, n);
      const card = ruleCards.get(part.name);
      if (card && card.rule) updateInstances(part, card.rule);
    };
    const hiddenCount = total - shown;
    const next = Math.min(limit + INSTANCES_STEP, INSTANCES_MAX, total);
    const ruleSql = () => str(obj(obj(ruleCards.get(part.name)).rule).sql);
    const button = (key, onclick, text) => h('button', { type: 'button', class: 'linkish', data: { focus: key }, onclick }, text);
    // Focus follows the button by what it does, not where it is: pressing
    // Enter again and again on "Show more" must not land on another button.
    const active = document.activeElement;
    const had = part.more.contains(active) ? active.dataset.focus : null;
    part.more.replaceChildren(...[
      hiddenCount > 0 ? h('p', { class: 'dim' },
        `${plural(hiddenCount, 'more instance')} (firing first, then pending, resolved, inactive). `,
        next > shown ? button('more', show(next), `Show ${next}`) : null,
        // Beyond INSTANCES_MAX, the rule's own query shows every row.
        limit >= INSTANCES_MAX ? button('sql', () => openQuery(ruleSql()), 'Run the rule’s query in the SQL console') : null) : null,
      limit > INSTANCES_FEW ? h('p', null, button('fewer', show(INSTANCES_FEW), `Show ${INSTANCES_FEW} only`)) : null,
    ].filter(Boolean));
    if (had) {
      const again = ['more', 'fewer'].reduce((found, key) => found || part.more.querySelector(`[data-focus="${key}"]`), part.more.querySelector(`[data-focus="${had}"]`));
      if (again) again.focus({ preventScroll: true });
    }
  }

  function ruleHead(rule, counts) {
    const name = str(rule.name);
    return [
      h('header', { class: 'rule-head' },
        h('h2', null, name),
        badge(rule.health === 'error' ? 'error' : 'ok', { testid: 'rule-health' }),
        ['firing', 'pending', 'resolved'].filter((st) => counts[st]).map((st) => {
          const b = badge(st, { class: 'count-badge' });
          b.textContent = `${counts[st]} ${st}`;
          return b;
        }),
        h('span', { class: 'spacer' }),
        h('a', { href: `#/decisions?rule=${encodeURIComponent(name)}`, class: 'btn btn-small' }, 'Decisions →')),
      rule.description ? h('p', { class: 'rule-desc' }, str(rule.description)) : null,
      h('div', { class: 'rule-meta' },
        ['every', 'window', 'lateness', 'for', 'keep_firing_for'].map((k) => h('span', null, h('span', { class: 'dim' }, `${words(k)} `), str(rule[k]) || '—')),
        h('span', null, h('span', { class: 'dim' }, 'action '), rule.action ? h('code', null, str(rule.action)) : 'none'),
        h('span', { class: 'file', title: str(rule.file) }, h('span', { class: 'dim' }, 'file '), h('code', null, str(rule.file)))),
      Object.keys(obj(rule.labels)).length ? h('div', { class: 'chips' }, labelChips(rule.labels)) : null,
    ];
  }

  function ruleEvaluation(rule) {
    const last = isObj(rule.last_evaluation) ? rule.last_evaluation : null;
    const evals = arr(rule.evaluations);
    return h('div', { class: 'rule-eval' },
      h('div', { class: 'last-eval' },
        h('h3', null, 'Last evaluation'),
        last ? kvList([
          ['at', h('span', { title: fmtDateTime(last.at) }, `${fmtClock(last.at)} (${fmtRelative(last.at)})`)],
          ['window', `${fmtClock(last.window_start)} → ${fmtClock(last.window_end)}`],
          ['took', fmtDuration(Number(last.duration_seconds) * 1e9)],
          ['rows', str(last.rows)],
        ]) : h('p', { class: 'dim' }, 'Not evaluated yet.'),
        last && last.error != null ? h('div', { class: 'error-box', testid: 'rule-error' }, str(last.error)) : null),
      h('figure', { class: 'chart-box' }, evaluationChart(evals),
        h('figcaption', null, h('span', { class: 'legend legend-bar' }, 'duration'), h('span', { class: 'legend legend-line' }, 'rows'), h('span', { class: 'legend legend-error' }, 'error'), h('span', { class: 'dim' }, ` last ${evals.length} evaluations`))));
  }

  function ruleExtra(rule) {
    const vanished = arr(rule.vanished);
    return [
      vanished.length ? h('details', { 'data-key': 'vanished' }, h('summary', null, `${plural(vanished.length, 'vanished instance transition')}`),
        h('ol', { class: 'transitions' }, vanished.map((ev) => {
          const t = obj(obj(ev).transition);
          return h('li', null, h('span', { class: 'dim' }, fmtDateTime(t.at)), ' ', labelChips(obj(ev).labels), ' ', badge(t.from), ' → ', badge(t.to));
        }))) : null,
      h('details', { 'data-key': 'sql' }, h('summary', null, 'SQL'), h('pre', { class: 'code sql' }, str(rule.sql))),
    ];
  }

  function makeRuleCard(name) {
    const parts = { head: h('div'), evaluation: h('div'), instances: makeInstancesPart(name), extra: h('div') };
    const el = h('article', { class: 'rule-card', testid: 'rule-card', data: { rule: name } },
      parts.head, parts.evaluation, h('h3', null, 'Instances'), parts.instances.box, parts.extra);
    return { el, parts, sigs: {}, rule: null };
  }

  /** Rebuilds `part` of a card with `build()` if `sig` differs from the last one. */
  function updatePart(card, key, sig, build) {
    if (card.sigs[key] === sig) return;
    card.sigs[key] = sig;
    const el = card.parts[key];
    keepOpen(el, () => el.replaceChildren(...[build()].flat().filter(Boolean)));
  }

  /** state → instances, from the server's counts (all instances, not only those sent). */
  function instanceCounts(rule) {
    if (isObj(rule.instance_counts)) return rule.instance_counts;
    const counts = {};
    for (const i of arr(rule.instances)) counts[obj(i).state] = (counts[obj(i).state] || 0) + 1;
    return counts;
  }

  function updateRuleCard(card, rule) {
    card.rule = rule;
    const counts = instanceCounts(rule);
    card.el.dataset.health = str(rule.health);
    card.el.classList.toggle('rule-error', rule.health === 'error');
    const settings = ['name', 'health', 'description', 'every', 'window', 'lateness', 'for', 'keep_firing_for', 'action', 'file', 'labels'].map((k) => rule[k]);
    updatePart(card, 'head', JSON.stringify([settings, counts]), () => ruleHead(rule, counts));
    // Rebuilt at every evaluation (its time, the chart); small.
    updatePart(card, 'evaluation', JSON.stringify([rule.last_evaluation, rule.evaluations]), () => ruleEvaluation(rule));
    updateInstances(card.parts.instances, rule);
    updatePart(card, 'extra', JSON.stringify([rule.vanished, rule.sql]), () => ruleExtra(rule));
  }

  function applyRules(body) {
    lastRules = body;
    const root = byId('rules-list');
    const rules = arr(obj(body).rules).filter((r) => isObj(r) && r.name != null);
    const errors = arr(obj(body).errors).map(str);
    const errList = byId('rule-errors');
    if (errList.dataset.key !== errors.join('\u0000')) {
      errList.dataset.key = errors.join('\u0000');
      errList.replaceChildren(...errors.map((e) => h('li', { class: 'error-box' }, e)));
      errList.hidden = errors.length === 0;
    }
    const fresh = new Map();
    for (const rule of rules) {
      const name = str(rule.name);
      if (fresh.has(name)) continue;
      const card = ruleCards.get(name) || makeRuleCard(name);
      updateRuleCard(card, rule);
      fresh.set(name, card);
    }
    for (const [name, card] of ruleCards) if (!fresh.has(name)) card.el.remove();
    ruleCards.clear();
    let cursor = root.firstElementChild;
    for (const [name, card] of fresh) {
      ruleCards.set(name, card);
      if (card.el === cursor) cursor = cursor.nextElementSibling;
      else root.insertBefore(card.el, cursor);
    }
    let firing = 0;
    let failing = 0;
    for (const r of rules) {
      if (r.health === 'error') failing++;
      firing += Number(instanceCounts(r).firing) || 0;
    }
    byId('rules-summary').textContent = `${plural(rules.length, 'rule')} · ${firing} firing · ${plural(failing, 'failing evaluation')}${errors.length ? ` · ${plural(errors.length, 'load error')}` : ''}`;
    const empty = byId('rules-empty');
    delete empty.dataset.loading;
    empty.textContent = 'No rules loaded. Add rule files to the rules folder.';
    empty.hidden = rules.length > 0;
    if (state.rulesRoute) {
      const card = ruleCards.get(state.rulesRoute);
      state.rulesRoute = null;
      if (card) {
        card.el.scrollIntoView({ block: 'start' });
        card.el.classList.add('focus');
        setTimeout(() => card.el.classList.remove('focus'), 1500);
      }
    }
  }

  const refreshRules = coalesced(async () => {
    try {
      applyRules(await api(`/api/v1/rules?instances=${INSTANCES_MAX}`));
    } catch (e) {
      showViewError('rules', lastRules ? 'Could not refresh the rules (showing the last ones loaded)' : 'Could not load the rules', e);
      throw e;
    }
    clearViewError('rules');
  });

  // ------------------------------------------------------------ SQL console

  const QUERY_KEY = 'homeostat.query';
  const QUERY_MAX_ROWS_SHOWN = 2000;
  const EXAMPLES = [
    ['spans', 'SELECT service_name, span_name, count(*) AS spans,\n       sum(CASE WHEN status_code = \'ERROR\' THEN 1 ELSE 0 END) AS errors\nFROM spans\nGROUP BY service_name, span_name\nORDER BY spans DESC\nLIMIT 50'],
    ['metrics', 'SELECT metric_name, metric_type, count(*) AS points, max(time) AS last\nFROM metrics\nGROUP BY metric_name, metric_type\nORDER BY metric_name'],
    ['logs', 'SELECT time, service_name, severity_text, body\nFROM logs\nORDER BY time DESC\nLIMIT 50'],
    ['decisions', 'SELECT *\nFROM decisions\nLIMIT 50'],
  ];

  /** Opens the SQL console with `sql` in it, not yet run. */
  function openQuery(sql) {
    byId('query-input').value = sql.trim();
    location.hash = '#/query';
  }

  async function runQuery() {
    const input = byId('query-input');
    const button = byId('query-run');
    const errBox = byId('query-error');
    const meta = byId('query-meta');
    const out = byId('query-result');
    const sql = input.value.trim();
    if (!sql || button.disabled) return;
    try {
      localStorage.setItem(QUERY_KEY, input.value);
    } catch {
      // Storage may be off; the query still runs.
    }
    button.disabled = true;
    meta.textContent = 'running…';
    errBox.hidden = true;
    const t0 = performance.now();
    try {
      const res = obj(await api('/api/v1/query', { json: { sql } }));
      const ms = performance.now() - t0;
      const cols = arr(res.columns);
      const types = arr(res.types);
      const rows = arr(res.rows);
      const shown = rows.slice(0, QUERY_MAX_ROWS_SHOWN);
      out.dataset.rows = String(rows.length);
      out.dataset.truncated = String(!!res.truncated);
      out.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { class: 'grid result' },
        h('thead', null, h('tr', null, cols.map((c, i) => h('th', { title: str(types[i]) }, str(c), types[i] ? h('span', { class: 'type' }, str(types[i])) : null)))),
        h('tbody', null, shown.map((r) => h('tr', null, cols.map((_, i) => cell(arr(r)[i]))))))));
      meta.replaceChildren();
      append(meta, [
        h('span', { testid: 'query-count' }, plural(rows.length, 'row')),
        res.truncated ? [' ', tag('truncated: the server cut the result at its max_rows', 'tag-warn')] : null,
        rows.length > shown.length ? h('span', { class: 'dim' }, ` · showing the first ${shown.length}`) : null,
        h('span', { class: 'dim' }, ` · ${Math.round(ms)} ms`),
      ]);
    } catch (e) {
      if (e.status === 401) return;
      errBox.textContent = e.message;
      errBox.hidden = false;
      meta.textContent = e.status === 504 ? 'timed out' : 'failed';
      out.replaceChildren();
      delete out.dataset.rows;
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------ navigation

  const VIEWS = ['decisions', 'detail', 'rules', 'approvals', 'query'];
  const TITLES = { decisions: 'Decisions', detail: 'Decision', rules: 'Rules', approvals: 'Approvals', query: 'SQL' };

  function setView(view) {
    if (state.view === 'decisions' && view !== 'decisions') state.listScroll = window.scrollY;
    const previous = state.view;
    state.view = view;
    for (const v of VIEWS) byId(`view-${v}`).hidden = v !== view;
    const nav = view === 'detail' ? 'decisions' : view;
    for (const a of document.querySelectorAll('.tabs a')) {
      if (a.dataset.view === nav) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = `${TITLES[view]} · Homeostat${state.status && state.status.node ? ` · ${state.status.node}` : ''}`;
    if (view === 'decisions' && previous === 'detail') requestAnimationFrame(() => window.scrollTo(0, state.listScroll));
    else if (previous !== view) window.scrollTo(0, 0);
  }

  function focusRow(id) {
    const e = state.entries.get(id);
    // After setView's scroll restoration, which waits for a frame too.
    if (e && !e.row.hidden) requestAnimationFrame(() => e.row.focus({ preventScroll: true }));
  }

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const q = raw.indexOf('?');
    const path = q >= 0 ? raw.slice(0, q) : raw;
    const params = new URLSearchParams(q >= 0 ? raw.slice(q + 1) : '');
    const parts = path.split('/').filter(Boolean).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
    return { parts, params };
  }

  function route() {
    const { parts, params } = parseHash();
    const head = parts[0] || '';
    if (head === 'decisions' && parts.length > 1) {
      const id = parts.slice(1).join('/');
      if (state.detailId !== id) {
        state.detailId = id;
        state.detail = null;
        const cached = state.entries.get(id);
        if (cached) {
          state.detail = cached.d;
          statusReady.then(() => {
            if (state.detailId === id && state.detail === cached.d) renderDetail(cached.d);
          });
        } else showDetailMessage('Loading decision…');
        // Where the keyboard (and a screen reader) goes once it is shown.
        state.focusDetail = true;
      }
      setView('detail');
      refreshDetail();
    } else if (head === 'decisions') {
      const from = state.view === 'detail' ? state.detailId : null;
      state.detailId = null;
      filtersFromParams(params);
      if (state.loaded) applyFilters(true);
      setView('decisions');
      const query = filtersQuery();
      // The address says which filters are on, also after a click on the tab.
      if (!params.toString() && query) history.replaceState(null, '', `#/decisions${query}`);
      byId('back-to-list').href = `#/decisions${query}`;
      // Back from a decision: the keyboard is where it was, on its row.
      if (from) focusRow(from);
    } else if (head === 'rules') {
      state.detailId = null;
      state.rulesRoute = parts[1] || null;
      setView('rules');
      refreshRules();
    } else if (head === 'approvals') {
      state.detailId = null;
      setView('approvals');
      refreshApprovals();
    } else if (head === 'query') {
      state.detailId = null;
      setView('query');
      byId('query-input').focus();
    } else {
      location.replace('#/decisions');
    }
  }

  // ------------------------------------------------------------ live updates

  function setLive(mode) {
    const el = byId('live');
    if (el.dataset.state === mode) return;
    el.dataset.state = mode;
    el.textContent = { live: 'live', polling: 'polling', offline: 'offline', connecting: 'connecting' }[mode] || mode;
    el.title = {
      live: 'Updates stream from the server',
      polling: 'The event stream is down: asking the server every 2 s',
      offline: 'The server does not answer',
      connecting: 'Connecting to the event stream',
    }[mode] || '';
  }

  function onDecisionsChanged() {
    refreshDecisions(); // and the open decision, once the list is in
    refreshApprovals();
  }

  function onTick() {
    // The periodic reconciliation, or a retry of a load that failed.
    if (fullLoadDue()) refreshDecisions();
    if (state.view === 'rules') refreshRules();
    if (state.filters.time !== 'all' && state.loaded) applyFilters(false);
    for (const row of approvalRows.values()) updateExpiry(row);
  }

  function startPolling() {
    if (state.pollTimer) return;
    state.pollTimer = setInterval(() => {
      onDecisionsChanged();
      onTick();
    }, 2000);
  }

  function stopPolling() {
    if (!state.pollTimer) return;
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  function connectEvents() {
    state.retryTimer = null;
    if (!('EventSource' in window)) {
      setLive('polling');
      startPolling();
      return;
    }
    const es = new EventSource('/api/v1/events');
    state.es = es;
    es.addEventListener('open', () => {
      setLive('live');
      stopPolling();
      // Changes made while the stream was down were not announced, and the
      // server may have restarted (with other decisions, another version).
      if (state.everOpened) {
        state.fullDue = true;
        loadStatus();
        onDecisionsChanged();
      }
      state.everOpened = true;
    });
    es.addEventListener('decisions', onDecisionsChanged);
    es.addEventListener('tick', (ev) => {
      if (byId('live').dataset.state !== 'live') setLive('live');
      onTick();
    });
    es.addEventListener('error', () => {
      es.close();
      if (state.es === es) state.es = null;
      setLive('polling');
      startPolling();
      // A 401 shows up here as a plain error: the next poll finds it out.
      onDecisionsChanged();
      if (!state.retryTimer) state.retryTimer = setTimeout(connectEvents, 15000);
    });
  }

  // ------------------------------------------------------------------ start

  function bind() {
    for (const id of ['filter-rule', 'filter-service', 'filter-outcome', 'filter-time']) byId(id).addEventListener('change', onFilterChange);
    byId('filter-search').addEventListener('input', onFilterChange);
    byId('filter-search').addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && byId('filter-search').value) {
        byId('filter-search').value = '';
        onFilterChange();
      }
    });
    byId('query-run').addEventListener('click', runQuery);
    byId('query-input').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        runQuery();
      }
    });
    const examples = byId('query-examples');
    examples.append(h('span', { class: 'dim' }, 'examples: '));
    for (const [name, sql] of EXAMPLES) {
      examples.append(h('button', {
        type: 'button',
        class: 'linkish',
        onclick: () => {
          byId('query-input').value = sql;
          byId('query-input').focus();
        },
      }, name));
    }
    try {
      const saved = localStorage.getItem(QUERY_KEY);
      if (saved) byId('query-input').value = saved;
    } catch {
      // No storage: start empty.
    }
    document.addEventListener('keydown', onShortcut);
    window.addEventListener('hashchange', route);
  }

  /** True when keys typed in `el` are text: shortcuts leave them alone. */
  function isTyping(el) {
    return el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement || el instanceof HTMLSelectElement ||
      (el instanceof HTMLElement && el.isContentEditable);
  }

  /** "/" focuses the decisions search; Esc goes from a decision back to the list. */
  function onShortcut(ev) {
    if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing || isTyping(ev.target)) return;
    if (ev.key === '/' && state.view === 'decisions') {
      ev.preventDefault();
      byId('filter-search').focus();
      byId('filter-search').select();
    } else if (ev.key === 'Escape' && state.view === 'detail') {
      ev.preventDefault();
      location.hash = byId('back-to-list').getAttribute('href');
    }
  }

  function start() {
    bind();
    route();
    loadStatus();
    refreshDecisions();
    refreshApprovals();
    connectEvents();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
