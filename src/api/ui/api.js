// The portal is a client of the /v1 REST API and nothing else: the token
// stays in sessionStorage (this tab only, gone when it closes) and travels
// only in the Authorization header, never in a URL.

const KEY = 'vmgrid.token';

export const session = {
  get token() { return sessionStorage.getItem(KEY) || ''; },
  set token(t) { if (t) sessionStorage.setItem(KEY, t); else sessionStorage.removeItem(KEY); },
  user: null,
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body, opts = {}) {
  // Signed out meanwhile (a refresh still running): send nothing.
  if (!session.token) throw new ApiError(0, 'signed_out', 'signed out');
  const headers = { Authorization: `Bearer ${session.token}` };
  const init = { method, headers, cache: 'no-store', signal: opts.signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 204) return null;
  let data = null;
  const text = await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const e = data && data.error ? data.error : {};
    throw new ApiError(res.status, e.code || 'error', e.message || `${res.status} ${res.statusText}`);
  }
  return data;
}

export const get = (p, o) => api('GET', p, undefined, o);
export const post = (p, b) => api('POST', p, b === undefined ? {} : b);
export const del = (p) => api('DELETE', p);

// Every page of a list endpoint (docs/api.md, "Paging"), as one answer
// { [key]: items }.
export async function getAll(path, key, o) {
  const items = [];
  let cursor = '';
  for (;;) {
    const sep = path.includes('?') ? '&' : '?';
    const page = await get(`${path}${sep}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, o);
    items.push(...((page && page[key]) || []));
    if (!page || !page.next || page.next === cursor) break;
    cursor = page.next;
  }
  return { [key]: items };
}

// Polls an operation until it is no longer running.
export async function awaitOperation(op, onProgress) {
  let cur = op;
  while (cur && cur.state === 'running') {
    if (onProgress) onProgress(cur);
    await new Promise((r) => setTimeout(r, 700));
    cur = await get(`/v1/operations/${encodeURIComponent(cur.id)}`);
  }
  return cur;
}

// PUT of a file with upload progress (fetch has no upload progress; XHR does).
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', path);
    xhr.setRequestHeader('Authorization', `Bearer ${session.token}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener('load', () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else {
        const e = data && data.error ? data.error : {};
        reject(new ApiError(xhr.status, e.code || 'error', e.message || `upload failed (${xhr.status})`));
      }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network', 'upload failed: network error')));
    xhr.send(file);
  });
}
