// Drives the portal in headless Chromium (run by tests/portal_browser_test.cc,
// which starts the grid and passes it in the environment):
//   VMGRID_URL, VMGRID_ALICE_TOKEN, VMGRID_ADMIN_TOKEN, VMGRID_OTHER_VM (a VM
//   of another user that must never appear), VMGRID_CHROMIUM,
//   VMGRID_UI_SCREENSHOTS (where the screenshots go).
// Exits 0 when every check held; prints what failed otherwise.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const url = process.env.VMGRID_URL;
const alice = process.env.VMGRID_ALICE_TOKEN;
const adminToken = process.env.VMGRID_ADMIN_TOKEN;
const otherVm = process.env.VMGRID_OTHER_VM;
const shots = process.env.VMGRID_UI_SCREENSHOTS;
const vmName = 'alice-web';
const t0 = Date.now();

function log(msg) { console.log(`[portal ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`); }
function check(cond, msg) { if (!cond) throw new Error(`check failed: ${msg}`); }

const profile = mkdtempSync(join(tmpdir(), 'vmgrid-portal-test-'));  // files to upload
const browser = await chromium.launch({
  executablePath: process.env.VMGRID_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  // (Playwright gives the browser a fresh, empty profile of its own.)
});
const errors = [];
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('dialog', (d) => { errors.push(`unexpected dialog: ${d.message()}`); d.dismiss(); });
  // Another user's VM must never be in the page, whatever it shows.
  const neverOther = async (where) => {
    const text = await page.evaluate(() => document.body.innerText);
    check(!text.includes(otherVm), `${otherVm} (another user's VM) appears on ${where}`);
  };
  const shot = async (name) => {
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
    log(`screenshot ${name}.png`);
  };

  // Sign in. /ui redirects to /ui/; the token goes into a password field.
  const resp = await page.goto(`${url}/ui`);
  check(resp.ok(), `GET /ui answered ${resp.status()}`);
  check(page.url() === `${url}/ui/`, `landed on ${page.url()}`);
  const headers = resp.headers();
  check((headers['content-security-policy'] || '').includes("default-src 'self'"), 'CSP header');
  await page.getByLabel('API token').waitFor();
  await shot('signin');
  // Keyboard: type the token into the focused field and press Enter.
  await page.getByLabel('API token').focus();
  await page.keyboard.type(alice);
  await page.keyboard.press('Enter');
  await page.getByRole('navigation', { name: 'Pages' }).waitFor();
  check(!page.url().includes(alice), 'the token is in the URL');
  check(await page.evaluate(() => !!sessionStorage.getItem('vmgrid.token')), 'token kept in sessionStorage');
  check(await page.evaluate(() => !localStorage.length), 'nothing in localStorage');
  await page.locator('#who').getByText('alice').waitFor();
  log('signed in as alice');
  await neverOther('the VMs page');

  // Create a VM from the tiny image (boot), watch it become running without a reload.
  await page.locator('#vm-image option').first().waitFor({ state: 'attached' });
  await page.getByLabel('Name', { exact: true }).fill(vmName);
  await page.getByRole('button', { name: 'Create VM' }).click();
  await page.locator(`tr[data-vm="${vmName}"]`).waitFor();
  log('VM row shown');
  const navigations = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  await page.locator(`tr[data-vm="${vmName}"][data-state="running"]`).waitFor({ timeout: 90000 });
  check(navigations.every((u) => u.startsWith(`${url}/ui/`)), `page reloaded: ${navigations}`);
  log('VM running');
  await neverOther('the VMs page with a running VM');

  // Run a command and read its output; the output is shown as text, never as HTML.
  await page.getByRole('link', { name: vmName }).click();
  await page.getByLabel('Command (/bin/sh -c)').fill("echo hello-from-portal; echo '<img src=x id=xss onerror=alert(1)>'");
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await page.locator('#exec-output').getByText('[exit 0]').waitFor({ timeout: 60000 });
  const out = await page.locator('#exec-output').innerText();
  check(out.includes('hello-from-portal'), `exec output: ${out}`);
  check(out.includes('<img src=x id=xss'), 'markup in the output is shown as text');
  check(await page.locator('#xss').count() === 0, 'markup in the output became an element');
  log('exec output read');
  // The serial console: the boot's shell banner, then (following) a line the
  // guest writes to ttyS0 now; escape sequences never reach the page.
  await page.getByRole('button', { name: 'Load console log' }).click();
  await page.locator('#console-output').getByText('BusyBox').waitFor({ timeout: 60000 });
  check(!(await page.locator('#console-output').innerText()).includes('\u001b'), 'escape bytes shown');
  await page.getByLabel('Follow').check();
  await page.getByLabel('Command (/bin/sh -c)').fill('echo console-mark-$((6*7)) > /dev/ttyS0');
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await page.locator('#console-output').getByText('console-mark-42').waitFor({ timeout: 60000 });
  log('console log read and followed');
  await shot('vms');

  for (const [name, heading] of [['images', 'Images'], ['hosts', 'Hosts'], ['queries', 'Queries'], ['networks', 'Networks']]) {
    await page.getByRole('navigation', { name: 'Pages' }).getByRole('link', { name: heading === 'Hosts' ? 'Hosts' : heading }).click();
    await page.getByRole('heading', { level: 1, name: heading }).waitFor();
    if (name === 'images') {
      await page.locator('tr[data-image="tiny"]').waitFor();
      // Upload a small raw disk of alice's own: progress bar, finalize, ready.
      const disk = join(profile, 'alice-disk.raw');
      const bytes = Buffer.alloc(4 << 20);
      bytes[510] = 0x55;  // a boot sector's signature: a disk without a kernel must have one
      bytes[511] = 0xaa;
      writeFileSync(disk, bytes);
      await page.getByLabel('Name', { exact: true }).fill('alice-disk');
      await page.getByLabel('Disk file').setInputFiles(disk);
      await page.getByRole('button', { name: 'Upload image' }).click();
      await page.locator('#img-progress-text').getByText('alice-disk is ready.').waitFor({ timeout: 60000 });
      check(await page.locator('#img-progress').evaluate((p) => p.value) === 100, 'progress bar at 100');
      await page.locator('tr[data-image="alice-disk"]').getByText('ready').waitFor();
    }
    if (name === 'hosts') await page.locator('.host .bar').first().waitFor();
    if (name === 'queries') {
      await page.getByRole('button', { name: 'Run query' }).click();
      await page.locator('#sql-result table').waitFor();
      const res = await page.locator('#sql-result').innerText();
      check(res.includes(vmName), `query result lacks ${vmName}: ${res}`);
      await page.getByRole('button', { name: 'Find sets' }).click();
      await page.locator('#set-result p').waitFor();
    }
    if (name === 'networks') {
      await page.getByLabel('Name', { exact: true }).fill('alice-net');
      await page.getByRole('button', { name: 'Create network' }).click();
      await page.locator('tr[data-net="alice-net"]').waitFor();
    }
    await neverOther(`the ${name} page`);
    await shot(name);
  }

  // Phone width: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 375, height: 800 });
  await page.getByRole('navigation', { name: 'Pages' }).getByRole('link', { name: 'VMs' }).click();
  await page.locator(`tr[data-vm="${vmName}"]`).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  check(overflow <= 376, `page is ${overflow}px wide at 375px`);
  await shot('vms-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  // Sign out: the token is gone; the admin sees every host's cache counters.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('API token').waitFor();
  check(await page.evaluate(() => !sessionStorage.getItem('vmgrid.token')), 'token left after sign-out');
  await page.getByLabel('API token').fill(adminToken);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('navigation', { name: 'Pages' }).getByRole('link', { name: 'Hosts' }).click();
  await page.locator('.host .bar-label', { hasText: 'Cache hits' }).first().waitFor();
  await shot('hosts-admin');
  await page.getByRole('navigation', { name: 'Pages' }).getByRole('link', { name: 'VMs' }).click();
  await page.locator(`tr[data-vm="${otherVm}"]`).waitFor();  // the admin does see it
  log('admin sees every VM and the cache counters');

  check(errors.length === 0, `errors in the browser:\n  ${errors.join('\n  ')}`);
  log('all checks passed');
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
  if (errors.length) console.error(`browser errors:\n  ${errors.join('\n  ')}`);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
