// The job page's charts, drawn as SVG by hand: bit width per layer, sensitivity
// per layer (log scale, error bars), and cost against objective (Pareto).
import { linear, logScale, s, svgRoot, xAxis, yAxis } from "./svg.js";
import { fmtNum, h } from "./dom.js";
import { metricLabel } from "./quality.js";

export const BIT_COLOURS = {
  2: "#d73027", 3: "#f46d43", 4: "#fdae61", 5: "#d9ef8b", 6: "#a6d96a", 8: "#1a9850", 16: "#4575b4",
};
const W = 720;
const M = { left: 64, right: 16, top: 14 };

function colour(bits) {
  return BIT_COLOURS[bits] ?? "#888";
}

function layerBand(layers, bottomPad) {
  const height = 250 + bottomPad;
  const bottom = height - bottomPad;
  const step = (W - M.left - M.right) / Math.max(1, layers.length);
  const cx = (i) => M.left + step * (i + 0.5);
  const labels = s("g", { class: "layer-labels" }, layers.map((l, i) => {
    const name = l.name.length > 22 ? `…${l.name.slice(-21)}` : l.name;
    return s("text", { x: cx(i), y: bottom + 10, "text-anchor": "end",
      transform: `rotate(-50 ${cx(i)} ${bottom + 10})` }, name);
  }));
  return { height, bottom, step, cx, labels };
}

export function bitsChart(layers) {
  const band = layerBand(layers, 110);
  const y = linear([0, 16], [band.bottom, M.top]);
  y.ticks = () => [0, 2, 4, 8, 16];
  const svg = svgRoot(W, band.height, "Bit width per layer");
  svg.append(yAxis(y, { left: M.left, right: W - M.right, label: "weight bits" }));
  const bw = Math.max(2, band.step * 0.72);
  svg.append(s("g", { class: "bars" }, layers.map((l, i) => s("rect", {
    class: "bar-layer", "data-layer": l.name, "data-bits": l.w_bits,
    x: band.cx(i) - bw / 2, y: y(l.w_bits), width: bw, height: band.bottom - y(l.w_bits),
    fill: colour(l.w_bits), rx: 1.5,
  }, s("title", {}, `${l.name}: ${l.w_bits}-bit (${l.params.toLocaleString()} params)`)))));
  svg.append(band.labels);
  const used = [...new Set(layers.map((l) => l.w_bits))].sort((a, b) => a - b);
  const legend = h("div.legend", {}, used.map((b) => h("span", {},
    Object.assign(h("i"), { style: `background:${colour(b)}` }), `${b}-bit`)));
  return h("div.chart", { id: "bits-chart" }, svg, legend);
}

// A layer's sensitivity: the Hessian trace with its standard error where the
// estimator gives one, otherwise Ω at the lowest width.
function sensitivity(layer) {
  const st = layer.stats || {};
  if (st.trace !== undefined) return { value: st.trace, se: st.trace_se, what: "Hessian trace" };
  const keys = Object.keys(layer.omega_by_bits || {});
  const lowest = keys.sort((a, b) => parseInt(a.slice(1)) - parseInt(b.slice(1)))[0];
  return { value: lowest ? layer.omega_by_bits[lowest] : layer.omega, se: undefined, what: `Ω at ${lowest}` };
}

export function sensitivityChart(layers) {
  const band = layerBand(layers, 110);
  const points = layers.map(sensitivity);
  const positive = points.flatMap((p) => [p.value, p.value + (p.se || 0), p.value - (p.se || 0)])
    .filter((v) => v > 0);
  const lo = positive.length ? Math.min(...positive) : 1e-3;
  const hi = positive.length ? Math.max(...positive) : 1;
  const y = logScale([lo, hi], [band.bottom, M.top]);
  const label = points.find((p) => p.se !== undefined) ? "Hessian trace (log)" : "sensitivity (log)";
  const svg = svgRoot(W, band.height, "Sensitivity per layer");
  svg.append(yAxis(y, { left: M.left, right: W - M.right, label }));
  svg.append(s("g", { class: "points" }, points.map((p, i) => {
    const l = layers[i];
    const x = band.cx(i);
    const g = s("g", { class: "sens-layer", "data-layer": l.name });
    if (p.se !== undefined && p.se > 0 && p.value > 0) {
      const top = y(p.value + p.se);
      const bottom = y(Math.max(p.value - p.se, y.domain[0]));
      g.append(s("g", { class: "sens-err", stroke: "#5f6b7a" },
        s("line", { x1: x, x2: x, y1: top, y2: bottom }),
        s("line", { x1: x - 3, x2: x + 3, y1: top, y2: top }),
        s("line", { x1: x - 3, x2: x + 3, y1: bottom, y2: bottom })));
    }
    if (p.value > 0) {
      g.append(s("circle", { class: "sens-point", cx: x, cy: y(p.value), r: 4, fill: colour(l.w_bits),
        stroke: "#1d2330", "stroke-width": 0.6 },
        s("title", {}, `${l.name}: ${p.what} ${fmtNum(p.value)}${p.se ? ` ± ${fmtNum(p.se)}` : ""}`)));
    }
    return g;
  })));
  svg.append(band.labels);
  return h("div.chart", { id: "sensitivity-chart" }, svg,
    h("div.legend", {}, "points coloured by the chosen width; bars: ± one standard error"));
}

// Points for the Pareto chart, x in average bits per weight. With
// `result.pareto` ([{cost, objective | quality, avg_bits?, chosen}]) the curve
// is drawn from it; uniform widths are placed at ΣΩ of that width (from the
// per-layer Ω), or at their measured quality when the curve is in quality.
export function paretoData(result) {
  const layers = result.layers || [];
  const curveIn = result.pareto || [];
  const byQuality = curveIn.length > 0 && curveIn[0].objective === undefined && curveIn[0].quality !== undefined;
  const metric = result.quality?.metric;
  const measured = new Map((result.uniform_points || []).map((u) => [u.w_bits, u]));
  const widths = [...new Set(layers.flatMap((l) => Object.keys(l.omega_by_bits || {})
    .map((k) => parseInt(k.slice(1)))))].sort((a, b) => a - b);
  const withOverhead = measured.size > 0 || curveIn.some((p) => p.avg_bits !== undefined);
  const chosenCost = withOverhead ? result.summary.avg_bits : result.summary.avg_bits_no_overhead;
  let uniform;
  let chosen;
  if (byQuality) {
    uniform = [...measured.values()].map((u) => ({ cost: u.avg_bits, y: u.quality[metric], bits: u.w_bits }));
    if (!uniform.length) uniform = [{ cost: result.quality.uniform_bits, y: result.quality.uniform[metric],
      bits: result.quality.uniform_bits }];
    chosen = { cost: chosenCost, y: result.quality.allocation[metric] };
  } else {
    uniform = widths.map((b) => ({
      cost: measured.get(b)?.avg_bits ?? b,
      y: layers.reduce((sum, l) => sum + (l.omega_by_bits?.[`w${b}a16`] ?? l.omega), 0),
      bits: b,
    }));
    chosen = { cost: chosenCost, y: layers.reduce((sum, l) => sum + l.omega, 0) };
  }
  const curve = curveIn.map((p) => ({
    cost: p.avg_bits ?? p.cost, y: byQuality ? p.quality : p.objective, chosen: !!p.chosen,
  })).sort((a, b) => a.cost - b.cost);
  const marked = curve.find((p) => p.chosen);
  if (marked) chosen = { cost: marked.cost, y: marked.y };
  return { byQuality, metric, uniform, chosen, curve };
}

function pointChart({ title, data, byValue, yLabel, id, legend, line }) {
  const H = 300;
  const bottom = H - 46;
  const all = [...data.uniform, data.chosen, ...data.curve];
  const inPlot = (p) => Number.isFinite(p.y) && (byValue || p.y > 0);
  const plotted = all.filter(inPlot);
  const costs = plotted.map((p) => p.cost);
  const x = linear([0, Math.max(...costs, 1) * 1.05], [M.left, W - M.right]);
  const ys = plotted.map((p) => p.y).concat(line ? [line.y] : []);
  const pad = (Math.max(...ys) - Math.min(...ys)) * 0.08 || 1;
  const y = byValue
    ? linear([Math.min(...ys) - pad, Math.max(...ys) + pad], [bottom, M.top])
    : logScale([Math.min(...ys, 1), Math.max(...ys, 1e-6)], [bottom, M.top]);
  const svg = svgRoot(W, H, title);
  svg.append(yAxis(y, { left: M.left, right: W - M.right, label: yLabel }));
  svg.append(xAxis(x, { bottom, label: "average bits per weight", width: W }));
  if (line) {
    svg.append(s("line", { class: "reference", x1: M.left, x2: W - M.right, y1: y(line.y), y2: y(line.y),
      stroke: "#1a7f37", "stroke-dasharray": "5 4" }));
    svg.append(s("text", { x: M.left + 6, y: y(line.y) - 5 }, line.label));
  }
  if (data.curve.length) {
    const pts = data.curve.filter(inPlot);
    svg.append(s("polyline", { class: "pareto-curve", fill: "none", stroke: "#2f5fd0", "stroke-width": 1.5,
      points: pts.map((p) => `${x(p.cost)},${y(p.y)}`).join(" ") }));
    svg.append(s("g", {}, pts.map((p) => s("circle", { class: "pareto-point", cx: x(p.cost), cy: y(p.y),
      r: 2.5, fill: "#2f5fd0" }, s("title", {}, `${fmtNum(p.cost)} bits: ${fmtNum(p.y)}`)))));
  }
  svg.append(s("g", { class: "uniform" }, data.uniform.filter(inPlot).map((p) => s("g", {},
    s("rect", { class: "pareto-uniform", "data-bits": p.bits, x: x(p.cost) - 4, y: y(p.y) - 4,
      width: 8, height: 8, fill: "#fff", stroke: "#5f6b7a", "stroke-width": 1.5 },
    s("title", {}, `uniform ${p.bits}-bit: ${fmtNum(p.y)}`)),
    s("text", { x: x(p.cost) + 7, y: y(p.y) - 6 }, `${p.bits}-bit`)))));
  if (inPlot(data.chosen)) {
    svg.append(s("path", { class: "pareto-chosen", d: starPath(x(data.chosen.cost), y(data.chosen.y), 8),
      fill: "#d73027", stroke: "#7a1010" },
    s("title", {}, `chosen: ${fmtNum(data.chosen.cost)} bits, ${fmtNum(data.chosen.y)}`)));
  }
  return h("div.chart", { id }, svg, h("div.legend", {}, legend));
}

function key(colour, text, border) {
  const i = h("i");
  i.style.background = colour;
  if (border) i.style.border = border;
  return h("span", {}, i, text);
}

export function paretoChart(result) {
  const data = paretoData(result);
  return pointChart({
    title: "Pareto curve, uniform widths and the chosen point", data, byValue: data.byQuality, id: "pareto-chart",
    yLabel: data.byQuality ? metricLabel(result.quality, data.metric) : "objective ΣΩ (log)",
    legend: [key("#d73027", "chosen allocation"), key("#fff", "uniform quantization", "1.5px solid #5f6b7a"),
      data.curve.length ? key("#2f5fd0", "Pareto curve (solver sweep)")
        : h("span", {}, "no Pareto sweep in this result: uniform widths and the chosen point")],
  });
}

// Measured quality of every uniform width (`uniform_points`, or the one uniform
// model in `quality`) against the allocation's, with full precision as a line.
export function qualityChart(result) {
  const q = result.quality;
  const m = q.metric;
  const points = (result.uniform_points || []).filter((u) => u.w_bits < 16);
  const uniform = points.length
    ? points.map((u) => ({ cost: u.avg_bits, y: u.quality[m], bits: u.w_bits }))
    : [{ cost: q.uniform_bits, y: q.uniform[m], bits: q.uniform_bits }];
  const data = { uniform, chosen: { cost: result.summary.avg_bits, y: q.allocation[m] }, curve: [] };
  const label = metricLabel(q, m);
  return pointChart({
    title: `Measured ${label}: uniform widths against the allocation`, data, byValue: true, id: "quality-chart",
    yLabel: label, line: { y: q.full_precision[m], label: `full precision ${fmtNum(q.full_precision[m], 4)}` },
    legend: [key("#d73027", "allocation (measured)"),
      key("#fff", "uniform quantization (measured)", "1.5px solid #5f6b7a"),
      key("#1a7f37", "full precision")],
  });
}

function starPath(cx, cy, r) {
  const pts = [];
  for (let i = 0; i < 10; i += 1) {
    const rad = i % 2 ? r * 0.45 : r;
    const a = (Math.PI / 5) * i - Math.PI / 2;
    pts.push(`${(cx + rad * Math.cos(a)).toFixed(1)},${(cy + rad * Math.sin(a)).toFixed(1)}`);
  }
  return `M${pts.join("L")}Z`;
}
