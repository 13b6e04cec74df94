/**
 * The read-only status page served at `/`: the caller's volumes and live job progress bars from
 * the `/v1/events` Server-Sent Events stream. It reads the stream with fetch() rather than
 * EventSource, because EventSource cannot send the Authorization header. The token comes from
 * the page's `#token=...` fragment (never sent to the server in the URL) or a prompt.
 */
export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>brickcrypt service</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px} table{border-collapse:collapse;width:100%;margin-bottom:24px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #ddd}
.bar{width:220px;height:14px;background:#eee;border-radius:3px;overflow:hidden;display:inline-block;vertical-align:middle}
.fill{display:block;height:100%;background:#2b7bd6} .state-failed{color:#b00} .state-succeeded{color:#070}
#err{color:#b00}
</style></head>
<body>
<h1>brickcrypt service</h1>
<p id="backend"></p>
<p id="err"></p>
<h2>Volumes</h2>
<table id="volumes"><thead><tr><th>name</th><th>id</th><th>status</th><th>format</th><th>size</th></tr></thead><tbody></tbody></table>
<h2>Jobs</h2>
<table id="jobs"><thead><tr><th>type</th><th>id</th><th>state</th><th>progress</th><th>rate</th><th>ETA</th><th>result</th></tr></thead><tbody></tbody></table>
<script>
const frag = new URLSearchParams(location.hash.slice(1));
let token = frag.get('token') || sessionStorage.getItem('brickcrypt-token') || '';
if (!token) token = prompt('API token') || '';
sessionStorage.setItem('brickcrypt-token', token);
const auth = { headers: { authorization: 'Bearer ' + token } };
const jobs = new Map();
const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
const mib = (n) => (n / 1048576).toFixed(1) + ' MiB';
async function loadVolumes() {
  const r = await fetch('/v1/volumes', auth);
  if (!r.ok) { document.getElementById('err').textContent = 'volumes: ' + r.status; return; }
  const { volumes } = await r.json();
  document.querySelector('#volumes tbody').innerHTML = volumes.map((v) =>
    '<tr><td>' + esc(v.name) + '</td><td>' + esc(v.id) + '</td><td class="status">' + esc(v.status) + '</td><td>' + esc(v.format) + '</td><td>' + mib(v.size) + '</td></tr>').join('');
}
function renderJobs() {
  document.querySelector('#jobs tbody').innerHTML = [...jobs.values()].map((j) => {
    const p = j.progress || {}; const pct = p.bytes_total ? Math.min(100, 100 * p.bytes_done / p.bytes_total) : (j.state === 'succeeded' ? 100 : 0);
    return '<tr data-job="' + esc(j.id) + '"><td>' + esc(j.type) + '</td><td>' + esc(j.id) + '</td><td class="state-' + esc(j.state) + '">' + esc(j.state) +
      '</td><td><span class="bar"><span class="fill" style="width:' + pct.toFixed(1) + '%"></span></span> ' + pct.toFixed(0) + '%</td><td>' +
      (p.rate ? mib(p.rate) + '/s' : '') + '</td><td>' + (p.eta_seconds != null ? p.eta_seconds + ' s' : '') + '</td><td>' + esc(outcome(j)) + '</td></tr>';
  }).join('');
}
// What a finished job made (an image, a backup) or why it failed.
const outcome = (j) => j.error ? j.error.code : j.result ? (j.result.image_id ? 'image ' + j.result.image_id : j.result.backup_id ? 'backup ' + j.result.backup_id : '') : '';
async function loadHealth() {
  const r = await fetch('/v1/health');
  if (!r.ok) return;
  const h = await r.json();
  document.getElementById('backend').textContent = 'state: ' + h.state + ', role: ' + h.role + ', jobs running here: ' + h.running_jobs;
}
async function loadJobs() {
  const r = await fetch('/v1/jobs', auth);
  if (!r.ok) return;
  for (const j of (await r.json()).jobs.slice(-20)) jobs.set(j.id, j);
  renderJobs();
}
async function stream() {
  const r = await fetch('/v1/events', auth);
  if (!r.ok || !r.body) { setTimeout(stream, 2000); return; }
  const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\\n\\n')) >= 0) {
      const frame = buf.slice(0, i); buf = buf.slice(i + 2);
      const data = frame.split('\\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\\n');
      if (!data) continue;
      const j = JSON.parse(data); const prev = jobs.get(j.id); jobs.set(j.id, j); renderJobs();
      if (!prev || prev.state !== j.state) loadVolumes();
    }
  }
  setTimeout(stream, 1000);
}
loadHealth(); loadVolumes(); loadJobs(); stream();
</script>
</body></html>
`;
