// @ts-check
// The console page: sign-in, the instance list and the instance page, kept
// live by one EventSource at a time. Everything shown is put in with
// textContent (never HTML), so no value from the database can run as code.
import { awaitedSignal, buildModel, cut, draw, iterationOf, kindLabel, layout, paint, seconds, summary } from './graph.js';

/**
 * @typedef {import('./graph.js').DfNode} DfNode
 * @typedef {{ id: string, label: string | null, status: string, submitter: string, created_at: string, updated_at: string,
 *   completed_at: string | null, output: string | null, output_cut: boolean, root_node?: string }} Instance
 * @typedef {{ signed_in: boolean, token_enabled: boolean, default_database: string, databases: string[] | null,
 *   kind?: 'role' | 'operator', role?: string, database?: string, sees_all?: boolean, csrf?: string }} SessionInfo
 */

const STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'];
const FINISHED = ['completed', 'failed', 'cancelled'];

/** @type {{ session: SessionInfo | null, source: EventSource | null, timers: number[], cleanups: (() => void)[], view: number }} */
const state = { session: null, source: null, timers: [], cleanups: [], view: 0 };

// ---- DOM

/**
 * @param {string} tag
 * @param {Record<string, any>} [attrs] class, text, on (events), dataset, and attributes
 * @param {(Node | string | null | undefined | false)[]} children
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = String(v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

/** @param {string} id @returns {HTMLElement} */
const byId = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** @param {string} status */
function pill(status) {
  return h('span', { class: `pill st-${status}`, 'data-status': status, text: status });
}

/** @param {string} text @param {'ok' | 'error'} [kind] */
function toast(text, kind = 'ok') {
  const box = byId('toasts');
  const t = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status', text });
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

// ---- time

/** @param {number} n */
const two = (n) => String(n).padStart(2, '0');
/** @param {string | null | undefined} iso */
function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}
/** @param {number} ms */
function duration(ms) {
  if (ms < 0) ms = 0;
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`;
  return seconds(Math.round(ms / 1000));
}
/** @param {Instance} i */
const finishedAt = (i) => i.completed_at ?? (FINISHED.includes(i.status) ? i.updated_at : null);
/** @param {Instance} i */
const runTime = (i) => duration(new Date(finishedAt(i) ?? Date.now()).getTime() - new Date(i.created_at).getTime());

// ---- API

class ApiError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * @param {string} path relative to api/
 * @param {{ method?: string, body?: unknown }} [opts]
 * @returns {Promise<any>}
 */
async function api(path, opts = {}) {
  const method = opts.method ?? 'GET';
  /** @type {Record<string, string>} */
  const headers = { accept: 'application/json' };
  if (method !== 'GET') {
    headers['content-type'] = 'application/json';
    if (state.session?.csrf) headers['x-csrf-token'] = state.session.csrf;
  }
  let res;
  try {
    res = await fetch(`api/${path}`, { method, headers, credentials: 'same-origin', ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}) });
  } catch (err) {
    throw new ApiError(0, `the console is unreachable (${/** @type {Error} */ (err).message})`);
  }
  const data = await res.json().catch(() => ({}));
  if (res.status === 401 && path !== 'login' && state.session?.signed_in) {
    void boot('Your session ended: sign in again.');
    throw new ApiError(401, data.error ?? 'signed out');
  }
  if (!res.ok) throw new ApiError(res.status, data.error ?? res.statusText);
  return data;
}

// ---- live

/** @param {'live' | 'reconnecting' | 'off'} s */
function liveState(s) {
  const dot = document.getElementById('live');
  if (!dot) return;
  dot.dataset.state = s;
  dot.title = s === 'live' ? 'Live: updates arrive as the workflows run' : s === 'reconnecting' ? 'Reconnecting…' : 'Not live';
  dot.textContent = s === 'live' ? 'live' : s === 'reconnecting' ? 'reconnecting' : 'offline';
}

function closeLive() {
  state.source?.close();
  state.source = null;
  liveState('off');
}

/** One EventSource for the page: opening another closes the last. @param {string} url @param {Record<string, (data: any) => void>} on */
function live(url, on) {
  closeLive();
  const es = new EventSource(url);
  state.source = es;
  es.addEventListener('open', () => liveState('live'));
  es.addEventListener('error', () => {
    if (state.source !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      liveState('off');
      // Refused (signed out, expired): find out which.
      void api('session').then((s) => {
        if (!s.signed_in) void boot('Your session ended: sign in again.');
      }, () => undefined);
    } else liveState('reconnecting');
  });
  es.addEventListener('signedout', () => {
    closeLive();
    void boot('Your session ended: sign in again.');
  });
  for (const [event, fn] of Object.entries(on)) {
    es.addEventListener(event, (e) => {
      if (state.source === es) fn(JSON.parse(/** @type {MessageEvent} */ (e).data));
    });
  }
}

// ---- shell

function clearView() {
  closeLive();
  document.getElementById('toasts')?.replaceChildren();
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  for (const c of state.cleanups) c();
  state.cleanups = [];
  state.view++;
}

/** @param {string} [message] */
async function boot(message) {
  clearView();
  try {
    state.session = await api('session');
  } catch (err) {
    document.body.replaceChildren(h('main', { class: 'fatal' }, h('p', { text: /** @type {Error} */ (err).message })), h('div', { id: 'toasts', class: 'toasts' }));
    return;
  }
  if (!state.session?.signed_in) signIn(message);
  else {
    shell();
    route();
  }
}

function shell() {
  const s = /** @type {SessionInfo} */ (state.session);
  const header = h(
    'header',
    { class: 'top' },
    h('a', { class: 'brand', href: '#/' }, h('span', { class: 'logo', 'aria-hidden': 'true' }), h('span', { text: 'pg-durable-proxy' }), h('span', { class: 'muted', text: 'console' })),
    h('nav', {}, h('a', { href: '#/', text: 'Instances' })),
    h(
      'div',
      { class: 'who' },
      h('span', { id: 'live', class: 'live', 'data-state': 'off', text: 'offline' }),
      h('span', { class: 'chip' }, h('span', { class: 'k', text: 'database' }), h('b', { text: s.database ?? '' })),
      s.kind === 'operator'
        ? h('span', { class: 'chip operator', title: 'Signed in with the operator token: every role\u2019s workflows' }, h('b', { text: 'operator' }))
        : h('span', { class: 'chip', title: s.sees_all ? 'This role sees every role\u2019s workflows' : 'You see your own workflows' }, h('span', { class: 'k', text: 'role' }), h('b', { text: s.role ?? '' })),
      h('button', { class: 'ghost', id: 'signout', type: 'button', text: 'Sign out', on: { click: signOut } }),
    ),
  );
  document.body.replaceChildren(header, h('main', { id: 'main' }), h('div', { id: 'toasts', class: 'toasts', 'aria-live': 'polite' }));
}

async function signOut() {
  try {
    await api('logout', { method: 'POST', body: {} });
  } catch {
    // signed out either way
  }
  state.session = null;
  void boot();
}

/** @param {string} [message] */
function signIn(message) {
  const s = /** @type {SessionInfo} */ (state.session);
  let mode = 'role';
  const err = h('p', { class: 'error', role: 'alert', id: 'signin-error', text: message ?? '' });
  const dbList = s.databases ? h('datalist', { id: 'dbs' }, ...s.databases.map((d) => h('option', { value: d }))) : null;
  const database = h('input', { name: 'database', id: 'database', value: s.default_database, required: true, autocomplete: 'off', spellcheck: 'false', ...(dbList ? { list: 'dbs' } : {}) });
  const role = h('input', { name: 'role', id: 'role', autocomplete: 'username', spellcheck: 'false', required: true, autofocus: true });
  const password = h('input', { name: 'password', id: 'password', type: 'password', autocomplete: 'current-password' });
  const token = h('input', { name: 'token', id: 'token', type: 'password', autocomplete: 'off' });
  const roleFields = h('div', { class: 'fields' }, h('label', { for: 'role', text: 'Role' }), role, h('label', { for: 'password', text: 'Password' }), password);
  const tokenFields = h('div', { class: 'fields', hidden: true }, h('label', { for: 'token', text: 'Operator token' }), token);
  const hint = h('p', { class: 'hint', text: 'PostgreSQL checks the password. The console then reads as this role, through row-level security: you see your own workflows.' });
  /** @param {string} m */
  const setMode = (m) => {
    mode = m;
    roleFields.hidden = m !== 'role';
    tokenFields.hidden = m !== 'token';
    role.toggleAttribute('required', m === 'role');
    token.toggleAttribute('required', m === 'token');
    for (const t of tabs.querySelectorAll('button')) t.setAttribute('aria-selected', String(/** @type {HTMLElement} */ (t).dataset.mode === m));
    hint.textContent =
      m === 'role'
        ? 'PostgreSQL checks the password. The console then reads as this role, through row-level security: you see your own workflows.'
        : 'The operator token sees and acts on every role\u2019s workflows, as the executor.';
  };
  const tabs = h(
    'div',
    { class: 'tabs', role: 'tablist' },
    h('button', { type: 'button', role: 'tab', 'data-mode': 'role', 'aria-selected': 'true', text: 'PostgreSQL role', on: { click: () => setMode('role') } }),
    s.token_enabled ? h('button', { type: 'button', role: 'tab', 'data-mode': 'token', 'aria-selected': 'false', text: 'Operator token', on: { click: () => setMode('token') } }) : null,
  );
  const submit = h('button', { class: 'primary', type: 'submit', id: 'signin', text: 'Sign in' });
  const form = h(
    'form',
    {
      class: 'card signin-card',
      on: {
        submit: async (/** @type {Event} */ ev) => {
          ev.preventDefault();
          err.textContent = '';
          submit.setAttribute('disabled', '');
          const body =
            mode === 'token'
              ? { database: /** @type {HTMLInputElement} */ (database).value, token: /** @type {HTMLInputElement} */ (token).value }
              : { database: /** @type {HTMLInputElement} */ (database).value, role: /** @type {HTMLInputElement} */ (role).value, password: /** @type {HTMLInputElement} */ (password).value };
          try {
            state.session = await api('login', { method: 'POST', body });
            shell();
            route();
          } catch (e) {
            err.textContent = /** @type {Error} */ (e).message;
            /** @type {HTMLInputElement} */ (password).value = '';
          } finally {
            submit.removeAttribute('disabled');
          }
        },
      },
    },
    h('div', { class: 'brand big' }, h('span', { class: 'logo', 'aria-hidden': 'true' }), h('span', { text: 'pg-durable-proxy' })),
    h('p', { class: 'sub', text: 'Durable workflow console' }),
    tabs,
    h('div', { class: 'fields' }, h('label', { for: 'database', text: 'Database' }), database, dbList),
    roleFields,
    tokenFields,
    submit,
    err,
    hint,
  );
  document.body.replaceChildren(h('main', { class: 'signin' }, form), h('div', { id: 'toasts', class: 'toasts' }));
  (/** @type {HTMLInputElement} */ (role)).focus();
}

// ---- routing

function route() {
  if (!state.session?.signed_in) return;
  clearView();
  const hash = location.hash.replace(/^#/, '') || '/';
  const m = /^\/instances\/([0-9a-f]{8})$/.exec(hash);
  if (m) void instancePage(/** @type {string} */ (m[1]));
  else void listPage(new URLSearchParams(hash.split('?')[1] ?? ''));
}

window.addEventListener('hashchange', route);

// ---- the list

/** @param {URLSearchParams} params */
async function listPage(params) {
  const view = state.view;
  const s = /** @type {SessionInfo} */ (state.session);
  const filters = { status: params.get('status') ?? '', label: params.get('label') ?? '', role: params.get('role') ?? '' };
  const main = byId('main');
  const status = h('select', { id: 'f-status', name: 'status' }, h('option', { value: '', text: 'All statuses' }), ...STATUSES.map((x) => h('option', { value: x, text: x, selected: x === filters.status })));
  const label = h('input', { id: 'f-label', name: 'label', placeholder: 'Label', value: filters.label, spellcheck: 'false' });
  const role = h('input', { id: 'f-role', name: 'role', placeholder: 'Submitter role', value: filters.role, spellcheck: 'false' });
  const apply = () => {
    const q = new URLSearchParams();
    for (const [k, el] of /** @type {[string, HTMLElement][]} */ ([['status', status], ['label', label], ['role', role]])) {
      const v = /** @type {HTMLInputElement} */ (el).value.trim();
      if (v) q.set(k, v);
    }
    const next = `#/${q.size ? `?${q}` : ''}`;
    if (location.hash === next) route();
    else location.hash = next;
  };
  const toolbar = h(
    'form',
    { class: 'toolbar', on: { submit: (/** @type {Event} */ e) => (e.preventDefault(), apply()) } },
    h('label', { class: 'sr', for: 'f-status', text: 'Status' }),
    status,
    h('label', { class: 'sr', for: 'f-label', text: 'Label' }),
    label,
    s.sees_all ? h('label', { class: 'sr', for: 'f-role', text: 'Submitter' }) : null,
    s.sees_all ? role : null,
    h('button', { type: 'submit', class: 'primary', text: 'Filter' }),
    h('button', { type: 'button', class: 'ghost', text: 'Clear', on: { click: () => (location.hash = '#/') } }),
  );
  status.addEventListener('change', apply);
  const tbody = h('tbody', { id: 'instances' });
  const table = h(
    'table',
    { class: 'instances' },
    h('thead', {}, h('tr', {}, ...['Instance', 'Status', 'Label', 'Submitter', 'Created', 'Finished', 'Duration'].map((t) => h('th', { text: t })))),
    tbody,
  );
  const more = h('button', { class: 'ghost more', type: 'button', id: 'more', text: 'Load more', hidden: true });
  const empty = h('div', { class: 'empty', hidden: true }, h('p', { text: 'No workflow instances here yet.' }), h('p', { class: 'muted' }, 'Start one with ', h('code', { text: "SELECT df.start('SELECT 1' ~> 'SELECT 2', 'my-label');" })));
  main.replaceChildren(
    h('section', { class: 'view' }, h('div', { class: 'heading' }, h('h1', { text: 'Workflow instances' }), h('p', { class: 'muted', text: s.sees_all ? 'Every role\u2019s workflows in this database.' : `Workflows started by ${s.role}.` })), toolbar, h('div', { class: 'card table-card' }, table, empty, more)),
  );
  /** @type {Map<string, HTMLElement>} */
  const rows = new Map();
  /** @type {string | null} */
  let cursor = null;
  /** @param {Instance} i */
  const cells = (i) => [
    h('td', {}, h('a', { href: `#/instances/${i.id}`, class: 'mono', text: i.id })),
    h('td', {}, pill(i.status)),
    h('td', { class: i.label ? '' : 'muted', text: i.label ?? '—', title: i.label ?? '' }),
    h('td', { text: i.submitter }),
    h('td', { class: 'nowrap', text: when(i.created_at) }),
    h('td', { class: 'nowrap', text: when(finishedAt(i)) }),
    h('td', { class: 'nowrap duration', text: runTime(i) }),
  ];
  /** @param {Instance} i */
  const put = (i, where = 'end') => {
    const known = rows.get(i.id);
    const tr = h('tr', { 'data-id': i.id, 'data-status': i.status, 'data-created': i.created_at, 'data-finished': finishedAt(i) ?? '' }, ...cells(i));
    tr.addEventListener('click', (e) => {
      if (!(/** @type {HTMLElement} */ (e.target).closest('a'))) location.hash = `#/instances/${i.id}`;
    });
    if (known) {
      known.replaceWith(tr);
      if (known.dataset.status !== i.status) tr.classList.add('flash');
    } else if (where === 'start') {
      tbody.prepend(tr);
      tr.classList.add('flash');
    } else tbody.append(tr);
    rows.set(i.id, tr);
    empty.hidden = rows.size > 0;
  };
  const load = async () => {
    const q = new URLSearchParams({ limit: '50' });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (cursor) q.set('cursor', cursor);
    more.setAttribute('disabled', '');
    try {
      const page = await api(`instances?${q}`);
      if (view !== state.view) return;
      for (const i of page.instances) put(i);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      empty.hidden = rows.size > 0;
    } catch (e) {
      toast(/** @type {Error} */ (e).message, 'error');
    } finally {
      more.removeAttribute('disabled');
    }
  };
  more.addEventListener('click', () => void load());
  await load();
  if (view !== state.view) return;
  /** @param {Instance} i */
  const matches = (i) => (!filters.status || i.status === filters.status) && (!filters.label || i.label === filters.label) && (!filters.role || i.submitter === filters.role);
  live('api/events', {
    instances: (/** @type {{ instances: Instance[] }} */ d) => {
      for (const i of d.instances.sort((a, b) => a.created_at.localeCompare(b.created_at))) {
        if (rows.has(i.id)) {
          if (matches(i)) put(i);
          else {
            rows.get(i.id)?.remove();
            rows.delete(i.id);
          }
        } else if (matches(i)) {
          const newest = tbody.firstElementChild instanceof HTMLElement ? tbody.firstElementChild.dataset.created ?? '' : '';
          if (i.created_at >= newest) put(i, 'start');
        }
      }
    },
  });
  // Running instances' durations tick.
  state.timers.push(
    window.setInterval(() => {
      for (const tr of rows.values()) {
        if (tr.dataset.finished) continue;
        const cell = tr.querySelector('td.duration');
        if (cell) cell.textContent = duration(Date.now() - new Date(tr.dataset.created ?? '').getTime());
      }
    }, 1000),
  );
}

// ---- an instance

/** @param {string} id */
async function instancePage(id) {
  const view = state.view;
  const main = byId('main');
  main.replaceChildren(h('section', { class: 'view' }, h('p', { class: 'muted', text: 'Loading…' })));
  /** @type {{ instance: Instance & { root_node: string }, nodes: DfNode[], explain: string }} */
  let detail;
  try {
    detail = await api(`instances/${id}`);
  } catch (e) {
    if (view !== state.view) return;
    main.replaceChildren(h('section', { class: 'view' }, h('a', { href: '#/', class: 'back', text: '← Instances' }), h('div', { class: 'card notice' }, h('p', { text: /** @type {Error} */ (e).message }))));
    return;
  }
  if (view !== state.view) return;
  /** @type {Map<string, DfNode>} */
  const nodes = new Map(detail.nodes.map((n) => [n.id, n]));
  let instance = detail.instance;
  /** @type {string | null} */
  let selected = null;

  // Header: what it is, how it stands, what one can do.
  const title = h('h1', {}, h('span', { class: 'title-label' }), h('span', { class: 'mono id', text: id }));
  const statusSlot = h('span', { class: 'status-slot' });
  const meta = h('dl', { class: 'meta' });
  const output = h('div', { class: 'output', hidden: true });
  const reason = h('input', { id: 'cancel-reason', placeholder: 'Reason (optional)', maxlength: '1000' });
  const cancelBox = h(
    'div',
    { class: 'confirm', hidden: true },
    reason,
    h('button', { type: 'button', class: 'danger', id: 'cancel-confirm', text: 'Cancel instance', on: { click: () => void cancel() } }),
    h('button', { type: 'button', class: 'ghost', text: 'Keep it running', on: { click: () => (cancelBox.hidden = true) } }),
  );
  const cancelButton = h('button', { type: 'button', class: 'ghost danger-text', id: 'cancel', text: 'Cancel…', on: { click: () => ((cancelBox.hidden = false), reason.focus()) } });
  const signalName = h('input', { id: 'signal-name', placeholder: 'signal name', list: 'awaited', required: true, spellcheck: 'false', maxlength: '200' });
  const awaited = h('datalist', { id: 'awaited' });
  const payload = /** @type {HTMLTextAreaElement} */ (h('textarea', { id: 'signal-data', rows: '2', spellcheck: 'false' }));
  payload.value = '{}';
  const sendButton = h('button', { type: 'submit', class: 'primary', id: 'signal-send', text: 'Send signal' });
  const signalForm = h(
    'form',
    { class: 'signal', on: { submit: (/** @type {Event} */ e) => (e.preventDefault(), void signal()) } },
    h('div', { class: 'signal-row' }, h('label', { for: 'signal-name', text: 'Signal' }), signalName, awaited, sendButton),
    h('label', { for: 'signal-data', class: 'sr', text: 'Payload (JSON)' }),
    payload,
  );
  const actions = h('div', { class: 'actions' }, signalForm);
  const head = h(
    'div',
    { class: 'card head' },
    h('div', { class: 'head-main' }, h('div', { class: 'title-row' }, title, statusSlot, h('span', { class: 'grow' }), cancelButton), cancelBox, meta, output),
    actions,
  );

  // The graph, the selected node, df.explain.
  const svg = /** @type {SVGSVGElement} */ (/** @type {unknown} */ (document.createElementNS('http://www.w3.org/2000/svg', 'svg')));
  svg.setAttribute('class', 'graph');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'workflow graph');
  svg.id = 'graph';
  const canvas = h('div', { class: 'canvas', id: 'canvas' }, svg);
  let scale = 1;
  let fitted = true;
  const applyScale = () => {
    const w = Number(svg.dataset.width ?? 0);
    const hgt = Number(svg.dataset.height ?? 0);
    svg.setAttribute('width', String(Math.round(w * scale)));
    svg.setAttribute('height', String(Math.round(hgt * scale)));
    zoomLabel.textContent = `${Math.round(scale * 100)}%`;
  };
  const fit = () => {
    const w = Number(svg.dataset.width ?? 0);
    const hgt = Number(svg.dataset.height ?? 0);
    if (!w) return;
    // The whole width when it fits at a readable size; a tall graph scrolls rather than shrinks past 80%.
    const room = canvas.clientWidth - 24;
    const roomH = canvas.clientHeight - 24;
    scale = Math.max(0.4, Math.min(1, room / w, Math.max(0.8, roomH / hgt)));
    fitted = true;
    applyScale();
  };
  /** @param {number} f */
  const zoom = (f) => {
    scale = Math.max(0.25, Math.min(2.5, scale * f));
    fitted = false;
    applyScale();
  };
  const zoomLabel = h('span', { class: 'zoom-label', text: '100%' });
  const legend = h(
    'ul',
    { class: 'legend', 'aria-label': 'Colours' },
    ...['completed', 'running', 'pending', 'failed', 'skipped'].map((st) => h('li', {}, h('span', { class: `swatch st-${st}` }), h('span', { text: st }))),
  );
  const graphCard = h(
    'div',
    { class: 'card graph-card' },
    h(
      'div',
      { class: 'graph-bar' },
      h('h2', { text: 'Workflow' }),
      legend,
      h(
        'div',
        { class: 'zoom' },
        h('button', { type: 'button', class: 'ghost icon', title: 'Zoom out', 'aria-label': 'Zoom out', text: '−', on: { click: () => zoom(1 / 1.2) } }),
        zoomLabel,
        h('button', { type: 'button', class: 'ghost icon', title: 'Zoom in', 'aria-label': 'Zoom in', text: '+', on: { click: () => zoom(1.2) } }),
        h('button', { type: 'button', class: 'ghost', id: 'fit', title: 'Fit to the window', text: 'Fit', on: { click: () => (fit(), canvas.scrollTo(0, 0)) } }),
      ),
    ),
    canvas,
  );
  const nodePanel = h('div', { class: 'card node-panel', id: 'node-panel' });
  const explain = h('pre', { class: 'explain', id: 'explain' });
  const explainCard = h('div', { class: 'card explain-card' }, h('h2', {}, 'df.explain'), explain);
  main.replaceChildren(
    h('section', { class: 'view instance' }, h('a', { href: '#/', class: 'back', text: '← Instances' }), head, h('div', { class: 'split' }, graphCard, h('aside', { class: 'side' }, nodePanel, explainCard))),
  );
  const onResize = () => fitted && fit();
  window.addEventListener('resize', onResize, { passive: true });
  state.cleanups.push(() => window.removeEventListener('resize', onResize));

  /** @type {import('./graph.js').Model} */
  let model;
  let drawn = false;

  const renderHead = () => {
    const lab = /** @type {HTMLElement} */ (title.querySelector('.title-label'));
    lab.textContent = instance.label ?? 'Untitled workflow';
    lab.classList.toggle('muted', !instance.label);
    statusSlot.replaceChildren(pill(instance.status));
    const items = /** @type {[string, string][]} */ ([
      ['Submitter', instance.submitter],
      ['Created', when(instance.created_at)],
      ['Finished', when(finishedAt(instance))],
      ['Duration', runTime(instance)],
    ]);
    meta.replaceChildren(...items.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v, ...(k === 'Duration' ? { class: 'duration' } : {}) })]));
    output.hidden = instance.output === null;
    output.replaceChildren(h('span', { class: 'k', text: instance.status === 'failed' ? 'Error' : instance.status === 'cancelled' ? 'Reason' : 'Output' }), h('code', { text: cut(instance.output ?? '', 400) + (instance.output_cut ? ' (cut)' : '') }));
    const done = FINISHED.includes(instance.status);
    actions.classList.toggle('finished', done);
    for (const b of [cancelButton, sendButton]) b.toggleAttribute('disabled', done);
    signalName.toggleAttribute('disabled', done);
    payload.toggleAttribute('disabled', done);
    if (done) cancelBox.hidden = true;
    const waits = [...new Set([...nodes.values()].map(awaitedSignal).filter((x) => x))];
    awaited.replaceChildren(...waits.map((w) => h('option', { value: w ?? '' })));
    const nameInput = /** @type {HTMLInputElement} */ (signalName);
    if (waits.length && !nameInput.value) nameInput.value = waits[0] ?? '';
    signalForm.dataset.awaiting = waits.join(',');
    signalName.setAttribute('placeholder', waits.length ? `waiting for “${waits[0]}”` : 'signal name');
  };

  const renderNode = () => {
    const n = selected ? nodes.get(selected) : undefined;
    if (!n) {
      nodePanel.replaceChildren(h('h2', { text: 'Node' }), h('p', { class: 'muted', text: 'Select a node in the graph to see its definition, result and timings.' }));
      return;
    }
    const rowsOut = /** @type {[string, string][]} */ ([
      ['Status', n.inferred_status === n.status ? n.status : `${n.inferred_status} (recorded: ${n.status})`],
      ['Node', n.id],
    ]);
    if (n.result_name) rowsOut.push(['Result name', `$${n.result_name}`]);
    if (n.created_at) rowsOut.push(['Created', when(n.created_at)]);
    rowsOut.push(['Updated', when(n.updated_at)]);
    if (n.type === 'LOOP' && n.iteration) rowsOut.push(['Iteration', String(n.iteration)]);
    const it = iterationOf(n);
    if (it) rowsOut.push(['Loop iteration', it]);
    if (n.wake_at) rowsOut.push(['Wakes at', when(n.wake_at)]);
    if (n.skipped_because) rowsOut.push(['Skipped', `node ${n.skipped_because} finished first`]);
    const def = definition(n);
    const res = n.result === null ? null : n.status === 'failed' ? errorText(n.result) : pretty(n.result);
    nodePanel.replaceChildren(
      ...[
      h('div', { class: 'node-title' }, h('h2', { text: nodeTitle(n) }), pill(n.inferred_status)),
      h('dl', { class: 'kv' }, ...rowsOut.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })])),
      def ? h('h3', { text: 'Definition' }) : null,
      def ? h('pre', { class: 'code', id: 'node-definition', text: def + (n.query_cut ? '\n… (cut)' : '') }) : null,
      res !== null ? h('h3', { text: n.status === 'failed' ? 'Error' : 'Result' }) : null,
      res !== null ? h('pre', { class: `code ${n.status === 'failed' ? 'error' : ''}`, id: 'node-result', text: res + (n.result_cut ? '\n… (cut)' : '') }) : null,
      ].filter((x) => x !== null),
    );
  };

  /** @param {string} df */
  const select = (df) => {
    selected = df;
    renderNode();
    if (drawn) paint(svg, model, nodes, instance.status, selected);
  };

  const redraw = async () => {
    model = buildModel([...nodes.values()], instance.root_node ?? '');
    try {
      const lay = await layout(model);
      if (view !== state.view) return;
      draw(svg, model, lay, select);
      drawn = true;
      fit();
      paint(svg, model, nodes, instance.status, selected);
    } catch (e) {
      canvas.replaceChildren(h('p', { class: 'error', text: `The graph cannot be drawn: ${/** @type {Error} */ (e).message}` }));
    }
  };

  const firstInteresting = () => {
    const all = [...nodes.values()];
    const leaf = (/** @type {DfNode} */ n) => !['THEN', 'JOIN', 'RACE', 'IF', 'LOOP'].includes(n.type);
    return (all.find((n) => leaf(n) && n.inferred_status === 'running') ?? all.find((n) => leaf(n) && n.inferred_status === 'failed') ?? all.find(leaf))?.id ?? null;
  };

  /** @param {{ instance: Instance & { root_node: string }, nodes: DfNode[], explain?: string }} d @param {boolean} full */
  const apply = (d, full) => {
    instance = { ...instance, ...d.instance };
    if (full) nodes.clear();
    for (const n of d.nodes) nodes.set(n.id, n);
    if (d.explain !== undefined) explain.textContent = d.explain;
    renderHead();
    if (selected === null) selected = firstInteresting();
    if (!full && selected && d.nodes.some((n) => n.id === selected)) renderNode();
    if (full) renderNode();
    if (drawn) paint(svg, model, nodes, instance.status, selected);
  };

  const cancel = async () => {
    try {
      const r = await api(`instances/${id}/cancel`, { method: 'POST', body: { reason: /** @type {HTMLInputElement} */ (reason).value } });
      toast(r.result);
      cancelBox.hidden = true;
    } catch (e) {
      toast(/** @type {Error} */ (e).message, 'error');
    }
  };

  const signal = async () => {
    const name = /** @type {HTMLInputElement} */ (signalName).value.trim();
    const text = payload.value.trim() || '{}';
    try {
      JSON.parse(text);
    } catch {
      toast('The payload is not valid JSON.', 'error');
      payload.focus();
      return;
    }
    try {
      await api(`instances/${id}/signal`, { method: 'POST', body: { name, data: text } });
      toast(`Signal “${name}” sent.`);
    } catch (e) {
      toast(/** @type {Error} */ (e).message, 'error');
    }
  };

  apply({ ...detail }, true);
  await redraw();
  if (view !== state.view) return;
  live(`api/events?instance=${id}`, {
    snapshot: (d) => apply(d, true),
    update: (d) => apply(d, false),
    gone: () => {
      // The server ends the stream after saying so: no reconnecting to hear it again.
      closeLive();
      toast('This instance is gone (pruned, or no longer visible to you).', 'error');
    },
    problem: (d) => toast(d.error, 'error'),
  });
  state.timers.push(
    window.setInterval(() => {
      if (FINISHED.includes(instance.status)) return;
      const dd = meta.querySelector('dd.duration');
      if (dd) dd.textContent = runTime(instance);
    }, 1000),
  );
}

/** @param {DfNode} n */
function nodeTitle(n) {
  switch (n.type) {
    case 'THEN':
      return 'Sequence (THEN)';
    case 'JOIN':
      return 'JOIN: all branches';
    case 'RACE':
      return 'RACE: first branch wins';
    case 'IF':
      return 'IF';
    case 'LOOP':
      return 'LOOP';
    default:
      return `${kindLabel(n.type)} step`;
  }
}

/** The node's definition as a person reads it. @param {DfNode} n */
function definition(n) {
  if (n.query === null) return '';
  if (n.type === 'SQL') return n.query;
  if (n.type === 'SLEEP') return `${summary(n)} (${n.query} s)`;
  return pretty(n.query);
}

/** @param {string} text */
function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** A failed node's result is its error as a JSON string. @param {string} text */
function errorText(text) {
  try {
    const v = JSON.parse(text);
    return typeof v === 'string' ? v : JSON.stringify(v, null, 2);
  } catch {
    return text;
  }
}

void boot();
