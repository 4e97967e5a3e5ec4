// Logs: per node, its log records ({kind}.{name}.log.jsonl), custom events (.events.jsonl) and
// process output (stdout/stderr logs, nodes/<node>/*.log of a sim), filtered by level and text.

import { h, clear, fmtTime, fieldsText, fillSelect, levelRank, LEVELS } from "./util.js";

const MAX_LINES = 5000; // lines put on the page at once (the newest)
const STREAM_ORDER = { log: 0, events: 1, stdout: 2, stderr: 3 };
const LOG_KEYS = ["ts", "level", "logger", "message", "node", "kind", "thread", "exc"];

/** Node name -> its files, in the order the tab offers them. */
export function nodeFiles(model) {
  const byNode = new Map();
  for (const f of model.run.files || []) {
    if (f.stream === "lab" || !f.node) continue;
    if (!byNode.has(f.node)) byNode.set(f.node, []);
    byNode.get(f.node).push(f);
  }
  for (const files of byNode.values()) {
    files.sort((a, b) => (STREAM_ORDER[a.stream] ?? 9) - (STREAM_ORDER[b.stream] ?? 9) || a.path.localeCompare(b.path));
  }
  return new Map([...byNode].sort(([a], [b]) => a.localeCompare(b)));
}

function fileLabel(f) {
  return { log: "log", events: "events", stdout: "stdout", stderr: "stderr" }[f.stream] || f.path;
}

function mount(el, ctx) {
  const ui = (ctx.model.ui.logs ||= { node: "", path: "", level: "", text: "" });
  clear(el);
  const nodes = h("ul", { id: "log-nodes", class: "node-list" });
  const file = h("select", { id: "log-file", "aria-label": "file" });
  const level = h("select", { id: "log-level", "aria-label": "level" });
  fillSelect(level, [["", "all levels"], ...LEVELS.slice(1).map((l) => [l, `${l} and above`])], ui.level);
  const text = h("input", { id: "log-text", type: "search", placeholder: "filter text", value: ui.text });
  const count = h("span", { id: "log-count", class: "muted" });
  const download = h("a", { id: "log-download", class: "muted" }, "raw file");
  const lines = h("div", { id: "log-lines", class: "log-lines" });
  file.addEventListener("change", () => { ui.path = file.value; update(el, ctx); });
  level.addEventListener("change", () => { ui.level = level.value; update(el, ctx); });
  text.addEventListener("input", () => { ui.text = text.value; update(el, ctx); });
  el.append(h("div", { class: "logs-layout" },
    h("aside", {}, h("h3", {}, "Nodes"), nodes),
    h("div", { class: "logs-main" }, h("div", { class: "toolbar" }, file, level, text, count, download), lines)));
  el._pb = { nodes, file, level, text, count, lines, download, run: ctx.model.runId };
}

function lineView(path, index, raw, rec) {
  const row = h("div", { class: "logline", "data-path": path, "data-index": index });
  if (rec && "message" in rec && ("level" in rec || "logger" in rec)) {
    const level = String(rec.level || "INFO").toUpperCase();
    row.dataset.level = level;
    row.append(
      h("span", { class: "time" }, fmtTime(rec.ts)), " ",
      h("span", { class: `level level-${level}` }, level.padEnd(5)), " ",
      rec.logger ? h("span", { class: "logger" }, `${rec.logger}:`) : "", " ",
      h("span", { class: "msg" }, String(rec.message)));
    const extra = fieldsText(rec, LOG_KEYS);
    if (extra) row.append(" ", h("span", { class: "fields" }, extra));
    if (rec.exc) row.append(h("pre", { class: "exc" }, rec.exc));
  } else {
    row.append(h("span", { class: "raw" }, raw));
  }
  return row;
}

function update(el, ctx) {
  const { model } = ctx;
  const ui = model.ui.logs;
  const parts = el._pb;
  const byNode = nodeFiles(model);
  const focus = model.ui.focus && model.ui.focus.tab === "logs" ? model.ui.focus : null;
  if (focus) {
    ui.node = focus.node;
    ui.path = focus.path;
    ui.level = "";
    ui.text = "";
    parts.level.value = "";
    parts.text.value = "";
  }
  if (!byNode.has(ui.node)) ui.node = byNode.keys().next().value || "";
  clear(parts.nodes);
  for (const [node, files] of byNode) {
    const item = h("li", {}, h("button", {
      class: node === ui.node ? "selected" : "", "data-node": node,
      onclick: () => { ui.node = node; ui.path = ""; update(el, ctx); },
    }, node, h("span", { class: "muted" }, ` ${files.map(fileLabel).join(" · ")}`)));
    parts.nodes.append(item);
  }
  const files = byNode.get(ui.node) || [];
  ui.path = fillSelect(parts.file, files.map((f) => [f.path, `${fileLabel(f)} — ${f.path}`]), ui.path);
  const lines = clear(parts.lines);
  if (!files.length) {
    lines.append(h("p", { class: "message" }, "No node logs in this run."));
    parts.count.textContent = "";
    parts.download.removeAttribute("href");
    return;
  }
  parts.download.href = ctx.fileUrl(ui.path, true);
  const raw = model.texts[ui.path] || [];
  const recs = model.records[ui.path] || [];
  const minRank = ui.level ? levelRank(ui.level) : -1;
  const needle = ui.text.toLowerCase();
  const shown = [];
  for (let i = 0; i < raw.length; i++) {
    const rec = recs[i];
    if (minRank >= 0 && !(rec && rec.level !== undefined && levelRank(rec.level) >= minRank)) continue;
    if (needle && !raw[i].toLowerCase().includes(needle)) continue;
    shown.push(i);
  }
  const visible = shown.slice(-MAX_LINES);
  let target = null;
  for (const i of visible) {
    const row = lineView(ui.path, i, raw[i], recs[i]);
    if (focus && focus.index === i) { row.classList.add("highlight"); row.id = "log-focus"; target = row; }
    lines.append(row);
  }
  parts.count.textContent = `${shown.length} of ${raw.length} lines`
    + (shown.length > visible.length ? ` (the last ${visible.length} shown)` : "");
  if (focus) {
    model.ui.focus = null;
    if (target) requestAnimationFrame(() => target.scrollIntoView({ block: "center" }));
  }
}

export function render(el, ctx) {
  if (!el._pb || el._pb.run !== ctx.model.runId) mount(el, ctx);
  update(el, ctx);
}
