// Virtual networks: the caller's own and those shared with them, and a form
// to create one (docs/vnet.md).
import { getAll, post, del } from './api.js';
import { h, fill, table, field } from './dom.js';

export const title = 'Networks';

export function mount(root, ctx) {
  const listEl = h('div', { id: 'net-list' });
  const nameIn = h('input', { id: 'net-name', required: true, autocomplete: 'off' });
  const subnetIn = h('input', { id: 'net-subnet', placeholder: 'e.g. 10.20.0.0/24 (optional)', autocomplete: 'off' });
  const egressIn = h('input', { id: 'net-egress', type: 'checkbox' });
  const form = h('form', { class: 'card form-grid', 'aria-labelledby': 'net-create-title' },
    h('h2', { id: 'net-create-title' }, 'Create a network'),
    h('label', { class: 'field', for: 'net-name' }, h('span', {}, 'Name'), nameIn),
    h('label', { class: 'field', for: 'net-subnet' }, h('span', {}, 'Subnet'), subnetIn),
    h('label', { class: 'check', for: 'net-egress' }, egressIn, ' Egress (NAT to the outside)'),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create network')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { name: nameIn.value.trim() };
    if (subnetIn.value.trim()) body.subnet = subnetIn.value.trim();
    if (egressIn.checked) body.egress = true;
    try {
      await post('/v1/networks', body);
      nameIn.value = '';
      ctx.say(`Network ${body.name} created.`);
      await refresh();
    } catch (err) { ctx.report(err); }
  });
  fill(root, h('h1', { id: 'networks-title' }, 'Networks'), form, h('div', { class: 'card' }, h('h2', {}, 'Networks you can use'), listEl));

  async function refresh() {
    const r = await getAll('/v1/networks', 'networks');
    const list = r.networks || [];
    if (!list.length) { fill(listEl, h('p', { class: 'empty' }, 'No networks.')); return; }
    fill(listEl, table(['Name', 'Subnet', 'Owner', 'Egress', ''], list.map((n) => h('tr', { dataset: { net: n.name } },
      h('th', { scope: 'row' }, n.name), h('td', {}, n.subnet || ''), h('td', {}, n.owner || ''),
      h('td', {}, n.egress ? 'yes' : 'no'),
      h('td', {}, h('button', {
        type: 'button', class: 'small danger', 'aria-label': `Delete network ${n.name}`,
        onclick: async () => {
          try { await del(`/v1/networks/${encodeURIComponent(n.id || n.name)}`); await refresh(); } catch (err) { ctx.report(err); }
        },
      }, 'Delete'))))));
  }
  return { refresh };
}
