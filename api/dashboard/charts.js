// Small hand-written SVG line charts for the dashboard (no library, nothing from the network).
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 460, H = 240, PAD = { l: 52, r: 12, t: 12, b: 34 };

  function el(name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // About n round ticks covering [lo, hi].
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
    return +v.toPrecision(3) + "";
  }

  // series: [{name, color, points: [[x, y], ...]}]; opts: {xLabel, yLabel, dots}
  function line(container, series, opts) {
    opts = opts || {};
    const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
      "aria-label": opts.yLabel || "chart" });
    const legend = document.createElement("div");
    legend.className = "legend";
    for (const s of series) {
      const item = document.createElement("span");
      item.innerHTML = `<i style="background:${s.color}"></i>`;
      item.append(`${s.name} (${s.points.length})`);
      legend.append(item);
    }
    container.replaceChildren(legend, svg);
    if (!pts.length) {
      svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, opts.empty || "no points yet"));
      return;
    }
    let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const margin = (y1 - y0) * 0.05; // no point on the frame's edge
    y0 -= margin; y1 += margin;
    const yt = ticks(y0, y1, 4), xt = ticks(x0, x1, 6).filter((v) => !opts.integerX || Number.isInteger(v));
    y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
    const sx = (x) => PAD.l + ((x - x0) / (x1 - x0)) * (W - PAD.l - PAD.r);
    const sy = (y) => H - PAD.b - ((y - y0) / (y1 - y0)) * (H - PAD.t - PAD.b);
    for (const v of yt) {
      svg.append(el("line", { x1: PAD.l, x2: W - PAD.r, y1: sy(v), y2: sy(v), class: "gridline" }));
      svg.append(el("text", { x: PAD.l - 6, y: sy(v) + 4, "text-anchor": "end" }, fmt(v)));
    }
    for (const v of xt) {
      svg.append(el("text", { x: sx(v), y: H - PAD.b + 15, "text-anchor": "middle" }, fmt(v)));
    }
    svg.append(el("line", { x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b, class: "axis" }));
    svg.append(el("line", { x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: H - PAD.b, class: "axis" }));
    if (opts.xLabel) svg.append(el("text", { x: (W + PAD.l) / 2, y: H - 4, "text-anchor": "middle" }, opts.xLabel));
    for (const s of series) {
      const ok = s.points.filter((p) => Number.isFinite(p[1]));
      if (!ok.length) continue;
      const d = ok.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      svg.append(el("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "data-series": s.name }));
      if (opts.dots) {
        for (const p of ok) {
          svg.append(el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.color, class: "point",
            "data-series": s.name }));
        }
      }
    }
  }

  return { line };
})();
