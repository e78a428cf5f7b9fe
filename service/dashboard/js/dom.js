// Tiny DOM helpers: h("tag.class", {attrs}, ...children), and number formats.
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag);
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function fmtBytes(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${Math.round(n)} B`;
}

export function fmtNum(x, digits = 3) {
  if (x === undefined || x === null || Number.isNaN(x)) return "–";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e6)) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

// Times without a zone (SQLite drops it) are UTC.
export function fmtTime(iso) {
  if (!iso) return "–";
  return new Date(/[Zz]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`).toLocaleString();
}

export function fmtBudgets(budgets = {}) {
  return Object.entries(budgets).map(([k, v]) => `${k}=${v}`).join(", ");
}

export function badge(status) {
  return h(`span.badge.${status}`, { text: status, "data-status": status });
}

export function progressBar(job) {
  const pct = Math.round(100 * (job.status === "succeeded" ? 1 : job.progress));
  const bar = h(`div.bar.${job.status}`, {
    role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct,
    title: `${pct}%`,
  }, h("span"));
  bar.firstChild.style.width = `${pct}%`;
  return bar;
}
