// Timeline: custom events (records from the nodes' .events.jsonl files, i.e. loggers named
// "..._events.Name") and the lab's own events, on one time axis with a row per node. A custom
// event jumps to its line in the node's log; a lab event to its row in Events.

import { h, s, clear, fmtTime, fieldsText } from "./util.js";
import { labEvents } from "./events.js";

const LEFT = 150;
const ROW = 30;
const TOP = 34;

function eventName(rec) {
  const logger = String(rec.logger || "");
  const at = logger.indexOf("_events.");
  if (at >= 0) return logger.slice(at + "_events.".length) || rec.message;
  return rec.event || rec.name || rec.kind || rec.message || "event";
}

/** Every item: {ts, node, label, type: "custom" | "lab", path, index, rec}. */
export function timelineItems(model) {
  const items = [];
  for (const f of model.run.files || []) {
    if (f.stream !== "events" || !f.node) continue;
    (model.records[f.path] || []).forEach((rec, index) => {
      if (rec && typeof rec.ts === "number") {
        items.push({ ts: rec.ts, node: f.node, label: eventName(rec), type: "custom", path: f.path, index, rec });
      }
    });
  }
  for (const { rec, index } of labEvents(model)) {
    if (typeof rec.ts !== "number") continue;
    items.push({ ts: rec.ts, node: rec.node || "lab", label: rec.kind, type: "lab", path: "events.jsonl", index, rec });
  }
  items.sort((a, b) => a.ts - b.ts);
  return items;
}

/** Where a custom event's record is in the node's log (same time and message), else itself. */
function logTarget(model, item) {
  const log = (model.run.files || []).find((f) => f.node === item.node && f.stream === "log");
  if (log) {
    const recs = model.records[log.path] || [];
    const index = recs.findIndex((r) => r && r.ts === item.rec.ts && r.message === item.rec.message);
    if (index >= 0) return { node: item.node, path: log.path, index };
  }
  return { node: item.node, path: item.path, index: item.index };
}

function jump(ctx, item) {
  if (item.type === "custom") ctx.go("logs", logTarget(ctx.model, item));
  else ctx.go("events", { index: item.index });
}

function rowsOf(model, items) {
  const st = model.state || {};
  const order = ["lab", ...(st.routers || []).map((r) => r.name), ...(st.devices || []).map((d) => d.name)];
  const rows = [];
  for (const name of [...order, ...items.map((i) => i.node)]) if (!rows.includes(name)) rows.push(name);
  return rows.filter((name) => items.some((i) => i.node === name));
}

function mount(el, ctx) {
  const ui = (ctx.model.ui.timeline ||= { lab: true, custom: true });
  clear(el);
  const lab = h("input", { type: "checkbox", id: "tl-lab" });
  const custom = h("input", { type: "checkbox", id: "tl-custom" });
  lab.checked = ui.lab;
  custom.checked = ui.custom;
  lab.addEventListener("change", () => { ui.lab = lab.checked; update(el, ctx); });
  custom.addEventListener("change", () => { ui.custom = custom.checked; update(el, ctx); });
  const chart = h("div", { id: "timeline-chart", class: "svg-scroll" });
  const list = h("ol", { id: "timeline-list", class: "timeline-list" });
  el.append(h("div", { class: "toolbar" },
    h("label", {}, custom, " custom events"), h("label", {}, lab, " lab events"),
    h("span", { id: "timeline-count", class: "muted" })), chart, h("h3", {}, "Custom events"), list);
  el._pb = { chart, list, count: el.querySelector("#timeline-count"), run: ctx.model.runId };
}

function update(el, ctx) {
  const { model } = ctx;
  const ui = model.ui.timeline;
  const parts = el._pb;
  const all = timelineItems(model);
  const items = all.filter((i) => (i.type === "lab" ? ui.lab : ui.custom));
  clear(parts.chart);
  clear(parts.list);
  const customs = all.filter((i) => i.type === "custom");
  parts.count.textContent = `${customs.length} custom, ${all.length - customs.length} lab events`;
  for (const item of customs) {
    parts.list.append(h("li", {}, h("button", {
      class: "tl-link", "data-node": item.node, "data-label": item.label, onclick: () => jump(ctx, item),
    }, h("span", { class: "time" }, fmtTime(item.ts)), " ", h("b", {}, item.node), " ", item.label, " ",
    h("span", { class: "muted" }, fieldsText(item.rec, ["ts", "level", "logger", "node", "kind", "thread"])))));
  }
  if (!customs.length) {
    parts.list.append(h("li", { class: "muted" },
      "No custom events. Log with a logger named like \"myapp._events.PeerConnected\" inside a node to get some."));
  }
  if (!items.length) {
    parts.chart.append(h("p", { class: "message" }, "Nothing to show on the timeline."));
    return;
  }
  const rows = rowsOf(model, items);
  const t0 = items[0].ts;
  const t1 = Math.max(items[items.length - 1].ts, t0 + 0.001);
  const width = Math.max(900, (el.clientWidth || 1000) - 20);
  const plot = width - LEFT - 30;
  const x = (ts) => LEFT + ((ts - t0) / (t1 - t0)) * plot;
  const height = TOP + rows.length * ROW + 10;
  const svg = s("svg", { id: "timeline-svg", width, height, viewBox: `0 0 ${width} ${height}` });
  const span = t1 - t0;
  const step = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]
    .find((st) => span / st <= 10) || 1200;
  for (let t = 0; t <= span + 1e-9; t += step) {
    const px = x(t0 + t);
    svg.append(s("line", { x1: px, x2: px, y1: TOP - 8, y2: height - 6, class: "tick" }),
      s("text", { x: px, y: TOP - 14, class: "tick-label", "text-anchor": "middle" },
        `+${step < 1 ? (t * 1000).toFixed(0) + "ms" : t.toFixed(step < 10 ? 1 : 0) + "s"}`));
  }
  rows.forEach((name, r) => {
    const y = TOP + r * ROW + ROW / 2;
    svg.append(s("line", { x1: LEFT, x2: width - 20, y1: y, y2: y, class: "row-line" }),
      s("text", { x: LEFT - 10, y: y + 4, class: "row-label", "text-anchor": "end" }, name));
  });
  for (const item of items) {
    const y = TOP + rows.indexOf(item.node) * ROW + ROW / 2;
    const mark = item.type === "custom"
      ? s("circle", { cx: x(item.ts), cy: y, r: 7 })
      : s("rect", { x: x(item.ts) - 4, y: y - 4, width: 8, height: 8 });
    const g = s("g", { class: `tl-item ${item.type}`, "data-node": item.node, "data-label": item.label,
      tabindex: 0, role: "button", onclick: () => jump(ctx, item) }, mark,
    s("title", {}, `${fmtTime(item.ts)} ${item.node}: ${item.label}`));
    if (item.type === "custom") {
      const px = x(item.ts);
      const anchor = px > width - 90 ? "end" : px < LEFT + 60 ? "start" : "middle";
      g.append(s("text", { x: px, y: y - 10, class: "tl-text", "text-anchor": anchor }, item.label));
    }
    svg.append(g);
  }
  parts.chart.append(svg);
}

export function render(el, ctx) {
  if (!el._pb || el._pb.run !== ctx.model.runId) mount(el, ctx);
  update(el, ctx);
}
