// The devtools page: picks a run, loads it, keeps it live (server-sent events), shows a tab.
//
// Routes (location.hash): #/run/<run id>/<tab>, and on the results server #/inv/<invocation>
// (optionally followed by /run/<run id>/<tab>): the runs of one pushed invocation.

import { h, clear, parseLine } from "./util.js";
import * as topology from "./topology.js";
import * as events from "./events.js";
import * as logs from "./logs.js";
import * as timeline from "./timeline.js";
import * as results from "./results.js";
import * as captures from "./captures.js";

const TABS = { topology, events, logs, timeline, results, captures };
const RUNS_REFRESH_MS = 4000;

const model = {
  config: {},
  runs: [],
  runId: null,
  run: null,
  tab: "topology",
  texts: {}, // path -> raw lines
  records: {}, // path -> parsed lines (object, or null for plain text), index for index
  state: null,
  captures: [],
  ui: {}, // what tabs remember for the current run (filters, the selected node, a pending jump)
  inv: null,
  version: 0, // bumped on every change: tabs re-render only when it moved
};

let stream = null;
let renderTimer = null;
const rendered = {};

const $ = (id) => document.getElementById(id);

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) {
    let detail = "";
    try { detail = (await response.json()).error || ""; } catch { /* not JSON */ }
    throw new Error(`${response.status} ${detail || response.statusText}`);
  }
  return response.json();
}

function message(text) {
  const el = $("message");
  el.hidden = !text;
  el.textContent = text || "";
}

// ---- routing -----------------------------------------------------------------------------

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const route = { inv: null, run: null, tab: null };
  let i = 0;
  if (parts[i] === "inv") { route.inv = parts[i + 1] || null; i += 2; }
  if (parts[i] === "run") { route.run = parts[i + 1] || null; route.tab = parts[i + 2] || null; }
  return route;
}

function hashFor(runId, tab) {
  let hash = "#/";
  if (model.inv) hash += `inv/${encodeURIComponent(model.inv.id)}/`;
  if (runId) hash += `run/${encodeURIComponent(runId)}/${tab || model.tab}`;
  return hash;
}

function navigate(runId, tab) {
  const hash = hashFor(runId, tab);
  if (location.hash !== hash) location.hash = hash;
  else route();
}

async function route() {
  const r = parseHash();
  if (r.inv && (!model.inv || model.inv.id !== r.inv)) {
    try {
      model.inv = await getJSON(`api/inv/${encodeURIComponent(r.inv)}`);
    } catch (err) {
      message(`Invocation ${r.inv}: ${err.message}`);
      return;
    }
    showInvocation();
    await refreshRuns();
  }
  if (r.tab && TABS[r.tab]) model.tab = r.tab;
  const runId = r.run ?? pickDefaultRun();
  if (runId && runId !== model.runId) await loadRun(runId);
  else if (!runId) showNoRuns();
  showTab();
}

function pickDefaultRun() {
  if (!model.runs.length) return null;
  const sims = model.runs.filter((run) => run.kind !== "simrun");
  return (sims[0] || model.runs[0]).id;
}

function showNoRuns() {
  const where = model.config.root ? ` under ${model.config.root}` : "";
  message(`No runs${where} yet. A lab writes one when it has an outdir (LabOpts(outdir=...) or PATCHBAY_OUTDIR).`);
}

function showInvocation() {
  const el = clear($("inv-info"));
  if (!model.inv) return;
  const meta = model.inv.run_json || {};
  el.append(h("a", { href: "runs" }, model.inv.project), " / ", h("b", {}, model.inv.id));
  if (meta.branch) el.append(" ", h("span", { class: "badge" }, meta.branch));
  if (meta.commit) el.append(" ", h("code", {}, String(meta.commit).slice(0, 10)));
  if (meta.pr_url) el.append(" ", h("a", { href: meta.pr_url }, `PR #${meta.pr ?? ""}`));
  if (meta.title) el.append(" ", h("span", { class: "muted" }, meta.title));
}

// ---- the run list ------------------------------------------------------------------------

function runLabel(run) {
  const status = run.status ? ` [${run.status}]` : "";
  const latest = run.latest ? " (latest)" : "";
  if (run.kind === "simrun") return `${run.label} — overview${status}${latest}`;
  if (run.kind === "sim") return `${run.label}${status}`;
  return `${run.label} — ${run.id}${latest}`;
}

function fillRunSelect() {
  const select = $("run-select");
  const keep = model.runId;
  clear(select);
  const labs = model.runs.filter((run) => run.kind === "lab");
  const groups = new Map();
  for (const run of model.runs) {
    if (run.kind === "lab") continue;
    const key = run.kind === "simrun" ? run.id : run.parent;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(run);
  }
  if (labs.length) {
    const group = h("optgroup", { label: "Labs" });
    for (const run of labs) group.append(h("option", { value: run.id }, runLabel(run)));
    select.append(group);
  }
  for (const [key, members] of groups) {
    members.sort((a, b) => (a.kind === "simrun" ? -1 : b.kind === "simrun" ? 1 : a.label.localeCompare(b.label)));
    const group = h("optgroup", { label: key });
    for (const run of members) group.append(h("option", { value: run.id }, runLabel(run)));
    select.append(group);
  }
  if (keep && model.runs.some((run) => run.id === keep)) select.value = keep;
}

async function refreshRuns() {
  const prefix = model.inv ? model.inv.prefix : "";
  try {
    const data = await getJSON(`api/runs${prefix ? `?prefix=${encodeURIComponent(prefix)}` : ""}`);
    const before = JSON.stringify(model.runs.map((r) => [r.id, r.status]));
    model.runs = data.runs;
    if (JSON.stringify(model.runs.map((r) => [r.id, r.status])) !== before) fillRunSelect();
  } catch (err) {
    message(`Cannot list runs: ${err.message}`);
  }
}

// ---- one run -----------------------------------------------------------------------------

function setText(path, lines) {
  model.texts[path] = lines.slice();
  model.records[path] = lines.map(parseLine);
}

function appendText(path, lines) {
  if (!model.texts[path]) setText(path, []);
  for (const line of lines) {
    model.texts[path].push(line);
    model.records[path].push(parseLine(line));
  }
}

async function loadRun(runId) {
  if (stream) { stream.close(); stream = null; }
  setLive(false);
  let run;
  try {
    run = await getJSON(`api/run?run=${encodeURIComponent(runId)}`);
  } catch (err) {
    message(`Run ${runId}: ${err.message}`);
    return;
  }
  message("");
  model.runId = runId;
  model.run = run;
  model.state = run.state;
  model.captures = run.captures;
  model.texts = {};
  model.records = {};
  model.ui = {};
  for (const [path, text] of Object.entries(run.texts)) setText(path, text.lines);
  model.version++;
  for (const key of Object.keys(rendered)) delete rendered[key];
  $("run-select").value = runId;
  const status = run.sim?.status || run.manifest?.status || "";
  $("run-status").textContent = status;
  $("run-status").hidden = !status;
  document.title = `${run.label} — patchbay devtools`;
  openStream(run);
}

function openStream(run) {
  const since = {};
  for (const [path, text] of Object.entries(run.texts)) since[path] = text.offset;
  const url = `api/stream?run=${encodeURIComponent(run.id)}&since=${encodeURIComponent(JSON.stringify(since))}`
    + `&state=${encodeURIComponent(JSON.stringify(run.state_mtime))}`;
  const es = new EventSource(url);
  stream = es;
  es.onopen = () => setLive(true);
  es.onerror = () => setLive(false);
  es.addEventListener("lines", (ev) => {
    const data = JSON.parse(ev.data);
    if (data.reset) setText(data.path, data.lines);
    else appendText(data.path, data.lines);
    changed();
  });
  es.addEventListener("file", (ev) => {
    const file = JSON.parse(ev.data);
    if (!model.run.files.some((f) => f.path === file.path)) model.run.files.push(file);
    if (!model.texts[file.path]) setText(file.path, []);
    changed();
  });
  es.addEventListener("state", (ev) => {
    model.state = JSON.parse(ev.data);
    model.run.state = model.state;
    changed();
  });
  es.addEventListener("captures", (ev) => {
    model.captures = JSON.parse(ev.data);
    changed();
  });
}

function setLive(on) {
  const el = $("live");
  el.className = `live ${on ? "on" : "off"}`;
  el.textContent = on ? "live" : "offline";
}

function changed() {
  model.version++;
  if (renderTimer) return;
  // Lines come in bursts: render at most a few times a second.
  renderTimer = setTimeout(() => { renderTimer = null; renderTab(); }, 150);
}

// ---- tabs --------------------------------------------------------------------------------

function showTab() {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === model.tab));
  }
  for (const section of document.querySelectorAll("main .tab")) section.hidden = section.dataset.tab !== model.tab;
  renderTab();
}

function renderTab() {
  if (!model.run) return;
  const el = $(`tab-${model.tab}`);
  const key = `${model.runId}#${model.version}`;
  if (rendered[model.tab] === key && !model.ui.focus) return;
  rendered[model.tab] = key;
  try {
    TABS[model.tab].render(el, ctx);
  } catch (err) {
    console.error(err);
    clear(el).append(h("p", { class: "message" }, `This tab failed to render: ${err.message}`));
  }
}

// What tabs get: the model, and a way to send the user to another tab (with a focus, e.g.
// a log line to scroll to).
const ctx = {
  model,
  go(tab, focus) {
    model.ui.focus = focus ? { tab, ...focus } : null;
    model.tab = tab;
    navigate(model.runId, tab);
    showTab();
  },
  selectRun(runId) { navigate(runId, model.tab); },
  fileUrl(path, download = false) {
    return `api/file?run=${encodeURIComponent(model.runId)}&path=${encodeURIComponent(path)}${download ? "&download=1" : ""}`;
  },
};

async function start() {
  try { model.config = await getJSON("api/config"); } catch { model.config = {}; }
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => { model.tab = button.dataset.tab; navigate(model.runId, model.tab); showTab(); });
  }
  $("run-select").addEventListener("change", (ev) => navigate(ev.target.value, model.tab));
  window.addEventListener("hashchange", route);
  const r = parseHash();
  if (model.config.mode === "server" && !r.inv) {
    // The results server holds every project's runs: start from its index.
    location.replace("runs");
    return;
  }
  if (!r.inv) await refreshRuns();
  await route();
  setInterval(async () => {
    await refreshRuns();
    if (!model.runId && model.runs.length) route(); // the first run appeared
  }, RUNS_REFRESH_MS);
}

start();
