// Hosts: capacity and what is used of it (bars), and each host's chunk
// cache hit rate. Users see every host's public capacity; the admin also
// sees URLs, VM counts and cache counters (GET /v1/hosts decides).
import { getAll } from './api.js';
import { h, fill, bar, bytes, table } from './dom.js';

export const title = 'Hosts';

export function mount(root, ctx) {
  const cards = h('div', { class: 'host-cards', id: 'host-cards' });
  const listEl = h('div', { id: 'host-list' });
  fill(root, h('h1', { id: 'hosts-title' }, 'Hosts'),
    h('p', { class: 'hint' }, 'Usage of each host: what placement has reserved of its vCPUs, memory and disk; the cache bar is the share of chunk reads served from the host\'s cache (admin only).'),
    cards, h('div', { class: 'card' }, h('h2', {}, 'All hosts'), listEl));

  async function refresh() {
    const r = await getAll('/v1/hosts', 'hosts');
    const hostsList = r.hosts || [];
    fill(cards, hostsList.map((x) => {
      const usedCpu = x.vcpus - x.free_vcpus;
      const usedMem = x.memory_mb - x.free_memory_mb;
      const diskUsed = x.disk_total_bytes - x.disk_free_bytes;
      const c = x.images && x.images.cache;
      const lookups = c ? c.hits + c.misses : 0;
      return h('article', { class: 'card host', dataset: { host: x.name }, 'aria-label': `host ${x.name}` },
        h('h2', {}, x.name, ' ', h('span', { class: `state s-${x.state}` }, x.state), x.draining ? h('span', { class: 'state s-stopping' }, 'draining') : null),
        bar('vCPUs', usedCpu, x.vcpus, `${usedCpu} / ${x.vcpus}`),
        bar('Memory', usedMem, x.memory_mb, `${usedMem} / ${x.memory_mb} MiB`),
        x.disk_total_bytes ? bar('Disk', diskUsed, x.disk_total_bytes, `${bytes(diskUsed)} / ${bytes(x.disk_total_bytes)}`) : null,
        c ? bar('Cache hits', c.hits, lookups, lookups ? `${Math.round((100 * c.hits) / lookups)}% of ${lookups}` : 'no reads yet') : null,
        c ? h('p', { class: 'meta' }, `cache ${bytes(c.bytes)} of ${bytes(c.capacity_bytes)}, fetched ${bytes(c.bytes_fetched)}, ${c.verification_failures} verification failures`) : null);
    }));
    const rows = hostsList.map((x) => h('tr', {},
      h('th', { scope: 'row' }, x.name), h('td', {}, x.state), h('td', {}, x.kvm ? 'kvm' : 'tcg'),
      h('td', {}, `${x.free_vcpus} / ${x.vcpus}`), h('td', {}, `${x.free_memory_mb} / ${x.memory_mb} MiB`),
      h('td', {}, x.vm_count ?? '–'), h('td', {}, x.site || ''), h('td', {}, x.last_heartbeat || '')));
    fill(listEl, table(['Name', 'State', 'Hypervisor', 'Free vCPUs', 'Free memory', 'VMs', 'Site', 'Last heartbeat'], rows));
  }
  return { refresh };
}
