// Small helpers shared by the tabs: element builders, formatting, record parsing.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  return el;
}

/** An HTML element: h("td", {class: "x"}, "text", child). */
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Wall-clock time of an epoch timestamp (seconds): HH:MM:SS.mmm, local time. */
export function fmtTime(ts) {
  if (typeof ts !== "number") return "";
  const d = new Date(ts * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtBytes(n) {
  if (typeof n !== "number") return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtNum(v, digits = 2) {
  return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "";
}

/** A JSON line as an object, or null (plain text, half a line). */
export function parseLine(line) {
  if (!line || line[0] !== "{") return null;
  try {
    const value = JSON.parse(line);
    return value && typeof value === "object" && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

function valueText(v) {
  if (typeof v === "string") return /\s/.test(v) || v === "" ? JSON.stringify(v) : v;
  return JSON.stringify(v);
}

/** The fields of a record past the given keys, as key=value text (nulls left out). */
export function fieldsText(rec, skip) {
  return Object.entries(rec)
    .filter(([k, v]) => !skip.includes(k) && v !== null && v !== undefined && !(k === "name" && v === rec.node))
    .map(([k, v]) => `${k}=${valueText(v)}`)
    .join(" ");
}

const MAPPING = {
  "endpoint-independent": "EIM", "address-dependent": "ADM",
  "address-and-port-dependent": "EDM", "endpoint-dependent": "EDM",
};
const FILTERING = {
  "endpoint-independent": "EIF", "address-dependent": "ADF", "address-and-port-dependent": "APDF",
};

/** "NAT EIM/APDF" and friends, from a state.json nat entry. */
export function natText(nat) {
  if (!nat) return "";
  if (typeof nat === "string") return `NAT ${nat}`;
  if (nat.preset || nat.name) return `NAT ${nat.preset || nat.name}`;
  const parts = [MAPPING[nat.mapping] || nat.mapping, FILTERING[nat.filtering] || nat.filtering].filter(Boolean);
  return `NAT ${parts.join("/")}${nat.hairpin ? " hairpin" : ""}`;
}

export function firewallText(fw) {
  if (!fw) return "";
  if (typeof fw === "string") return `firewall ${fw}`;
  if (fw.preset || fw.name) return `firewall ${fw.preset || fw.name}`;
  const bits = [];
  if (fw.block_inbound) bits.push("block inbound");
  if (fw.allow_tcp_ports && fw.allow_tcp_ports.length) bits.push(`tcp ${fw.allow_tcp_ports.join(",")}`);
  if (fw.allow_udp_ports && fw.allow_udp_ports.length) bits.push(`udp ${fw.allow_udp_ports.join(",")}`);
  return `firewall${bits.length ? " " + bits.join(", ") : ""}`;
}

/** A link condition (LinkLimits as JSON, or a preset name) in a few characters. */
export function limitsText(l) {
  if (!l) return "";
  if (typeof l === "string") return l;
  const bits = [];
  if (l.latency_ms) bits.push(`${l.latency_ms}ms${l.jitter_ms ? "±" + l.jitter_ms : ""}`);
  if (l.loss_pct) bits.push(`${l.loss_pct}% loss`);
  if (l.rate_kbit) bits.push(l.rate_kbit >= 1000 ? `${l.rate_kbit / 1000}Mbit` : `${l.rate_kbit}kbit`);
  if (l.reorder_pct) bits.push(`${l.reorder_pct}% reorder`);
  if (l.duplicate_pct) bits.push(`${l.duplicate_pct}% dup`);
  if (l.corrupt_pct) bits.push(`${l.corrupt_pct}% corrupt`);
  return bits.join(" ") || "clean";
}

export const LEVELS = ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

export function levelRank(level) {
  const name = String(level || "INFO").toUpperCase();
  const i = LEVELS.indexOf(name === "WARN" ? "WARNING" : name);
  return i < 0 ? 2 : i;
}

/** Options of a <select>, keeping the current choice when it is still offered. */
export function fillSelect(select, options, current) {
  clear(select);
  for (const [value, label] of options) select.append(h("option", { value }, label));
  if (options.some(([v]) => v === current)) select.value = current;
  return select.value;
}
