// The dashboard page: status pushed by the daemon as server-sent events, drawn into the tabs.
// Every string from the daemon (titles, URLs, errors, generated text) goes into the page with
// textContent, never as HTML: a page titled "<script>" shows as text.
"use strict";

const TOKEN_HEADER = "X-Crystalline-Token";
const MAX_HISTORY = 4000; // points kept in the page (the daemon keeps its own, bounded)
const MAX_TURNS = 50; // conversation turns kept in the page

// The token arrives in the URL's fragment (never sent to a server), is kept for this tab only
// and removed from the address bar.
function loadToken() {
  const m = /(?:^#|&)token=([A-Za-z0-9_-]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("crystalline-token", m[1]);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("crystalline-token");
}
const token = loadToken();

const $ = (id) => document.getElementById(id);
let points = [];
let last = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function num(v, digits) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "-";
  return digits === undefined ? v.toLocaleString() : v.toFixed(digits);
}

function duration(s) {
  if (!Number.isFinite(s)) return "-";
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function bytes(n) {
  if (!Number.isFinite(n)) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function cards(container, items) {
  container.replaceChildren(
    ...items.map(([label, value]) => {
      const c = el("div", null, "card");
      c.append(el("div", label, "label"), el("div", value, "value"));
      return c;
    }),
  );
}

// rows: array of objects; columns: [key, heading, formatter?]
function table(t, columns, rows) {
  const head = el("tr");
  for (const [, heading] of columns) head.append(el("th", heading));
  t.tHead.replaceChildren(head);
  t.tBodies[0].replaceChildren(
    ...rows.map((r) => {
      const tr = el("tr");
      for (const [key, , f] of columns) {
        const v = r[key];
        tr.append(el("td", f ? f(v) : v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : v));
      }
      return tr;
    }),
  );
}

function countsTable(t, counts) {
  const rows = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
  t.tBodies[0].replaceChildren(
    ...rows.map(([k, v]) => {
      const tr = el("tr");
      tr.append(el("td", k), el("td", num(v)));
      return tr;
    }),
  );
}

const TIME_KEYS = ["created", "next_visit", "next_at", "last_fetch", "fetched_at"];

function cell(key, v) {
  if (key === "surprise" && Number.isFinite(v)) return v.toFixed(3);
  if (TIME_KEYS.includes(key) && Number.isFinite(v) && v > 1e9) {
    const d = v - Date.now() / 1000;
    return Math.abs(d) < 86400 ? `${d >= 0 ? "in " : ""}${duration(Math.abs(d))}${d < 0 ? " ago" : ""}` : new Date(v * 1000).toLocaleString();
  }
  return v;
}

// a list of objects from the daemon shown as a table with the union of their keys
function objectsTable(t, list, preferred) {
  const rows = Array.isArray(list) ? list.filter((x) => x && typeof x === "object").slice(0, 200) : [];
  const keys = [...preferred.filter((k) => rows.some((r) => k in r))];
  for (const r of rows) for (const k of Object.keys(r)) if (!keys.includes(k)) keys.push(k);
  table(t, keys.map((k) => [k, k.replace(/_/g, " "), (v) => {
    const c = cell(k, v);
    return c === undefined || c === null ? "" : typeof c === "object" ? JSON.stringify(c) : c;
  }]), rows);
}

// ---- tabs ---------------------------------------------------------------------------------
for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => {
    for (const x of document.querySelectorAll("#tabs button")) x.classList.toggle("active", x === b);
    for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${b.dataset.tab}`);
    if (last) render(last);
  });
}

// ---- rendering ----------------------------------------------------------------------------
function render(s) {
  last = s;
  const t = s.training || {};
  const g = s.generation || {};
  const state = $("state");
  state.textContent = s.state || "?";
  state.className = `pill ${s.state || ""}`;
  $("uptime").textContent = `up ${duration(s.uptime_s)}`;
  $("last-error").textContent = s.last_error || "";
  const health = s.health || {};
  cards($("overview-cards"), [
    // the daemon's own verdict, the one `crystalline status` exits by
    ["health", health.verdict || "-"],
    ["training", t.state],
    ["step", num(t.step)],
    ["tokens", num(t.tokens)],
    ["tokens/s", num(t.tokens_per_s, 0)],
    ["loss", num(t.loss, 4)],
    ["bits per byte", num(t.bpb, 4)],
    ["perplexity", num(t.perplexity, 2)],
    ["validation loss", num(t.val_loss, 4)],
    ["validation bits per byte", num(t.val_bpb, 4)],
    ["validation perplexity", num(t.val_perplexity, 2)],
    ["learning rate", t.lr === undefined ? "-" : Number(t.lr).toExponential(2)],
    ["generation CPU", percent(g.cpu_share)],
  ]);
  renderCluster(s.cluster, t.params_digest);
  renderWorkers(t.workers || []);
  renderCrawler(s.crawler || {});
  renderIngest(s.ingest || {});
  renderCheckpoints(s);
  drawCharts();
}

function percent(share) {
  return Number.isFinite(share) ? `${(share * 100).toFixed(0)} %` : "-";
}

// a rank, or none: null in status, -1 in a member's own info, while not in a group (joining,
// forming, paused, cut off: its state says which); shown as "not in a group", never as -1
function inGroup(rank) {
  return Number.isInteger(rank) && rank >= 0;
}

// --cluster: this member's place, then a card per member of its generation (address, rank,
// step, last allreduce, data share, state); the section stays hidden without a cluster
function renderCluster(k, digest) {
  $("cluster").hidden = !k;
  if (!k) {
    $("cluster-cards").replaceChildren();
    $("cluster-members").replaceChildren();
    return;
  }
  cards($("cluster-cards"), [
    ["cluster", k.state],
    ["generation", k.generation ?? "-"],
    ["rank", inGroup(k.rank) ? `${k.rank} of ${k.world}` : "not in a group"],
    ["rendezvous", k.rendezvous],
    ["re-formed", num(k.reforms)],
    ["allreduce payload", bytes(k.allreduce_payload_bytes)],
    ...(k.refused_connections === undefined ? [] : [["refused connections", num(k.refused_connections)]]),
    ["params digest", digest || "-"],
  ]);
  const members = Array.isArray(k.members) ? k.members.filter((m) => m && typeof m === "object") : [];
  $("cluster-members").replaceChildren(
    ...members.map((m) => {
      const c = el("div", null, "card member");
      c.dataset.address = String(m.address ?? "");
      c.dataset.rank = String(m.rank ?? "");
      c.dataset.step = String(m.step ?? "");
      c.dataset.state = String(m.state ?? "");
      c.append(
        el("div", `${m.address ?? "?"}${m.address === k.address ? " (this member)" : ""}`, "label"),
        el("div", `${inGroup(m.rank) ? `rank ${m.rank}` : "not in a group"} · step ${num(m.step)}`, "value"),
        el("div", `allreduce ${num(m.allreduce_ms, 1)} ms · ${bytes(m.allreduce_bytes)}`, "allreduce"),
        el("div", `data share ${percent(m.data_share)}`, "share"),
        el("div", m.state ?? "-", "mstate"),
      );
      return c;
    }),
  );
}

function renderWorkers(workers) {
  const ring = $("ring");
  const boxes = ring.querySelectorAll(".worker");
  if (boxes.length !== workers.length) {
    for (const b of boxes) b.remove();
    workers.forEach((w, i) => {
      const box = el("div", null, "worker");
      const a = (2 * Math.PI * i) / workers.length - Math.PI / 2;
      box.style.left = `${330 + 310 * Math.cos(a)}px`;
      box.style.top = `${345 + 330 * Math.sin(a)}px`;
      box.append(el("div", "", "name"), el("div", "", "wstate"), el("div", "", "times"), el("div", "", "restarts"));
      ring.append(box);
    });
  }
  ring.querySelectorAll(".worker").forEach((box, i) => {
    const w = workers[i];
    box.dataset.state = w.state || "";
    box.dataset.steps = String(w.steps ?? "");
    box.querySelector(".name").textContent = `worker ${w.id} · pid ${w.pid ?? "-"}`;
    box.querySelector(".wstate").textContent = `${w.state} · ${num(w.steps)} steps`;
    box.querySelector(".times").textContent = `compute ${num(w.compute_ms, 1)} ms · wait ${num(w.wait_ms, 1)} ms`;
    box.querySelector(".restarts").textContent = `restarts ${num(w.restarts)}`;
  });
}

function renderCrawler(c) {
  const hosts = c.hosts;
  cards($("crawler-cards"), [
    ["state", c.state],
    ["fetched", num(c.fetched)],
    ["stored", num(c.stored)],
    ["queued", num(c.queued)],
    ["in flight", num(c.in_flight)],
    ["errors", num(c.errors)],
    ["hosts", Array.isArray(hosts) ? num(hosts.length) : num(hosts)],
    ["robots deferred", num(c.robots_deferred)],
  ]);
  objectsTable($("hosts-table"), Array.isArray(hosts) ? hosts : [], ["host", "fetched", "queued", "deferred", "errors", "next_visit"]);
  objectsTable($("pages-table"), c.latest || [], ["source", "title", "state", "reason", "language", "tokens"]);
}

function renderIngest(i) {
  cards($("ingest-cards"), [
    ["state", i.state],
    ["documents", num(i.documents)],
    ["duplicates", num(i.duplicates)],
    ["filtered", num(i.filtered)],
    ["failed", num(i.failed)],
    ["pending", num(i.pending)],
    ["tokens", num(i.tokens)],
    ["validation documents", num(i.validation_documents)],
  ]);
  countsTable($("filtered-table"), i.filtered_by_rule);
  countsTable($("duplicates-table"), i.duplicates_by_rule);
  objectsTable($("documents-table"), i.latest || [], ["title", "kind", "language", "surprise", "tokens", "state", "reason"]);
}

function renderCheckpoints(s) {
  const t = s.training || {};
  $("params-version").textContent = num(t.params_version);
  $("served-step").textContent = num(t.step);
  table(
    $("checkpoints-table"),
    [["name", "checkpoint"], ["step", "step", num], ["age_s", "age", duration], ["bytes", "size", bytes]],
    s.checkpoints || [],
  );
}

function series(key) {
  return points.map((p) => [p.t, p[key]]);
}

function rate(key, per) {
  const out = [];
  for (let k = 1; k < points.length; k++) {
    const a = points[k - 1], b = points[k];
    if (Number.isFinite(a[key]) && Number.isFinite(b[key]) && b.t > a.t && b[key] >= a[key]) {
      out.push([b.t, ((b[key] - a[key]) / (b.t - a.t)) * per]);
    }
  }
  return out;
}

// one validation line per source ("val:<source>" in the history's points, training.sources)
const SOURCE_COLORS = ["#f07178", "#c3e88d", "#89ddff", "#f78c6c", "#c792ea", "#ffcb6b", "#82aaff", "#ff5370"];
function sourceSeries() {
  const keys = [];
  for (const p of points) {
    for (const k of Object.keys(p)) if (k.startsWith("val:") && !keys.includes(k)) keys.push(k);
  }
  return keys.slice(0, 16).map((k, i) => ({
    name: `val: ${k.slice(4)}`, color: SOURCE_COLORS[i % SOURCE_COLORS.length], points: series(k),
  }));
}

function drawCharts() {
  const active = document.querySelector(".tab.active");
  if (!active) return;
  if (active.id === "tab-overview") {
    drawChart($("loss-chart"), [
      { name: "loss", color: "#5fb3f9", points: series("loss") },
      { name: "validation", color: "#e0b341", points: series("val_loss") },
      ...sourceSeries(),
    ]);
    drawChart($("lr-chart"), [{ name: "learning rate", color: "#b48ef0", points: series("lr") }]);
    drawChart($("tps-chart"), [{ name: "tokens/s", color: "#4cc27a", points: series("tokens_per_s") }]);
  } else if (active.id === "tab-crawler") {
    drawChart($("pages-chart"), [{ name: "pages/min", color: "#4cc27a", points: rate("pages", 60) }]);
  }
}

// ---- live updates -------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("history", (e) => { points = JSON.parse(e.data).points.slice(-MAX_HISTORY); drawCharts(); });
  source.addEventListener("points", (e) => {
    points = points.concat(JSON.parse(e.data).points).slice(-MAX_HISTORY);
    drawCharts();
  });
  source.addEventListener("status", (e) => render(JSON.parse(e.data)));
  source.onerror = () => {
    const state = $("state");
    state.textContent = "disconnected";
    state.className = "pill disconnected";
  };
}

// ---- actions (need the token) -------------------------------------------------------------
async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers[TOKEN_HEADER] = token;
  return fetch(path, { method: "POST", headers, body: JSON.stringify(body), credentials: "omit" });
}

async function action(name, body, out) {
  try {
    const r = await post(`/api/${name}`, body);
    const reply = await r.json().catch(() => ({ ok: false, error: `HTTP ${r.status}` }));
    out.textContent = reply.ok ? `${name}: ${JSON.stringify(reply.data)}` : `${name} refused: ${reply.error}`;
    out.className = reply.ok ? "muted" : "error";
  } catch (err) {
    out.textContent = `${name} failed: ${err}`;
    out.className = "error";
  }
}

for (const b of document.querySelectorAll("button[data-action]")) {
  b.addEventListener("click", () => {
    const name = b.dataset.action;
    if (name === "stop" && !confirm("Checkpoint and stop the daemon?")) return;
    action(name, b.dataset.what ? { what: b.dataset.what } : {}, $("action-result"));
  });
}

$("add-url-form").addEventListener("submit", (e) => {
  e.preventDefault();
  action("add-url", { url: $("add-url").value }, $("action-result"));
});

// ---- chat ---------------------------------------------------------------------------------
function turn(cls, text) {
  const conv = $("conversation");
  const t = el("div", null, `turn ${cls}`);
  const body = el("span", text, "text");
  t.append(body);
  conv.append(t);
  while (conv.children.length > MAX_TURNS * 2) conv.firstChild.remove();
  return t;
}

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const prompt = $("prompt").value;
  const send = $("send");
  send.disabled = true;
  turn("prompt", prompt);
  const reply = turn("reply", "");
  const text = reply.querySelector(".text");
  const meta = el("div", "", "meta");
  reply.append(meta);
  $("chat-result").textContent = "";
  try {
    const r = await post("/api/generate", {
      prompt,
      temperature: Number($("temperature").value),
      top_k: Number($("top-k").value),
      n: Number($("tokens").value),
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
      throw new Error(err.error);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.text !== undefined) text.textContent += msg.text;
        if (msg.error) throw new Error(msg.error);
        if (msg.done) {
          meta.textContent = `${msg.tokens} tokens in ${msg.seconds} s` +
            (msg.tokens_per_s ? ` (${msg.tokens_per_s.toFixed(1)} tokens/s)` : "") +
            (msg.version !== undefined ? ` · parameters v${msg.version}` : "") +
            (msg.step !== undefined ? ` · weights of step ${msg.step}` : "") +
            (msg.source ? ` · ${msg.source}` : "");
        }
      }
    }
  } catch (err) {
    $("chat-result").textContent = `generate failed: ${err.message}`;
    $("chat-result").className = "error";
  } finally {
    send.disabled = false;
  }
});

$("token-state").textContent = token ? "actions enabled" : "read-only (open the URL `crystalline dashboard` prints to act)";
connect();

// ---- the spiral ---------------------------------------------------------------------------
// Token i is drawn at the i-th prime's place on the Ulam spiral (1 in the centre, then
// counter-clockwise rings), coloured by the embeddings' first principal component.
function primes(count) {
  const limit = Math.max(16, Math.ceil(count * (Math.log(count + 2) + Math.log(Math.log(count + 2)) + 2)));
  const sieve = new Uint8Array(limit + 1);
  const out = [];
  for (let n = 2; n <= limit && out.length < count; n++) {
    if (sieve[n]) continue;
    out.push(n);
    for (let m = n * n; m <= limit; m += n) sieve[m] = 1;
  }
  return out;
}

// (x, y) of n on the Ulam spiral, 1 at (0, 0)
function ulam(n) {
  if (n === 1) return [0, 0];
  const k = Math.ceil((Math.sqrt(n) - 1) / 2); // ring
  const side = 2 * k;
  const last = (2 * k + 1) ** 2;
  const d = last - n;
  if (d < side) return [k - d, -k];
  if (d < 2 * side) return [-k, -k + (d - side)];
  if (d < 3 * side) return [-k + (d - 2 * side), k];
  return [k, k - (d - 3 * side)];
}

let spiral = null; // {labels, cells: Map "x,y" -> token, scale, half}

function hue(v) {
  // 0..255 -> a blue-to-yellow ramp
  const t = v / 255;
  return `rgb(${Math.round(40 + 215 * t)},${Math.round(90 + 140 * t)},${Math.round(230 - 180 * t)})`;
}

async function loadSpiral() {
  const info = $("spiral-info");
  info.textContent = "loading the vocabulary";
  try {
    const r = await fetch("/api/spiral");
    const reply = await r.json();
    if (!reply.ok) throw new Error(reply.error);
    drawSpiral(reply.data);
    info.textContent = `${reply.data.vocab} tokens, parameters v${reply.data.version}`;
  } catch (err) {
    info.textContent = `no spiral: ${err.message}`;
  }
}

function drawSpiral(data) {
  const canvas = $("spiral");
  const ctx = canvas.getContext("2d");
  const colour = Uint8Array.from(atob(data.colour), (c) => c.charCodeAt(0));
  const ps = primes(data.vocab);
  const k = Math.ceil((Math.sqrt(ps[ps.length - 1]) - 1) / 2);
  const scale = canvas.width / (2 * k + 1);
  const half = canvas.width / 2;
  const cells = new Map();
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const dot = Math.max(1, scale * 0.8);
  ps.forEach((p, i) => {
    const [x, y] = ulam(p);
    cells.set(`${x},${y}`, i);
    ctx.fillStyle = hue(colour[i]);
    ctx.fillRect(half + (x - 0.5) * scale, half + (y - 0.5) * scale, dot, dot);
  });
  canvas.dataset.points = String(ps.length);
  spiral = { labels: data.labels, cells, scale, half };
}

$("spiral").addEventListener("mousemove", (e) => {
  const tip = $("spiral-tip");
  if (!spiral) return;
  const rect = e.target.getBoundingClientRect();
  const px = ((e.clientX - rect.left) * e.target.width) / rect.width;
  const py = ((e.clientY - rect.top) * e.target.height) / rect.height;
  const x = Math.round((px - spiral.half) / spiral.scale);
  const y = Math.round((py - spiral.half) / spiral.scale);
  const token = spiral.cells.get(`${x},${y}`);
  if (token === undefined) {
    tip.style.display = "none";
    return;
  }
  tip.textContent = `token ${token}: ${spiral.labels[token]}`;
  tip.style.left = `${px + 12}px`;
  tip.style.top = `${py + 12}px`;
  tip.style.display = "block";
});
$("spiral").addEventListener("mouseleave", () => { $("spiral-tip").style.display = "none"; });
$("spiral-refresh").addEventListener("click", loadSpiral);
document.querySelector("#tabs button[data-tab=spiral]").addEventListener("click", () => { if (!spiral) loadSpiral(); });
