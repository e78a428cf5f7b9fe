// Hand-written SVG: elements, linear and log scales, and axes with ticks.
const NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function linear([d0, d1], [r0, r1]) {
  const span = d1 - d0 || 1;
  const f = (x) => r0 + ((x - d0) / span) * (r1 - r0);
  f.ticks = (n = 5) => niceTicks(d0, d1, n);
  f.domain = [d0, d1];
  return f;
}

export function logScale([d0, d1], [r0, r1]) {
  const l0 = Math.floor(Math.log10(d0));
  const l1 = Math.max(l0 + 1, Math.ceil(Math.log10(d1)));
  const f = (x) => r0 + ((Math.log10(Math.max(x, 10 ** l0)) - l0) / (l1 - l0)) * (r1 - r0);
  f.ticks = () => {
    const step = Math.max(1, Math.ceil((l1 - l0) / 6));
    const out = [];
    for (let e = l0; e <= l1; e += step) out.push(10 ** e);
    return out;
  };
  f.domain = [10 ** l0, 10 ** l1];
  return f;
}

function niceTicks(a, b, n) {
  const span = b - a || 1;
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw);
  const out = [];
  for (let t = Math.ceil(a / step) * step; t <= b + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

export function tickLabel(v) {
  if (v !== 0 && (Math.abs(v) < 1e-2 || Math.abs(v) >= 1e5)) return v.toExponential(0).replace("e+", "e");
  return String(+v.toPrecision(4));
}

// Left axis with horizontal grid lines; `y` is a scale into [bottom, top].
export function yAxis(y, { left, right, label }) {
  return s("g", { class: "axis y" },
    y.ticks().map((t) => s("g", {},
      s("line", { class: "gridline", x1: left, x2: right, y1: y(t), y2: y(t), stroke: "#eef0f4" }),
      s("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end" }, tickLabel(t)))),
    s("line", { x1: left, x2: left, y1: y(y.domain[0]), y2: y(y.domain[1]) }),
    label && s("text", { x: 12, y: (y(y.domain[0]) + y(y.domain[1])) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(y(y.domain[0]) + y(y.domain[1])) / 2})` }, label));
}

export function xAxis(x, { bottom, label, width }) {
  return s("g", { class: "axis x" },
    s("line", { x1: x(x.domain[0]), x2: x(x.domain[1]), y1: bottom, y2: bottom }),
    x.ticks().map((t) => s("g", {},
      s("line", { x1: x(t), x2: x(t), y1: bottom, y2: bottom + 4 }),
      s("text", { x: x(t), y: bottom + 16, "text-anchor": "middle" }, tickLabel(t)))),
    label && s("text", { x: width / 2, y: bottom + 32, "text-anchor": "middle" }, label));
}

export function svgRoot(width, height, title) {
  return s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title,
    xmlns: NS, preserveAspectRatio: "xMidYMid meet" }, s("title", {}, title));
}
