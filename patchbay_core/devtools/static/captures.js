// Captures: the run's pcapng files (Device.capture, Lab.capture_all), to download and open in
// Wireshark (`wireshark FILE`, or `tshark -r FILE`).

import { h, clear, fmtBytes } from "./util.js";

export function render(el, ctx) {
  const caps = ctx.model.captures || [];
  clear(el);
  if (!caps.length) {
    el.append(h("p", { class: "message" },
      "No packet captures in this run. `await device.capture(\"eth0\")` writes one (pcapng) into the lab's outdir."));
    return;
  }
  el.append(h("table", { id: "captures-table", class: "grid" },
    h("thead", {}, h("tr", {}, h("th", {}, "node"), h("th", {}, "interface"), h("th", {}, "size"), h("th", {}, "file"))),
    h("tbody", {}, caps.map((c) => h("tr", { class: "capture" },
      h("td", {}, c.node || ""), h("td", {}, c.iface || ""), h("td", { class: "num" }, fmtBytes(c.size)),
      h("td", {}, h("a", { href: ctx.fileUrl(c.path, true), download: c.path.split("/").pop(), class: "capture-link" }, c.path)))))));
  el.append(h("p", { class: "muted" }, "pcapng, both directions, nanosecond timestamps: open with Wireshark or tshark -r."));
}
