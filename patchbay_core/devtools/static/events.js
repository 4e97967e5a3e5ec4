// Events: the lab's events.jsonl as a table, filtered by kind, node and text.

import { h, clear, fmtTime, fieldsText, fillSelect } from "./util.js";

const SKIP = ["ts", "kind", "node"];

export function labEvents(model) {
  return (model.records["events.jsonl"] || [])
    .map((rec, index) => (rec && rec.kind ? { rec, index } : null))
    .filter(Boolean);
}

function mount(el, ctx) {
  const ui = (ctx.model.ui.events ||= { kind: "", node: "", text: "" });
  clear(el);
  const kind = h("select", { id: "events-kind", "aria-label": "kind" });
  const node = h("select", { id: "events-node", "aria-label": "node" });
  const text = h("input", { id: "events-text", type: "search", placeholder: "filter text", value: ui.text });
  const count = h("span", { id: "events-count", class: "muted" });
  const table = h("table", { id: "events-table", class: "grid" },
    h("thead", {}, h("tr", {}, h("th", {}, "time"), h("th", {}, "node"), h("th", {}, "kind"), h("th", {}, "details"))),
    h("tbody"));
  kind.addEventListener("change", () => { ui.kind = kind.value; update(el, ctx); });
  node.addEventListener("change", () => { ui.node = node.value; update(el, ctx); });
  text.addEventListener("input", () => { ui.text = text.value; update(el, ctx); });
  el.append(h("div", { class: "toolbar" }, kind, node, text, count), table);
  el._pb = { kind, node, text, count, tbody: table.tBodies[0], run: ctx.model.runId };
}

function update(el, ctx) {
  const { model } = ctx;
  const ui = model.ui.events;
  const parts = el._pb;
  const all = labEvents(model);
  const kinds = [...new Set(all.map((e) => e.rec.kind))].sort();
  const nodes = [...new Set(all.map((e) => e.rec.node ?? "(lab)"))].sort();
  ui.kind = fillSelect(parts.kind, [["", `all kinds (${kinds.length})`], ...kinds.map((k) => [k, k])], ui.kind);
  ui.node = fillSelect(parts.node, [["", "all nodes"], ...nodes.map((n) => [n, n])], ui.node);
  const needle = ui.text.toLowerCase();
  const shown = all.filter(({ rec }) => (!ui.kind || rec.kind === ui.kind)
    && (!ui.node || (rec.node ?? "(lab)") === ui.node)
    && (!needle || JSON.stringify(rec).toLowerCase().includes(needle)));
  const focus = model.ui.focus && model.ui.focus.tab === "events" ? model.ui.focus : null;
  const tbody = clear(parts.tbody);
  let target = null;
  for (const { rec, index } of shown) {
    const row = h("tr", { "data-index": index, class: "event-row", "data-kind": rec.kind },
      h("td", { class: "time" }, fmtTime(rec.ts)),
      h("td", {}, rec.node ?? ""),
      h("td", { class: "kind" }, rec.kind),
      h("td", { class: "details" }, fieldsText(rec, SKIP)));
    if (focus && focus.index === index) { row.classList.add("highlight"); target = row; }
    tbody.append(row);
  }
  parts.count.textContent = `${shown.length} of ${all.length} events`;
  if (focus) {
    model.ui.focus = null;
    if (target) requestAnimationFrame(() => target.scrollIntoView({ block: "center" }));
  }
}

export function render(el, ctx) {
  if (!el._pb || el._pb.run !== ctx.model.runId) mount(el, ctx);
  const focus = ctx.model.ui.focus;
  if (focus && focus.tab === "events") {
    // A jump from the timeline: make sure the row is not filtered away.
    Object.assign(ctx.model.ui.events, { kind: "", node: "", text: "" });
    el._pb.text.value = "";
  }
  update(el, ctx);
}
