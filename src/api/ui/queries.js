// Queries: read-only SQL over the information service's published views,
// with the answer as a table, and the set (co-allocation) operator as a form
// (docs/infosvc.md).
import { post } from './api.js';
import { h, fill, table } from './dom.js';

export const title = 'Queries';

const VIEWS = ['hosts', 'vms', 'images', 'image_cache', 'datasets', 'dataset_versions', 'dataset_cache', 'vdisks', 'virtualization', 'futures', 'networks', 'nics', 'machines', 'machines_ext'];

export function mount(root, ctx) {
  const sqlIn = h('textarea', { id: 'sql', rows: 4, spellcheck: 'false' }, 'SELECT name, state, vcpus, memory_mb FROM vms');
  const maxRowsIn = h('input', { id: 'sql-max-rows', type: 'number', min: 1, max: 10000, value: 100 });
  const sqlOut = h('div', { id: 'sql-result', 'aria-live': 'polite' });
  const sqlForm = h('form', { class: 'card', 'aria-labelledby': 'sql-title' },
    h('h2', { id: 'sql-title' }, 'SQL'),
    h('p', { class: 'hint' }, 'One SELECT over the published views: ', VIEWS.map((v, i) => [i ? ', ' : '', h('code', {}, v)])),
    h('label', { class: 'field', for: 'sql' }, h('span', {}, 'Query'), sqlIn),
    h('div', { class: 'inline' },
      h('label', { class: 'field', for: 'sql-max-rows' }, h('span', {}, 'Max rows'), maxRowsIn),
      h('button', { type: 'submit', id: 'sql-run' }, 'Run query')),
    sqlOut);
  sqlForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const r = await post('/v1/query', { sql: sqlIn.value, max_rows: Number(maxRowsIn.value) || 100 });
      const rows = (r.rows || []).map((row) => h('tr', {}, row.map((c) => h('td', {}, c === null ? 'NULL' : typeof c === 'object' ? JSON.stringify(c) : String(c)))));
      fill(sqlOut, h('p', { class: 'meta' }, `${rows.length} rows in ${r.elapsed_ms} ms`), table(r.columns || [], rows));
    } catch (err) { fill(sqlOut, h('p', { class: 'error', role: 'alert' }, err.message)); }
  });

  const inputs = {};
  const mk = (id, label, attrs) => {
    inputs[id] = h('input', { id: `set-${id}`, autocomplete: 'off', ...attrs });
    return h('label', { class: 'field', for: `set-${id}` }, h('span', {}, label), inputs[id]);
  };
  const fromSel = h('select', { id: 'set-from' }, VIEWS.map((v) => h('option', { value: v, selected: v === 'hosts' }, v)));
  const setOut = h('div', { id: 'set-result', 'aria-live': 'polite' });
  const setForm = h('form', { class: 'card form-grid', 'aria-labelledby': 'set-title' },
    h('h2', { id: 'set-title' }, 'Set operator'),
    h('p', { class: 'hint wide' }, 'Sets of SIZE distinct rows of FROM sharing the value of SAME whose SUM column totals between MIN and MAX.'),
    h('label', { class: 'field', for: 'set-from' }, h('span', {}, 'From'), fromSel),
    mk('size', 'Size', { type: 'number', min: 1, max: 64, value: 1 }),
    mk('same', 'Same', { value: 'site' }),
    mk('sum', 'Sum', { value: 'free_vcpus' }),
    mk('min', 'Min', { type: 'number', value: 1 }),
    mk('max', 'Max', { type: 'number', value: 1024 }),
    mk('where', 'Where (optional)', { placeholder: "state = 'up'" }),
    mk('max_sets', 'Max sets', { type: 'number', min: 1, value: 5 }),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Find sets')),
    setOut);
  setForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const set = {
      from: fromSel.value, size: Number(inputs.size.value), same: inputs.same.value, sum: inputs.sum.value,
      min: Number(inputs.min.value), max: Number(inputs.max.value), max_sets: Number(inputs.max_sets.value),
    };
    if (inputs.where.value.trim()) set.where = inputs.where.value.trim();
    try {
      const r = await post('/v1/query', { set });
      const rows = (r.sets || []).map((s) => h('tr', {}, h('td', {}, String(s.group)), h('td', {}, (s.ids || []).join(', ')), h('td', {}, String(s.total))));
      fill(setOut, h('p', { class: 'meta' }, `${rows.length} sets from ${r.candidates} candidates in ${r.groups} groups, ${r.elapsed_ms} ms`),
        table(['Group', 'Members', 'Total'], rows));
    } catch (err) { fill(setOut, h('p', { class: 'error', role: 'alert' }, err.message)); }
  });

  fill(root, h('h1', { id: 'queries-title' }, 'Queries'), sqlForm, setForm);
  return {};
}
