// Plots drawn as SVG, by hand: a line/scatter chart, learning curves with the scheduler's rungs,
// parallel coordinates and bars. The server sends bounded, sampled data (service/api/plots.py).

const NS = "http://www.w3.org/2000/svg";
export const STATE_COLORS = { running: "#2563eb", completed: "#15803d", stopped_early: "#d97706", failed: "#dc2626", pending: "#6b7280" };

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function title(el, text) { el.appendChild(svg("title", {}, text)); return el; }

export function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(2);
  return Number(v.toFixed(digits)).toString();
}

function ticks(lo, hi, n = 5, log = false) {
  if (log && lo > 0) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) { const t = 10 ** e; if (t >= lo * 0.999 && t <= hi * 1.001) out.push(t); }
    return out.length >= 2 ? out : [lo, hi];
  }
  if (hi === lo) return [lo];
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
  return out;
}

export function scale(lo, hi, a, b, log = false) {
  if (log && lo > 0 && hi > 0) {
    const l0 = Math.log(lo), l1 = Math.log(hi);
    return (v) => (l1 === l0 ? (a + b) / 2 : a + ((Math.log(v) - l0) / (l1 - l0)) * (b - a));
  }
  return (v) => (hi === lo ? (a + b) / 2 : a + ((v - lo) / (hi - lo)) * (b - a));
}

// a value in [0, 1] -> a colour from purple through teal to yellow (viridis-like)
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export function ramp(t) {
  const x = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0)) * (STOPS.length - 1), i = Math.min(Math.floor(x), STOPS.length - 2), f = x - i;
  const c = STOPS[i].map((v, k) => Math.round(v + (STOPS[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function extent(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return lo === Infinity ? [0, 1] : [lo, hi];
}

function frame(el, { width = 560, height = 280, label } = {}) {
  el.replaceChildren();
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label || "", class: "plot" });
  el.appendChild(root);
  return root;
}

// axes with ticks; returns the plotting area and the two scales
function axes(root, { xs, ys, xLabel, yLabel, width = 560, height = 280, xLog = false }) {
  const m = { l: 56, r: 12, t: 10, b: 38 };
  const [x0, x1] = extent(xs), [y0r, y1r] = extent(ys);
  const pad = (y1r - y0r) * 0.05 || Math.abs(y1r) * 0.05 || 0.05;
  const y0 = y0r - pad, y1 = y1r + pad;
  const sx = scale(x0, x1, m.l, width - m.r, xLog), sy = scale(y0, y1, height - m.b, m.t);
  const g = root.appendChild(svg("g", { class: "axes" }));
  g.appendChild(svg("line", { x1: m.l, y1: height - m.b, x2: width - m.r, y2: height - m.b }));
  g.appendChild(svg("line", { x1: m.l, y1: m.t, x2: m.l, y2: height - m.b }));
  for (const t of ticks(x0, x1, 6, xLog)) {
    g.appendChild(svg("line", { x1: sx(t), x2: sx(t), y1: height - m.b, y2: height - m.b + 4 }));
    g.appendChild(svg("text", { x: sx(t), y: height - m.b + 16, "text-anchor": "middle" }, fmt(t, 2)));
  }
  for (const t of ticks(y0, y1, 5)) {
    g.appendChild(svg("line", { x1: m.l - 4, x2: width - m.r, y1: sy(t), y2: sy(t), class: "grid" }));
    g.appendChild(svg("text", { x: m.l - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t, 3)));
  }
  g.appendChild(svg("text", { x: (m.l + width - m.r) / 2, y: height - 4, "text-anchor": "middle", class: "label" }, xLabel || ""));
  g.appendChild(svg("text", { x: 12, y: (m.t + height - m.b) / 2, "text-anchor": "middle", class: "label", transform: `rotate(-90 12 ${(m.t + height - m.b) / 2})` }, yLabel || ""));
  return { sx, sy, m, width, height };
}

// optimization history: each finished trial's value (dots) and the best so far (a step line)
export function history(el, data, { byTime = false, metric = "value" } = {}) {
  const root = frame(el, { label: "optimization history" });
  const xi = byTime ? 1 : 0;
  const xs = data.points.map((p) => p[xi]).concat(data.best.map((p) => p[xi]));
  const ys = data.points.map((p) => p[2]).concat(data.best.map((p) => p[2]));
  if (!xs.length) { root.appendChild(svg("text", { x: 280, y: 140, "text-anchor": "middle", class: "empty" }, "no finished trials yet")); root.dataset.points = "0"; return; }
  const { sx, sy } = axes(root, { xs, ys, xLabel: byTime ? "seconds since the study started" : "trials finished", yLabel: metric });
  const dots = root.appendChild(svg("g", { class: "dots" }));
  for (const p of data.points) dots.appendChild(title(svg("circle", { cx: sx(p[xi]), cy: sy(p[2]), r: 2.5 }), `#${p[0]}: ${fmt(p[2])}`));
  let d = "", prev = null;
  const last = Math.max(...xs);
  for (const p of data.best) { d += prev === null ? `M${sx(p[xi])},${sy(p[2])}` : `H${sx(p[xi])}V${sy(p[2])}`; prev = p; }
  if (prev) d += `H${sx(last)}`;
  root.appendChild(svg("path", { d, class: "best-line" }));
  root.dataset.points = String(data.points.length);
}

// learning curves: one line per trial coloured by its state, the rungs as dashed lines, a trial
// the scheduler stopped ends in a cross where it was cut
export function curves(el, data, { highlight } = {}) {
  const root = frame(el, { label: "learning curves" });
  const items = data.items.filter((c) => c.values.length);
  const ys = items.flatMap((c) => c.values.filter((v) => v !== null));
  let points = 0;
  if (!ys.length) { root.appendChild(svg("text", { x: 280, y: 140, "text-anchor": "middle", class: "empty" }, "no epochs reported yet")); root.dataset.points = "0"; return; }
  const maxE = Math.max(data.max_epochs || 1, ...items.map((c) => c.values.length));
  const { sx, sy, m, height } = axes(root, { xs: [1, maxE], ys, xLabel: "epoch", yLabel: data.metric });
  data.rungs.forEach((r, i) => {
    if (r > maxE) return;
    root.appendChild(svg("line", { x1: sx(r), x2: sx(r), y1: m.t, y2: height - m.b, class: "rung" }));
    root.appendChild(svg("text", { x: sx(r) + 3, y: m.t + 10, class: "rung-label" }, data.scheduler === "median" ? "median rule from here" : `rung ${i + 1}`));
  });
  const g = root.appendChild(svg("g", { class: "curves" }));
  for (const c of items) {
    let d = "", end = null;
    c.values.forEach((v, i) => {
      if (v === null) return;
      d += `${d ? "L" : "M"}${sx(i + 1).toFixed(1)},${sy(v).toFixed(1)}`;
      end = [sx(i + 1), sy(v)];
      points += 1;
    });
    if (!d) continue;
    const path = title(svg("path", { d, stroke: STATE_COLORS[c.state] || "#6b7280", class: `curve ${c.state}${highlight === c.trial_id ? " highlight" : ""}`, "data-trial": c.trial_id }),
      `${c.trial_id} (${c.state.replace("_", " ")}), ${c.values.length} epochs`);
    g.appendChild(path);
    if (c.state === "stopped_early" && end) {
      const [x, y] = end, s = 3.5;
      g.appendChild(svg("path", { d: `M${x - s},${y - s}L${x + s},${y + s}M${x - s},${y + s}L${x + s},${y - s}`, class: "cut" }));
    }
  }
  root.dataset.points = String(points);
  root.dataset.curves = String(items.length);
}

// parallel coordinates: one axis per parameter and one for the value; a line per trial, coloured by value
export function parallel(el, data, { mode = "max", metric = "value" } = {}) {
  const names = Object.keys(data.params);
  const width = Math.max(560, 110 * (names.length + 1)), height = 300, m = { l: 40, r: 60, t: 24, b: 30 };
  const root = frame(el, { width, height, label: "parallel coordinates" });
  if (!data.rows.length) { root.appendChild(svg("text", { x: width / 2, y: 150, "text-anchor": "middle", class: "empty" }, "no measured trials yet")); return; }
  const axesX = scale(0, names.length, m.l, width - m.r);
  const [v0, v1] = extent(data.rows.map((r) => r.value));
  const project = names.map((name) => {
    const p = data.params[name];
    if (p.type === "categorical") {
      const k = p.choices.length;
      return { label: p.choices.map(String), at: (v) => { const i = p.choices.findIndex((c) => String(c) === String(v)); return i < 0 ? null : scale(0, Math.max(k - 1, 1), height - m.b, m.t)(i); }, ticks: p.choices.map((c, i) => [scale(0, Math.max(k - 1, 1), height - m.b, m.t)(i), String(c)]) };
    }
    const s = scale(p.low, p.high, height - m.b, m.t, !!p.log);
    return { at: (v) => (typeof v === "number" ? s(v) : null), ticks: ticks(p.low, p.high, 4, !!p.log).map((t) => [s(t), fmt(t, 3)]) };
  });
  const sv = scale(v0, v1, height - m.b, m.t);
  const lines = root.appendChild(svg("g", { class: "pc-lines" }));
  const sorted = [...data.rows].sort((a, b) => (mode === "max" ? a.value - b.value : b.value - a.value)); // best drawn last, on top
  for (const r of sorted) {
    let d = "";
    names.forEach((name, i) => { const y = project[i].at(r.config[name]); if (y !== null) d += `${d ? "L" : "M"}${axesX(i).toFixed(1)},${y.toFixed(1)}`; else d += ""; });
    d += `${d ? "L" : "M"}${axesX(names.length).toFixed(1)},${sv(r.value).toFixed(1)}`;
    const t = v1 === v0 ? 1 : (r.value - v0) / (v1 - v0);
    lines.appendChild(title(svg("path", { d, stroke: ramp(mode === "max" ? t : 1 - t), class: "pc-line" }), `${r.trial_id}: ${fmt(r.value)}`));
  }
  const axisG = root.appendChild(svg("g", { class: "axes" }));
  [...names, metric].forEach((name, i) => {
    const x = axesX(i);
    axisG.appendChild(svg("line", { x1: x, x2: x, y1: m.t, y2: height - m.b }));
    axisG.appendChild(svg("text", { x, y: 14, "text-anchor": "middle", class: "label" }, name));
    const tk = i < names.length ? project[i].ticks : ticks(v0, v1, 4).map((t) => [sv(t), fmt(t, 3)]);
    for (const [y, label] of tk) axisG.appendChild(svg("text", { x: x + 4, y: y + 3, class: "tick" }, label));
  });
  root.dataset.lines = String(data.rows.length);
}

// horizontal bars: parameter importance
export function bars(el, entries) {
  const height = 26 * entries.length + 16, width = 560;
  const root = frame(el, { width, height, label: "parameter importance" });
  const s = scale(0, Math.max(...entries.map((e) => e[1]), 1e-9), 150, width - 60);
  entries.forEach(([name, v], i) => {
    const y = 8 + i * 26;
    root.appendChild(svg("text", { x: 144, y: y + 14, "text-anchor": "end" }, name));
    root.appendChild(svg("rect", { x: 150, y, width: Math.max(1, s(v) - 150), height: 18, class: "bar" }));
    root.appendChild(svg("text", { x: s(v) + 4, y: y + 14 }, fmt(v, 3)));
  });
}

// the Pareto front of two objectives: every considered trial (grey), the non-dominated ones on top
// (joined in order of the first objective); an axis whose values span more than two decades is logarithmic
export function pareto(el, data) {
  const root = frame(el, { label: "pareto front" });
  const [a, b] = data.objectives.map((o) => o.metric);
  const pts = data.points.filter((p) => Number.isFinite(p.values[a]) && Number.isFinite(p.values[b]));
  root.dataset.points = String(pts.length);
  root.dataset.front = "0";
  if (!pts.length) { root.appendChild(svg("text", { x: 280, y: 140, "text-anchor": "middle", class: "empty" }, "no completed trials yet")); return; }
  const wide = (vs) => { const [lo, hi] = extent(vs); return lo > 0 && hi / lo > 100; };
  const xs = pts.map((p) => p.values[a]), ys = pts.map((p) => p.values[b]);
  const xLog = wide(xs), yLog = wide(ys);
  const { sx, sy: syLin } = axes(root, { xs, ys: yLog ? ys.map(Math.log10) : ys, xLog,
    xLabel: `${a} (${data.objectives[0].mode})`, yLabel: `${yLog ? "log10 " : ""}${b} (${data.objectives[1].mode})` });
  const sy = (v) => syLin(yLog ? Math.log10(v) : v);
  const onFront = new Set(data.front.map((p) => p.trial_id));
  const dots = root.appendChild(svg("g", { class: "dots" }));
  for (const p of pts) if (!onFront.has(p.trial_id)) dots.appendChild(title(svg("circle", { cx: sx(p.values[a]), cy: sy(p.values[b]), r: 2.5 }), `${p.trial_id}: ${a} ${fmt(p.values[a])}, ${b} ${fmt(p.values[b])}`));
  const front = data.front.filter((p) => Number.isFinite(p.values[a]) && Number.isFinite(p.values[b]));
  const line = front.map((p) => `${sx(p.values[a])},${sy(p.values[b])}`).join(" L");
  if (front.length > 1) root.appendChild(svg("path", { d: `M${line}`, class: "front-line" }));
  const g = root.appendChild(svg("g", { class: "front" }));
  for (const p of front) g.appendChild(title(svg("circle", { cx: sx(p.values[a]), cy: sy(p.values[b]), r: 4.5, "data-trial": p.trial_id }),
    `${p.trial_id} (on the front): ${a} ${fmt(p.values[a])}, ${b} ${fmt(p.values[b])}`));
  root.dataset.front = String(front.length);
}
