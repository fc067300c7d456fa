// VMs: the list (state, host, image, age) with actions, the create form, a
// chart of VMs over time, recent events, and a VM's details: run a command
// (exec), its console log, and live migration.
import { get, getAll, post, del, awaitOperation } from './api.js';
import { h, fill, field, table, age, bytes } from './dom.js';
import { lineChart } from './chart.js';

export const title = 'VMs';

const TRANSITIONAL = new Set(['creating', 'stopping', 'checkpointing', 'resuming', 'deleting', 'migrating']);

export function mount(root, ctx) {
  const listEl = h('div', { id: 'vm-list', 'aria-live': 'polite' });
  const chartEl = h('div', { class: 'chart', id: 'vm-chart' });
  const eventsEl = h('ol', { class: 'events', id: 'vm-events' });
  const detailEl = h('div', { id: 'vm-detail' });
  let selected = null;
  const armed = new Map(); // VM id -> time its delete was armed

  // --- create form ---
  const imageSel = h('select', { id: 'vm-image', required: true });
  const nameIn = h('input', { id: 'vm-name', placeholder: 'optional', autocomplete: 'off' });
  const vcpusIn = h('input', { id: 'vm-vcpus', type: 'number', min: 1, max: 64, value: 1 });
  const memIn = h('input', { id: 'vm-memory', type: 'number', min: 64, step: 64, value: 256 });
  const startSel = h('select', { id: 'vm-start' }, h('option', { value: 'boot' }, 'boot'), h('option', { value: 'resume' }, 'resume (post-boot checkpoint)'));
  const diskSel = h('select', { id: 'vm-disk' }, h('option', { value: 'clone' }, 'clone'), h('option', { value: 'persistent' }, 'persistent'));
  const netsSel = h('select', { id: 'vm-nets', multiple: true, size: 3 });
  const form = h('form', { class: 'card form-grid', 'aria-labelledby': 'vm-create-title' },
    h('h2', { id: 'vm-create-title' }, 'Create a VM'),
    h('label', { class: 'field', for: 'vm-name' }, h('span', {}, 'Name'), nameIn),
    h('label', { class: 'field', for: 'vm-image' }, h('span', {}, 'Image'), imageSel),
    h('label', { class: 'field', for: 'vm-vcpus' }, h('span', {}, 'vCPUs'), vcpusIn),
    h('label', { class: 'field', for: 'vm-memory' }, h('span', {}, 'Memory (MiB)'), memIn),
    h('label', { class: 'field', for: 'vm-start' }, h('span', {}, 'Start'), startSel),
    h('label', { class: 'field', for: 'vm-disk' }, h('span', {}, 'Disk'), diskSel),
    h('label', { class: 'field', for: 'vm-nets' }, h('span', {}, 'Networks (--net)'), netsSel),
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'vm-create' }, 'Create VM')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = {
      image: imageSel.value,
      vcpus: Number(vcpusIn.value) || 1,
      memory_mb: Number(memIn.value) || 256,
      start: startSel.value,
      disk: diskSel.value,
    };
    if (nameIn.value.trim()) body.name = nameIn.value.trim();
    const nets = [...netsSel.selectedOptions].map((o) => o.value);
    if (nets.length) body.nets = nets;
    try {
      const vm = await post('/v1/vms', body);
      ctx.say(`Creating ${vm.name}…`);
      nameIn.value = '';
      await refresh();
    } catch (err) { ctx.report(err); }
  });

  fill(root,
    h('h1', { id: 'vms-title' }, 'Virtual machines'),
    h('div', { class: 'grid2' },
      form,
      h('div', { class: 'card' }, h('h2', {}, 'VMs over time'), chartEl,
        h('h2', {}, 'Recent events'), eventsEl)),
    h('div', { class: 'card' }, h('h2', {}, 'Your VMs'), listEl),
    detailEl);

  async function act(vm, action, body) {
    try {
      if (action === 'delete') {
        const t = armed.get(vm.id);
        if (!t || Date.now() - t > 5000) {
          armed.set(vm.id, Date.now());
          ctx.say(`Press Delete again within 5 s to delete ${vm.name}.`, 'warn');
          renderList(lastVms);
          return;
        }
        armed.delete(vm.id);
        await del(`/v1/vms/${encodeURIComponent(vm.id)}`);
        if (selected === vm.id) { selected = null; fill(detailEl); }
      } else {
        await post(`/v1/vms/${encodeURIComponent(vm.id)}/${action}`, body);
      }
      ctx.say(`${action}: ${vm.name}`);
      await refresh();
    } catch (err) { ctx.report(err); }
  }

  let lastVms = [];
  function renderList(list) {
    lastVms = list;
    if (!list.length) { fill(listEl, h('p', { class: 'empty' }, 'No VMs yet.')); return; }
    const rows = list.map((v) => {
      const busy = TRANSITIONAL.has(v.state);
      const btn = (label, action, enabled) => h('button', {
        type: 'button', class: 'small', disabled: busy || !enabled, onclick: () => act(v, action),
        'aria-label': `${label} ${v.name}`,
      }, label);
      const armedNow = armed.has(v.id) && Date.now() - armed.get(v.id) < 5000;
      return h('tr', { dataset: { vm: v.name, state: v.state } },
        h('th', { scope: 'row' }, h('a', {
          href: '#vms', onclick: (e) => { e.preventDefault(); selected = v.id; renderDetail(); },
        }, v.name)),
        h('td', {}, h('span', { class: `state s-${v.state}` }, v.state)),
        h('td', {}, v.host || '–'),
        h('td', {}, v.image || ''),
        h('td', {}, `${v.vcpus} / ${v.memory_mb} MiB`),
        h('td', {}, `${v.disk} · ${v.start}`),
        h('td', { title: v.created_at }, age(v.created_at)),
        h('td', { class: 'row-actions' },
          btn('Stop', 'stop', v.state === 'running'),
          btn('Checkpoint', 'checkpoint', v.state === 'running'),
          btn('Resume', 'resume', v.state === 'stopped' || v.state === 'suspended'),
          h('button', {
            type: 'button', class: 'small danger', disabled: v.state === 'deleting',
            onclick: () => act(v, 'delete'), 'aria-label': `Delete ${v.name}`,
          }, armedNow ? 'Confirm delete' : 'Delete')));
    });
    fill(listEl, table(['Name', 'State', 'Host', 'Image', 'Size', 'Disk · start', 'Age', 'Actions'], rows));
  }

  // --- details of one VM ---
  let detailFor = null;
  let migrateSel = null;
  let execOut = null;
  let consoleOut = null;
  function renderDetail() {
    const v = lastVms.find((x) => x.id === selected);
    if (!v) { fill(detailEl); detailFor = null; return; }
    const head = h('p', { class: 'meta' },
      `${v.id} · state ${v.state} · host ${v.host || '–'} · image ${v.image} · ${bytes(v.disk_bytes)} disk`,
      v.error ? h('span', { class: 'error' }, ` · error: ${v.error}`) : null);
    if (detailFor === v.id) { fill(detailEl.querySelector('.meta'), ...head.childNodes); return; }
    detailFor = v.id;
    const cmdIn = h('input', { id: 'exec-cmd', value: 'uname -a', autocomplete: 'off', spellcheck: 'false' });
    execOut = h('pre', { id: 'exec-output', class: 'output', 'aria-live': 'polite', tabindex: 0 });
    const execForm = h('form', { class: 'inline', 'aria-label': 'Run a command' },
      h('label', { class: 'field grow', for: 'exec-cmd' }, h('span', {}, 'Command (/bin/sh -c)'), cmdIn),
      h('button', { type: 'submit', id: 'exec-run' }, 'Run'));
    execForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      fill(execOut, 'running…');
      try {
        const op = await post(`/v1/vms/${encodeURIComponent(v.id)}/exec`, { argv: ['/bin/sh', '-c', cmdIn.value], timeout_s: 60 });
        const done = await awaitOperation(op);
        if (done.state === 'succeeded') {
          const r = done.result || {};
          fill(execOut, r.stdout || '', r.stderr ? h('span', { class: 'stderr' }, r.stderr) : null,
            h('span', { class: 'exit' }, `\n[exit ${r.exit_code}]`));
        } else {
          fill(execOut, h('span', { class: 'stderr' }, `failed: ${done.error ? done.error.message : done.state}`));
        }
      } catch (err) { fill(execOut, h('span', { class: 'stderr' }, err.message)); }
    });
    // The serial console (GET /v1/vms/ID/console): the tail, then, while
    // "Follow" is checked and this VM is shown, what comes next.
    consoleOut = h('pre', { id: 'console-output', class: 'output', tabindex: 0, 'aria-live': 'polite' });
    const consoleBtn = h('button', { type: 'button', id: 'console-load' }, 'Load console log');
    const followBox = h('input', { type: 'checkbox', id: 'console-follow' });
    const consolePath = `/v1/vms/${encodeURIComponent(v.id)}/console`;
    const shownFor = v.id;
    let next = null;
    let timer = null;
    const atBottom = () => consoleOut.scrollHeight - consoleOut.scrollTop - consoleOut.clientHeight < 8;
    async function loadConsole() {
      fill(consoleOut, 'reading…');
      try {
        const r = await get(consolePath);
        fill(consoleOut, r.text || '(nothing printed yet)');
        next = r.next_offset;
        consoleOut.scrollTop = consoleOut.scrollHeight;
      } catch (err) { fill(consoleOut, err.message); next = null; }
    }
    async function poll() {
      timer = null;
      if (!followBox.checked || detailFor !== shownFor) return;
      try {
        if (next === null) await loadConsole();
        else {
          const r = await get(`${consolePath}?offset=${next}`);
          if (r.text) {
            const stick = atBottom();
            if (consoleOut.textContent === '(nothing printed yet)') fill(consoleOut);
            consoleOut.append(r.text);
            if (stick) consoleOut.scrollTop = consoleOut.scrollHeight;
          }
          next = r.next_offset;
        }
      } catch (err) { /* a restart or the exec limit: try again */ }
      if (followBox.checked && detailFor === shownFor) timer = setTimeout(poll, 2000);
    }
    consoleBtn.addEventListener('click', loadConsole);
    followBox.addEventListener('change', () => { if (followBox.checked && !timer) poll(); });
    migrateSel = h('select', { id: 'migrate-to' }, h('option', { value: '' }, 'any other host (placement)'));
    const migrateForm = h('form', { class: 'inline', 'aria-label': 'Migrate' },
      h('label', { class: 'field grow', for: 'migrate-to' }, h('span', {}, 'Migrate to'), migrateSel),
      h('button', { type: 'submit' }, 'Migrate'));
    migrateForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const body = migrateSel.value ? { to: migrateSel.value } : {};
        const op = await post(`/v1/vms/${encodeURIComponent(v.id)}/migrate`, body);
        ctx.say(`Migrating ${v.name}…`);
        const done = await awaitOperation(op);
        if (done.state === 'succeeded') ctx.say(`${v.name} migrated to ${done.result.to} (downtime ${done.result.downtime_ms} ms)`);
        else ctx.say(`migration failed: ${done.error ? done.error.message : ''}`, 'error');
        await refresh();
      } catch (err) { ctx.report(err); }
    });
    getAll('/v1/hosts', 'hosts').then((r) => {
      for (const host of r.hosts || []) if (host.name !== v.host) migrateSel.append(h('option', { value: host.name }, host.name));
    }).catch(() => {});
    fill(detailEl, h('div', { class: 'card', id: 'vm-detail-card' },
      h('h2', {}, `VM ${v.name}`), head,
      h('h3', {}, 'Run a command'), execForm, execOut,
      h('h3', {}, 'Console log'),
      h('p', { class: 'hint' }, "What the guest printed on its serial console (ttyS0), kept by its host."),
      h('div', { class: 'inline' }, consoleBtn,
        h('label', { class: 'check', for: 'console-follow' }, followBox, ' Follow')),
      consoleOut,
      h('h3', {}, 'Live migration'), migrateForm,
      h('button', { type: 'button', class: 'link', onclick: () => { selected = null; detailFor = null; fill(detailEl); } }, 'Close')));
  }

  function renderEvents() {
    const evs = ctx.live.events.slice(-10).reverse();
    fill(eventsEl, evs.length ? evs.map((e) => h('li', {},
      h('time', { datetime: new Date(e.time_ms).toISOString() }, new Date(e.time_ms).toLocaleTimeString()), ' ',
      h('code', {}, e.kind), ' ', e.message)) : h('li', { class: 'empty' }, 'No events yet.'));
  }

  let imagesLoadedAt = 0;
  async function loadChoices() {
    if (Date.now() - imagesLoadedAt < 15000) return;
    imagesLoadedAt = Date.now();
    const [imgs, nets] = await Promise.all([getAll('/v1/images', 'images'), getAll('/v1/networks', 'networks')]);
    const keep = imageSel.value;
    fill(imageSel, (imgs.images || []).filter((i) => i.state === 'ready')
      .map((i) => h('option', { value: i.id },
        `${i.name}${i.checkpoint && i.checkpoint.state === 'ready' ? ' (checkpoint)' : ''}`)));
    if (keep) imageSel.value = keep;
    const chosen = new Set([...netsSel.selectedOptions].map((o) => o.value));
    fill(netsSel, (nets.networks || []).map((n) => h('option', { value: n.name, selected: chosen.has(n.name) }, n.name)));
  }

  async function refresh() {
    await loadChoices();
    const list = (await getAll('/v1/vms', 'vms')).vms || [];
    ctx.live.vms = list;
    renderList(list);
    if (selected) renderDetail();
    lineChart(chartEl, ctx.live.samples, [
      { key: 'total', label: 'VMs', cls: 'series-a' },
      { key: 'running', label: 'running', cls: 'series-b' },
    ], 'Number of your VMs over time (from the event history, then sampled every few seconds)');
    renderEvents();
  }

  return { refresh };
}
