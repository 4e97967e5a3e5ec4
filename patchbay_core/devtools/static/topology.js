// Topology: the lab's routers, devices and regions as an SVG tree under the IX, from
// state.json (live: it re-renders when the lab rewrites it) and the region events.

import { h, s, clear, natText, firewallText, limitsText } from "./util.js";

const UNIT = 190; // horizontal room of one leaf
const LEVEL = 130; // vertical distance between levels
const BOX = { ix: [200, 46], region: [170, 50], router: [184, 76], device: [160, 52] };
const LABEL_ROOM = 260; // right of the last column: edge labels and long lines

function regionNodes(model) {
  // Regions are routers of their own ("region-eu"): from state.json when it lists them, else
  // from the lab's region_added events (which carry the same snapshot).
  const out = new Map();
  const st = model.state || {};
  const listed = Array.isArray(st.regions) ? st.regions : Object.values(st.regions || {});
  for (const r of listed) if (r && r.name) out.set(r.name, r);
  for (const rec of model.records["events.jsonl"] || []) {
    if (rec && rec.kind === "region_added" && rec.node) out.set(rec.node, { ...rec, name: rec.node });
  }
  return out;
}

function regionLinks(model) {
  const links = new Map();
  for (const rec of model.records["events.jsonl"] || []) {
    if (!rec || !rec.kind) continue;
    if (rec.kind === "regions_linked" && rec.a && rec.b) {
      links.set([rec.a, rec.b].sort().join("|"), { a: rec.a, b: rec.b, latency_ms: rec.latency_ms, broken: false });
    } else if (/region_link_(broken|restored)/.test(rec.kind) && rec.a && rec.b) {
      const link = links.get([rec.a, rec.b].sort().join("|"));
      if (link) link.broken = rec.kind.endsWith("broken");
    }
  }
  return [...links.values()];
}

/** The graph: nodes by name with their parent, and the extra edges (multi-homing). */
export function buildGraph(model) {
  const st = model.state || {};
  const nodes = new Map();
  const add = (name, type, data, parent) => {
    nodes.set(name, { name, type, data: data || {}, parent, children: [] });
  };
  add("ix", "ix", st.ix || {}, null);
  for (const [name, r] of regionNodes(model)) add(name, "region", r, "ix");
  for (const r of st.routers || []) add(r.name, "router", r, r.upstream === null ? null : (r.upstream || "ix"));
  const extra = [];
  for (const d of st.devices || []) {
    const ifaces = d.ifaces || [];
    const primary = ifaces.find((i) => i.name === d.default_iface) || ifaces[0];
    add(d.name, "device", d, primary ? primary.router : "ix");
    for (const i of ifaces) if (i !== primary) extra.push({ from: i.router, to: d.name, iface: i });
  }
  // An upstream we do not know (a router state.json leaves out): hang it under the IX.
  for (const node of nodes.values()) {
    if (node.parent && !nodes.has(node.parent)) add(node.parent, "router", { name: node.parent }, "ix");
  }
  for (const node of nodes.values()) if (node.parent) nodes.get(node.parent).children.push(node);
  const roots = [...nodes.values()].filter((n) => !n.parent);
  return { nodes, roots, extra };
}

function layout(graph) {
  const width = (node) => (node.w = node.children.length ? node.children.reduce((a, c) => a + width(c), 0) : 1);
  const place = (node, left, depth) => {
    node.x = (left + node.w / 2) * UNIT;
    node.y = 40 + depth * LEVEL;
    let at = left;
    for (const child of node.children) { place(child, at, depth + 1); at += child.w; }
  };
  let left = 0;
  let depth = 0;
  for (const root of graph.roots) {
    width(root);
    place(root, left, 0);
    left += root.w;
  }
  for (const node of graph.nodes.values()) depth = Math.max(depth, (node.y - 40) / LEVEL);
  return { width: Math.max(left, 1) * UNIT + LABEL_ROOM, height: 40 + depth * LEVEL + 90 };
}

function lines(node) {
  const d = node.data;
  if (node.type === "ix") return ["internet exchange", d.cidr || ""];
  if (node.type === "region") return ["region", d.downstream_cidr || ""];
  if (node.type === "router") {
    const nat = [natText(d.nat), d.nat_v6 && d.nat_v6 !== "none" ? `NAT6 ${d.nat_v6}` : ""].filter(Boolean).join(" · ");
    return [nat || (d.pool === "private" ? "no NAT, private pool" : "no NAT"), firewallText(d.firewall) || "no firewall",
      [d.downstream_cidr, d.downstream_cidr6].filter(Boolean).join(" ")];
  }
  const primary = (d.ifaces || []).find((i) => i.name === d.default_iface) || (d.ifaces || [])[0];
  return [primary ? [primary.ip, primary.ip6].filter(Boolean).join(" ") : "no interfaces",
    `${(d.ifaces || []).length} iface${(d.ifaces || []).length === 1 ? "" : "s"}`];
}

function edgeLabel(child, iface) {
  const d = child.data;
  if (child.type === "device") {
    const i = iface || (d.ifaces || []).find((x) => x.name === d.default_iface) || (d.ifaces || [])[0];
    if (!i) return { text: "", down: false };
    const cond = [i.up ? `↑ ${limitsText(i.up)}` : "", i.down ? `↓ ${limitsText(i.down)}` : ""].filter(Boolean);
    return { text: [i.name, ...cond].join("  "), down: i.link_up === false };
  }
  if (child.type === "router" && d.uplink) return { text: `${d.uplink.iface} ${d.uplink.ip || ""}`, down: false };
  return { text: "", down: false };
}

function drawNode(node) {
  const [w, hgt] = BOX[node.type];
  const title = node.type === "ix" ? "IX" : node.name;
  const g = s("g", {
    class: `node ${node.type}`, "data-node": node.name, transform: `translate(${node.x - w / 2},${node.y - hgt / 2})`,
  });
  g.append(s("rect", { width: w, height: hgt, rx: node.type === "device" ? 6 : 12 }));
  g.append(s("text", { x: w / 2, y: 18, class: "title" }, title));
  lines(node).forEach((text, i) => g.append(s("text", { x: w / 2, y: 34 + i * 14, class: "sub" }, text)));
  if (node.type === "router" && node.data.downlink) {
    g.append(s("text", { x: w / 2, y: hgt + 14, class: "cond" }, `downlink ${limitsText(node.data.downlink)}`));
  }
  g.append(s("title", {}, JSON.stringify(node.data, null, 1)));
  return g;
}

export function render(el, ctx) {
  const { model } = ctx;
  const graph = buildGraph(model);
  const size = layout(graph);
  const svg = s("svg", {
    id: "topology-svg", width: size.width, height: size.height, viewBox: `0 0 ${size.width} ${size.height}`,
    role: "img", "aria-label": "topology",
  });
  const edges = s("g", { class: "edges" });
  const labels = s("g", { class: "labels" });
  const edge = (from, to, iface, cls = "") => {
    const [, fh] = BOX[from.type];
    const [, th] = BOX[to.type];
    const x1 = from.x, y1 = from.y + fh / 2, x2 = to.x, y2 = to.y - th / 2;
    const label = edgeLabel(to, iface);
    const my = (y1 + y2) / 2;
    // A second uplink bulges out to the right, past whatever stands between its ends.
    const d = cls === "extra"
      ? `M${x1},${y1} C${x1 + 190},${y1 + 30} ${x2 + 190},${y2 - 30} ${x2 + (BOX.device[0] / 2) * 0.6},${y2}`
      : `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`;
    edges.append(s("path", {
      d,
      class: `edge ${cls} ${label.down ? "down" : ""}`, "data-from": from.name, "data-to": to.name,
    }));
    // Next to the child's end of the edge (a second uplink: next to the parent's), where
    // no other edge runs.
    const [lx, ly] = cls === "extra" ? [Math.max(x1, x2) + 150, (y1 + y2) / 2] : [x2 + 8, y2 - 14];
    if (label.text) labels.append(s("text", { x: lx, y: ly, class: "edge-label" }, label.text));
  };
  for (const node of graph.nodes.values()) if (node.parent) edge(graph.nodes.get(node.parent), node, null);
  for (const x of graph.extra) {
    const from = graph.nodes.get(x.from);
    const to = graph.nodes.get(x.to);
    if (from && to) edge(from, to, x.iface, "extra");
  }
  for (const link of regionLinks(model)) {
    const a = graph.nodes.get(`region-${link.a}`) || graph.nodes.get(link.a);
    const b = graph.nodes.get(`region-${link.b}`) || graph.nodes.get(link.b);
    if (!a || !b) continue;
    const y = a.y - BOX.region[1] / 2;
    const mx = (a.x + b.x) / 2;
    edges.append(s("path", { d: `M${a.x},${y} Q${mx},${y - 40} ${b.x},${y}`,
      class: `edge region-link ${link.broken ? "down" : ""}` }));
    labels.append(s("text", { x: mx, y: y - 24, class: "edge-label", "text-anchor": "middle" },
      `${link.latency_ms ?? "?"} ms${link.broken ? " (broken)" : ""}`));
  }
  svg.append(edges);
  for (const node of graph.nodes.values()) svg.append(drawNode(node));
  svg.append(labels);

  const st = model.state || {};
  const routers = (st.routers || []).length;
  const devices = (st.devices || []).length;
  const summary = h("p", { class: "summary", id: "topology-summary" },
    h("b", {}, st.label || model.run.label || ""), " — ",
    h("span", { id: "router-count" }, String(routers)), ` router${routers === 1 ? "" : "s"}, `,
    h("span", { id: "device-count" }, String(devices)), ` device${devices === 1 ? "" : "s"}`,
    regionNodes(model).size ? `, ${regionNodes(model).size} region(s)` : "",
    st.closed ? " (closed)" : "");
  clear(el);
  if (!model.state) {
    el.append(h("p", { class: "message" }, "No state.json in this run (a sim run overview, or a lab that has not built anything yet)."));
    if (model.run.kind === "simrun") el.append(h("p", {}, "Pick one of its sims in the run menu, or see Results."));
    return;
  }
  el.append(summary, h("div", { class: "svg-scroll" }, svg));
}
