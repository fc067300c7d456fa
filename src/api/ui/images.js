// Images: the list with each image's post-boot checkpoint state, and the
// upload of a new one (create, PUT each file with a progress bar, finalize),
// then optionally its checkpoint.
import { get, getAll, post, del, upload, awaitOperation } from './api.js';
import { h, fill, table, bytes, age } from './dom.js';

export const title = 'Images';

export function mount(root, ctx) {
  const listEl = h('div', { id: 'image-list' });
  const nameIn = h('input', { id: 'img-name', required: true, autocomplete: 'off' });
  const formatSel = h('select', { id: 'img-format' }, h('option', { value: 'raw' }, 'raw'), h('option', { value: 'qcow2' }, 'qcow2'));
  const diskIn = h('input', { id: 'img-disk', type: 'file', required: true });
  const kernelIn = h('input', { id: 'img-kernel', type: 'file' });
  const initrdIn = h('input', { id: 'img-initrd', type: 'file' });
  const appendIn = h('input', { id: 'img-append', autocomplete: 'off', placeholder: 'kernel command line (optional)' });
  const ckptIn = h('input', { id: 'img-ckpt', type: 'checkbox' });
  const progress = h('progress', { id: 'img-progress', max: 100, value: 0, 'aria-label': 'Upload progress' });
  const progressText = h('span', { id: 'img-progress-text', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit' }, 'Upload image');
  const form = h('form', { class: 'card form-grid', 'aria-labelledby': 'img-upload-title' },
    h('h2', { id: 'img-upload-title' }, 'Upload an image'),
    h('label', { class: 'field', for: 'img-name' }, h('span', {}, 'Name'), nameIn),
    h('label', { class: 'field', for: 'img-format' }, h('span', {}, 'Disk format'), formatSel),
    h('label', { class: 'field', for: 'img-disk' }, h('span', {}, 'Disk file'), diskIn),
    h('label', { class: 'field', for: 'img-kernel' }, h('span', {}, 'Kernel (optional)'), kernelIn),
    h('label', { class: 'field', for: 'img-initrd' }, h('span', {}, 'Initrd (optional)'), initrdIn),
    h('label', { class: 'field', for: 'img-append' }, h('span', {}, 'Kernel command line'), appendIn),
    h('label', { class: 'check', for: 'img-ckpt' }, ckptIn, ' Make its post-boot checkpoint'),
    h('div', { class: 'actions' }, submit),
    h('div', { class: 'progress-row' }, progress, progressText));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      const files = [['disk', diskIn.files[0]], ['kernel', kernelIn.files[0]], ['initrd', initrdIn.files[0]]].filter(([, f]) => f);
      const img = await post('/v1/images', {
        name: nameIn.value.trim(), format: formatSel.value,
        has_kernel: !!kernelIn.files[0], has_initrd: !!initrdIn.files[0], append: appendIn.value,
      });
      const total = files.reduce((s, [, f]) => s + f.size, 0) || 1;
      let done = 0;
      for (const [kind, file] of files) {
        await upload(`/v1/images/${encodeURIComponent(img.id)}/files/${kind}`, file, (loaded) => {
          progress.value = Math.round((100 * (done + loaded)) / total);
          progressText.textContent = `${kind}: ${bytes(done + loaded)} of ${bytes(total)}`;
        });
        done += file.size;
      }
      progressText.textContent = 'finalizing…';
      const op = await awaitOperation(await post(`/v1/images/${encodeURIComponent(img.id)}/finalize`),
        (o) => { if (o.progress) progressText.textContent = `finalizing: ${o.progress.step} ${o.progress.percent ?? ''}%`; });
      if (op.state !== 'succeeded') throw new Error(`finalize failed: ${op.error ? op.error.message : op.state}`);
      if (ckptIn.checked) await post(`/v1/images/${encodeURIComponent(img.id)}/checkpoint`, {});
      progressText.textContent = `${img.name} is ready.`;
      form.reset();
      progress.value = 100;
      await refresh();
    } catch (err) {
      progressText.textContent = '';
      ctx.report(err);
    } finally {
      submit.disabled = false;
    }
  });
  fill(root, h('h1', { id: 'images-title' }, 'Images'), form, h('div', { class: 'card' }, h('h2', {}, 'Images you can use'), listEl));

  async function refresh() {
    const r = await getAll('/v1/images', 'images');
    const list = r.images || [];
    if (!list.length) { fill(listEl, h('p', { class: 'empty' }, 'No images yet.')); return; }
    fill(listEl, table(['Name', 'Owner', 'State', 'Format', 'Size', 'Checkpoint', 'Age', ''], list.map((i) => {
      const ck = i.checkpoint;
      const mine = session_owner(i);
      return h('tr', { dataset: { image: i.name } },
        h('th', { scope: 'row' }, i.name), h('td', {}, i.owner || ''),
        h('td', {}, h('span', { class: `state s-${i.state}` }, i.state)),
        h('td', {}, i.format), h('td', {}, bytes(i.size_bytes)),
        h('td', {}, ck ? h('span', { class: `state s-${ck.state}`, title: ck.error || '' }, ck.state, ck.error ? ` (${ck.error})` : '') : 'none'),
        h('td', { title: i.created_at }, age(i.created_at)),
        h('td', { class: 'row-actions' },
          i.state === 'ready' && (!ck || ck.state === 'error') && mine ? h('button', {
            type: 'button', class: 'small', 'aria-label': `Make checkpoint of ${i.name}`,
            onclick: async () => { try { await post(`/v1/images/${encodeURIComponent(i.id)}/checkpoint`, {}); await refresh(); } catch (err) { ctx.report(err); } },
          }, 'Checkpoint') : null,
          mine ? h('button', {
            type: 'button', class: 'small danger', 'aria-label': `Delete image ${i.name}`,
            onclick: async () => { try { await del(`/v1/images/${encodeURIComponent(i.id)}`); await refresh(); } catch (err) { ctx.report(err); } },
          }, 'Delete') : null));
    })));
  }
  function session_owner(i) { return ctx.user && (ctx.user.role === 'admin' || i.owner === ctx.user.name); }
  return { refresh };
}
