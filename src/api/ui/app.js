// The portal's shell: sign-in, navigation between pages (the URL's hash),
// and live updates (a poll every few seconds, and GET /v1/events as a long
// poll that refreshes the page as soon as something happens).
import { session, get, getAll, ApiError } from './api.js';
import { h, fill } from './dom.js';
import * as vms from './vms.js';
import * as images from './images.js';
import * as hosts from './hosts.js';
import * as queries from './queries.js';
import * as networks from './networks.js';

const PAGES = { vms, images, hosts, queries, networks };
const POLL_MS = 3000;

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const statusEl = document.getElementById('status');
const whoEl = document.getElementById('who');
const signOutBtn = document.getElementById('signout');

let current = null; // { name, page }
let pollTimer = null;
let eventsAbort = null;

// Shared state the pages read: recent events and the sampled VM counts.
export const live = {
  events: [],
  samples: JSON.parse(sessionStorage.getItem('vmgrid.samples') || '[]'),
};

let sayTimer = null;
export function say(text, kind = 'info') {
  statusEl.className = `status ${kind}`;
  statusEl.textContent = text;
  // Progress notes fade after a while; errors stay until the next message.
  if (sayTimer) clearTimeout(sayTimer);
  sayTimer = kind === 'error' ? null : setTimeout(() => { statusEl.textContent = ''; }, 8000);
}

export function report(err) {
  if (err instanceof ApiError && err.code === 'signed_out') return;
  if (err instanceof ApiError && err.status === 401) {
    signOut('Your token was refused; sign in again.');
    return;
  }
  say(err && err.message ? err.message : String(err), 'error');
}

function signInForm(message) {
  const token = h('input', {
    id: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false',
    'aria-describedby': 'token-help',
  });
  // The token input has no name attribute: even if the form were submitted
  // without this script, the token could not end up in a URL.
  const form = h('form', { class: 'card signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in to vmgrid'),
    h('label', { class: 'field', for: 'token' }, h('span', {}, 'API token'), token),
    h('small', { id: 'token-help' },
      'The token you got from `vmgrid user create` (admins: STATE/admin.token). It is kept in this tab only.'),
    h('button', { type: 'submit' }, 'Sign in'),
    message ? h('p', { class: 'error', role: 'alert' }, message) : null);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    session.token = token.value.trim();
    token.value = '';
    await start();
  });
  nav.hidden = true;
  signOutBtn.hidden = true;
  fill(whoEl);
  fill(main, form);
  token.focus();
}

function signOut(message) {
  session.token = '';
  session.user = null;
  sessionStorage.removeItem('vmgrid.samples');
  live.samples = [];
  live.events = [];
  stopLive();
  if (current && current.page.unmount) current.page.unmount();
  current = null;
  signInForm(message);
}

async function start() {
  if (!session.token) { signInForm(); return; }
  try {
    session.user = await get('/v1/whoami');
  } catch (err) {
    session.token = '';
    signInForm(err instanceof ApiError && err.status === 401 ? 'That token was not accepted.' : err.message);
    return;
  }
  nav.hidden = false;
  signOutBtn.hidden = false;
  fill(whoEl, h('span', { class: 'user' }, session.user.name), ' ', h('span', { class: 'role' }, session.user.role));
  say('');
  route();
  startLive();
}

function route() {
  if (!session.user) return;
  const name = (location.hash.replace(/^#\/?/, '') || 'vms').split('/')[0];
  const page = PAGES[name] ? name : 'vms';
  if (current && current.name === page) return;
  if (current && current.page.unmount) current.page.unmount();
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  say('');
  const root = h('section', { class: 'page', 'aria-labelledby': `${page}-title` });
  fill(main, root);
  current = { name: page, page: PAGES[page].mount(root, { live, say, report, user: session.user }) };
  document.title = `vmgrid · ${PAGES[page].title}`;
  refresh();
}

async function refresh() {
  if (!current) return;
  try {
    await sample();
    if (current && current.page.refresh) await current.page.refresh();
  } catch (err) {
    report(err);
  }
}

// Counts the caller's VMs by state, for the chart of VMs over time.
async function sample() {
  const list = await getAll('/v1/vms', 'vms');
  const counts = { t: Date.now(), total: 0, running: 0 };
  for (const v of list.vms || []) {
    counts.total++;
    if (v.state === 'running') counts.running++;
  }
  live.vms = list.vms || [];
  if (!live.samples.length) live.samples = await history(counts).catch(() => []);
  live.samples.push(counts);
  if (live.samples.length > 240) live.samples.splice(0, live.samples.length - 240);
  sessionStorage.setItem('vmgrid.samples', JSON.stringify(live.samples));
}

// The chart's past, before this page sampled anything: the durable event
// stream read backwards from the counts now (a VM's first vm.state event has
// from "" — it was created; vm.deleted removes it; running counts follow
// from/to), one point per event.
async function history(now) {
  const r = await get('/v1/events?last=1000');
  const points = [];
  let total = now.total;
  let running = now.running;
  const events = (r.events || []).filter((e) => e.time_ms < now.t);
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i];
    const d = e.data || {};
    points.push({ t: e.time_ms, total, running });
    if (e.kind === 'vm.deleted') {
      total++;
      if (d.from === 'running') running++;
    } else if (e.kind === 'vm.state' || e.kind === 'vm.failed') {
      if (d.from === '') total--;
      if (d.to === 'running' && d.from !== 'running') running--;
      if (d.from === 'running' && d.to !== 'running') running++;
    }
  }
  if (events.length) points.push({ t: events[0].time_ms - 1, total: Math.max(total, 0), running: Math.max(running, 0) });
  return points.reverse().slice(-200);
}

function startLive() {
  stopLive();
  pollTimer = setInterval(refresh, POLL_MS);
  followEvents();
}

function stopLive() {
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = null;
}

// GET /v1/events: first the newest few, then a long poll from the cursor.
async function followEvents() {
  const ctl = new AbortController();
  eventsAbort = ctl;
  let after = null;
  while (!ctl.signal.aborted) {
    try {
      const q = after === null ? 'last=20' : `after=${after}&follow=1&wait=25`;
      const r = await get(`/v1/events?${q}`, { signal: ctl.signal });
      after = r.next;
      if (r.events && r.events.length) {
        live.events = live.events.concat(r.events).slice(-50);
        refresh();
      }
    } catch (err) {
      if (ctl.signal.aborted) return;
      if (err instanceof ApiError && err.status === 401) { report(err); return; }
      // Over the follower limit or a network hiccup: the poll still runs.
      await new Promise((r) => setTimeout(r, 5000));
    }
  }
}

window.addEventListener('hashchange', route);
signOutBtn.addEventListener('click', () => signOut());
start();
