// Results: step results of a sim (results.json) or of a whole sim run (combined-results.json):
// throughput and latency as bars, the table, and the sim's status and errors.

import { h, s, clear, fmtNum } from "./util.js";

function barChart(id, title, rows, series, unit) {
  // One group of bars per row ("sim / step"), one bar per series that has a value.
  const present = series.filter((sr) => rows.some((r) => typeof r[sr.key] === "number"));
  const withData = rows.filter((r) => present.some((sr) => typeof r[sr.key] === "number"));
  if (!withData.length) return null;
  const max = Math.max(...withData.flatMap((r) => present.map((sr) => r[sr.key] || 0)), 1e-9);
  const left = 230;
  const barH = 16;
  const width = 900;
  const plot = width - left - 170;
  const groupH = present.length * (barH + 4) + 10;
  const height = 30 + withData.length * groupH;
  const svg = s("svg", { id, class: "chart", width, height, viewBox: `0 0 ${width} ${height}` },
    s("text", { x: 0, y: 16, class: "chart-title" }, title));
  withData.forEach((r, i) => {
    const y0 = 30 + i * groupH;
    svg.append(s("text", { x: left - 10, y: y0 + groupH / 2, class: "row-label", "text-anchor": "end" },
      `${r.sim} / ${r.id}`));
    present.forEach((sr, j) => {
      const v = r[sr.key];
      if (typeof v !== "number") return;
      const y = y0 + j * (barH + 4);
      const w = Math.max(2, (v / max) * plot);
      svg.append(s("g", { class: `bar ${sr.cls}`, "data-sim": r.sim, "data-step": r.id, "data-value": v },
        s("rect", { x: left, y, width: w, height: barH }),
        s("text", { x: left + w + 6, y: y + barH - 4, class: "bar-label" }, `${fmtNum(v, 2)} ${unit} ${sr.label}`),
        s("title", {}, `${r.sim} / ${r.id}: ${fmtNum(v, 3)} ${unit} ${sr.label}`)));
    });
  });
  return svg;
}

function table(rows) {
  const cols = [["sim", "sim"], ["id", "step"], ["down_mb_s", "down MB/s"], ["up_mb_s", "up MB/s"],
    ["latency_ms", "latency ms"], ["elapsed_s", "duration s"], ["down_bytes", "down bytes"], ["up_bytes", "up bytes"]]
    .filter(([key]) => rows.some((r) => r[key] !== null && r[key] !== undefined && r[key] !== ""));
  return h("table", { id: "results-table", class: "grid" },
    h("thead", {}, h("tr", {}, cols.map(([, label]) => h("th", {}, label)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, cols.map(([key]) =>
      h("td", { class: typeof r[key] === "number" ? "num" : "" }, typeof r[key] === "number" ? fmtNum(r[key], key === "elapsed_s" ? 3 : 2) : (r[key] ?? "")))))));
}

function simSummary(ctx) {
  const { model } = ctx;
  const sim = model.run.sim;
  const out = [];
  if (sim) {
    out.push(h("p", { class: "summary" }, h("b", {}, sim.sim || model.run.label), ` — status `,
      h("span", { class: `badge status-${sim.status}` }, sim.status || "?"),
      sim.runtime_ms !== undefined ? `, ${(sim.runtime_ms / 1000).toFixed(2)} s` : ""));
    if (sim.error) out.push(h("pre", { class: "exc" }, typeof sim.error === "string" ? sim.error : (sim.error.message || JSON.stringify(sim.error, null, 1))));
  }
  const children = model.run.children || [];
  if (children.length) {
    out.push(h("h3", {}, "Sims of this run"), h("ul", { class: "sims" }, children.map((c) =>
      h("li", {}, h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); ctx.selectRun(c.id); } }, c.label), " ",
        h("span", { class: `badge status-${c.status}` }, c.status || "")))));
  }
  return out;
}

export function render(el, ctx) {
  const rows = ctx.model.run.results || [];
  clear(el);
  el.append(...simSummary(ctx));
  if (!rows.length) {
    el.append(h("p", { class: "message" }, "No step results in this run (results.json / combined-results.json)."));
    return;
  }
  const throughput = barChart("chart-throughput", "Throughput (MB/s)", rows,
    [{ key: "down_mb_s", label: "down", cls: "down" }, { key: "up_mb_s", label: "up", cls: "up" }], "MB/s");
  const latency = barChart("chart-latency", "Latency (ms)", rows, [{ key: "latency_ms", label: "", cls: "latency" }], "ms");
  for (const chart of [throughput, latency]) if (chart) el.append(h("div", { class: "svg-scroll" }, chart));
  el.append(table(rows));
}
