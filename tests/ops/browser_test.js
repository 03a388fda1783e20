#!/usr/bin/env node
// The status page in headless Chromium while kvtierd serves the demo
// workload: the charts draw, every figure on the page equals /api/v1/status
// of the same sample, the page requests nothing outside the daemon and logs
// no console error. Saves a screenshot in the build folder.
//
// usage: node browser_test.js BUILD_DIR SOURCE_DIR
'use strict';

const { spawn } = require('child_process');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

const build = path.resolve(process.argv[2]);
const source = path.resolve(process.argv[3]);
const CHROMIUM = process.env.KVTIER_CHROMIUM || '/usr/bin/chromium';
const children = [];

function skip(msg) { console.log('SKIPPED: ' + msg); process.exit(77); }
function fail(msg) { console.log('FAILED: ' + msg); cleanup(); process.exit(1); }
function cleanup() {
  for (const c of children) {
    try { process.kill(-c.pid, 'SIGKILL'); } catch (e) { /* gone */ }
  }
}
process.on('exit', cleanup);
process.on('SIGTERM', () => { cleanup(); process.exit(1); });

if (!fs.existsSync(CHROMIUM)) skip(CHROMIUM + ' is missing (scripts/install-deps.sh installs chromium)');
let playwright;
try {
  playwright = require(path.join(source, 'node_modules', 'playwright-core'));
} catch (e) {
  skip('node_modules/playwright-core is missing (run scripts/install-deps.sh)');
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on('error', reject);
  });
}

function start(argv, log) {
  const out = fs.openSync(log, 'w');
  const c = spawn(argv[0], argv.slice(1), { stdio: ['ignore', out, out], detached: true });
  children.push(c);
  return c;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function getJson(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(url + ' answered ' + r.status);
  return r.json();
}

function lookup(doc, p) {
  let v = doc;
  for (const part of p.split('.')) {
    if (v === null || v === undefined) return undefined;
    v = v[part];
  }
  return v;
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvtier-browser-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const socket = path.join(dir, 'kvtierd.sock');
  fs.mkdirSync(path.join(dir, 'nvme'));
  const daemon = start([path.join(build, 'src/server/kvtierd'), '--socket', socket, '--http',
                        `127.0.0.1:${port}`, '--dram', '64MiB', '--nvme', path.join(dir, 'nvme'),
                        '--nvme-capacity', '64MiB', '--nvme-io-mode', 'buffered',
                        '--node-id', 'browser-test-node'], path.join(dir, 'kvtierd.log'));
  for (let i = 0; ; i++) {
    if (daemon.exitCode !== null) fail('kvtierd exited: ' + fs.readFileSync(path.join(dir, 'kvtierd.log')));
    try { if ((await fetch(base + '/readyz')).ok) break; } catch (e) { /* not yet */ }
    if (i > 200) fail('kvtierd did not get ready');
    await sleep(100);
  }
  // The demo workload, over and over, in the background.
  const cli = path.join(build, 'src/cli/kvtier');
  start(['bash', '-c', `for i in $(seq 1 300); do "${cli}" demo --quiet --conversations 2 ` +
         `--turns 3 --seed $i --socket "${socket}" >/dev/null 2>&1 || exit 1; sleep 0.1; done`],
        path.join(dir, 'demo.log'));

  const browser = await playwright.chromium.launch({
    executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'], headless: true });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
  const requests = [];
  const problems = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('console', (m) => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('requestfailed', (r) => problems.push('request failed: ' + r.url()));

  await page.goto(base + '/', { waitUntil: 'load' });
  // A few samples with traffic, so the charts have lines.
  await page.waitForFunction(() => Number(document.body.getAttribute('data-seq') || 0) > 0,
                             null, { timeout: 15000 });
  await page.waitForFunction(() => {
    const d = window.kvtierStatus.last();
    return d && d.history.time.length >= 4 && d.totals.lookups > 0 &&
           d.history.hit_rate.filter((x) => x !== null).length >= 2;
  }, null, { timeout: 20000 });

  // The charts draw: each has a canvas, and the series' colour is on it.
  const charts = await page.evaluate(() => {
    const colors = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189]];
    const out = {};
    for (const el of document.querySelectorAll('.chart')) {
      const c = el.querySelector('canvas');
      if (!c) { out[el.id] = { canvas: false }; continue; }
      const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let painted = 0, series = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] === 0) continue;
        painted++;
        // A series' stroke (status.js' palette); axes and grid are grey.
        for (const [r, g, b] of colors) {
          if (Math.abs(data[i] - r) < 30 && Math.abs(data[i + 1] - g) < 30 &&
              Math.abs(data[i + 2] - b) < 30) { series++; break; }
        }
      }
      out[el.id] = { canvas: true, width: c.width, height: c.height, painted, series };
    }
    return out;
  });
  for (const id of ['chart-hit', 'chart-bytes', 'chart-occupancy', 'chart-latency', 'chart-events',
                    'chart-saved']) {
    const c = charts[id];
    if (!c || !c.canvas) fail(`${id}: no canvas`);
    if (c.painted === 0) fail(`${id}: the canvas is empty`);
  }
  for (const id of ['chart-hit', 'chart-bytes', 'chart-latency', 'chart-events']) {
    if (charts[id].series < 20) fail(`${id}: no series line drawn (${JSON.stringify(charts[id])})`);
  }

  // The figures on the page equal /api/v1/status of the same sample: wait
  // for the page to draw a new sample, freeze it, read the API at once, and
  // compare when the API still serves that sample.
  let compared = 0;
  for (let attempt = 0; attempt < 15 && compared === 0; attempt++) {
    await page.evaluate(() => window.kvtierStatus.resume());
    const before = Number(await page.getAttribute('body', 'data-seq'));
    await page.waitForFunction((s) => Number(document.body.getAttribute('data-seq')) > s, before,
                               { timeout: 10000 });
    await page.evaluate(() => window.kvtierStatus.pause());
    const doc = await getJson(base + '/api/v1/status');
    const shown = await page.evaluate(() => {
      const out = [];
      for (const el of document.querySelectorAll('[data-field]')) {
        out.push({ field: el.getAttribute('data-field'), value: el.getAttribute('data-value'),
                   text: el.textContent });
      }
      return { seq: Number(document.body.getAttribute('data-seq')), fields: out };
    });
    if (doc.seq !== shown.seq) continue;
    for (const f of shown.fields) {
      const want = lookup(doc, f.field);
      const got = JSON.parse(f.value);
      if (JSON.stringify(got) !== JSON.stringify(want === undefined ? null : want)) {
        fail(`${f.field}: the page shows ${f.value}, /api/v1/status has ${JSON.stringify(want)}`);
      }
      if (!f.text) fail(`${f.field}: shown as empty text`);
      compared++;
    }
    // The tables have one row per tier, namespace and method of the document.
    const rows = await page.evaluate(() => ({
      tiers: document.querySelectorAll('#tiers tbody tr').length,
      namespaces: document.querySelectorAll('#namespaces tbody tr').length,
      peers: document.querySelectorAll('#peers tbody tr').length,
      methods: document.querySelectorAll('#methods tbody tr').length,
    }));
    if (rows.tiers !== doc.tiers.length || rows.namespaces !== doc.namespaces.length ||
        rows.peers !== doc.peers.length || rows.methods !== doc.latency.methods.length) {
      fail('table rows ' + JSON.stringify(rows) + ' do not match the document');
    }
    if (doc.namespaces.length < 1 || doc.saved.prefill_tokens <= 0) {
      fail('the demo workload left no namespace or saved tokens: ' + JSON.stringify(doc.saved));
    }
    console.log(`sample ${doc.seq}: ${compared} figures equal /api/v1/status ` +
                `(hit rate ${doc.totals.hit_rate}, ${doc.saved.prefill_tokens} tokens saved)`);
  }
  if (compared === 0) fail('never caught the page and /api/v1/status on the same sample');
  if (compared < 40) fail(`only ${compared} figures on the page`);

  const shot = path.join(build, 'status-page.png');
  await page.screenshot({ path: shot, fullPage: true });

  // Off loopback with a token: the page opened as /?token=... draws, drops
  // the token from the address bar and sends it as a bearer header.
  const token = 'browser-status-token-0123456789';
  fs.writeFileSync(path.join(dir, 'status.token'), token + '\n');
  fs.mkdirSync(path.join(dir, 'b'));
  const port2 = await freePort();
  const base2 = `http://127.0.0.1:${port2}`;
  const guarded = start([path.join(build, 'src/server/kvtierd'), '--socket',
                         path.join(dir, 'b', 'kvtierd.sock'), '--http', `0.0.0.0:${port2}`,
                         '--dram', '64MiB', '--nvme', 'off', '--status-token-file',
                         path.join(dir, 'status.token')], path.join(dir, 'guarded.log'));
  for (let i = 0; ; i++) {
    if (guarded.exitCode !== null) fail('kvtierd (token) exited: ' + fs.readFileSync(path.join(dir, 'guarded.log')));
    try { if ((await fetch(base2 + '/readyz')).ok) break; } catch (e) { /* not yet */ }
    if (i > 200) fail('kvtierd (token) did not get ready');
    await sleep(100);
  }
  if ((await fetch(base2 + '/api/v1/status')).status !== 401) fail('no token: want 401');
  const page2 = await browser.newPage();
  const sent = [];
  page2.on('request', (r) => {
    requests.push(r.url());
    if (r.url().startsWith(base2 + '/api/v1/status')) sent.push(r.headers().authorization || '');
  });
  page2.on('console', (m) => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
  page2.on('pageerror', (e) => problems.push('page error: ' + e.message));
  await page2.goto(`${base2}/?token=${token}`, { waitUntil: 'load' });
  await page2.waitForFunction(() => Number(document.body.getAttribute('data-seq') || 0) > 0,
                              null, { timeout: 15000 });
  if (page2.url().includes(token)) fail('the token stayed in the address bar: ' + page2.url());
  if (!sent.length || sent.some((h) => h !== 'Bearer ' + token)) {
    fail('the page did not send the token as a bearer header: ' + JSON.stringify(sent));
  }
  if (!(await page2.isHidden('#banner'))) fail('banner shown: ' + await page2.textContent('#banner'));
  await browser.close();

  const outside = requests.filter((u) => !u.startsWith(base + '/') && !u.startsWith(base2 + '/'));
  if (outside.length) fail('requests outside the daemon: ' + outside.join(', '));
  if (!requests.some((u) => u.startsWith(base + '/api/v1/status'))) fail('the page never read the API');
  if (problems.length) fail(problems.join('\n'));
  console.log(`${requests.length} requests, all to the daemons; no console errors; the token ` +
              `page sent ${sent.length} bearer requests; screenshot ${shot}`);
  console.log('PASSED');
  cleanup();
  process.exit(0);
}

main().catch((e) => fail(e.stack || String(e)));
