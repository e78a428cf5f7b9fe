// A job's page: live progress while it runs; once it succeeds, the summary,
// the charts, the per-layer table and the downloads.
import { api, saveBlob } from "./api.js";
import { bitsChart, paretoChart, qualityChart, sensitivityChart } from "./charts.js";
import { badge, fmtBudgets, fmtBytes, fmtNum, fmtTime, h, progressBar } from "./dom.js";
import { poller } from "./poll.js";
import { direction, drop } from "./quality.js";

const FINISHED = ["succeeded", "failed", "cancelled"];

export function jobView(root, id) {
  const head = h("div.card", { id: "job-head" });
  const details = h("div", { id: "job-details" });
  root.replaceChildren(h("h1", {}, "Job ", h("code", {}, id)), head, details);
  let shown = false;

  async function tick() {
    let job;
    try {
      job = await api.job(id);
    } catch (err) {
      head.replaceChildren(h("p.error", {}, err.status === 404 ? `No job ${id} for this key.` : err.message));
      return false;
    }
    renderHead(head, job);
    if (job.status === "succeeded" && !shown) {
      renderResult(details, job, await api.result(id));
      shown = true;
    }
    return !FINISHED.includes(job.status);
  }

  const stop = poller(tick);
  return stop;
}

function renderHead(el, job) {
  const pct = Math.round(100 * (job.status === "succeeded" ? 1 : job.progress));
  const cancel = FINISHED.includes(job.status) ? null : h("button.secondary", { type: "button",
    id: "cancel-job", onclick: async (ev) => {
      ev.target.disabled = true;
      try { await api.cancel(job.id); } catch (err) { ev.target.replaceWith(h("span.error", {}, err.message)); }
    } },
  "Cancel");
  el.replaceChildren(...[
    h("div.progress-line", {}, badge(job.status), progressBar(job),
      h("span", { id: "job-progress" }, `${pct}%`),
      h("span.muted", { id: "job-stage" }, `${job.stage || "waiting"}: ${job.message || ""}`), cancel),
    h("p.muted", {}, `${job.spec.model} · ${job.spec.method} · ${fmtBudgets(job.spec.budgets)} · `
      + `submitted ${fmtTime(job.created_at)}${job.finished_at ? ` · finished ${fmtTime(job.finished_at)}` : ""}`),
    job.error ? h("p.error", { id: "job-error" }, job.error) : null].filter(Boolean));
}

function renderResult(el, job, r) {
  el.replaceChildren(...[
    h("div.grid", {}, summaryCard(r), qualityCard(r)),
    h("div.card", {}, h("h2", {}, "Bit width per layer"), bitsChart(r.layers)),
    h("div.card", {}, h("h2", {}, "Sensitivity per layer"), sensitivityChart(r.layers)),
    h("div.card", {}, h("h2", {}, "Pareto curve"), paretoChart(r)),
    h("div.card", {}, h("h2", {}, "Measured quality against uniform quantization"), qualityChart(r)),
    r.uniform_activation_points?.length
      ? h("div.card", {}, h("h2", {}, "Against uniform (weight, activation) widths"), activationTable(r)) : null,
    h("div.card", {}, h("h2", {}, "Layers"), layerTable(r)),
    h("div.card", {}, h("h2", {}, "Downloads"), downloads(job, r))].filter(Boolean));
}

function dl(pairs) {
  return h("dl.summary", {}, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function summaryCard(r) {
  const s = r.summary;
  return h("div.card", { id: "summary" }, h("h2", {}, "Summary"), dl([
    ["Model", `${r.model.name}${r.model.description ? ` — ${r.model.description}` : ""}`],
    ["Method", `${r.spec.method} ${JSON.stringify(r.spec.method_params)}`],
    ["Pareto sweep", r.frontier_kind ? `${r.pareto?.length ?? 0} points over ${r.frontier_kind}` : "–"],
    ["Budgets", Object.entries(r.solver.budget_use).map(([k, [used, lim]]) =>
      `${k}: ${fmtNum(used)} of ${fmtNum(lim)}`).join("; ") || fmtBudgets(r.spec.budgets)],
    ["Size", `${fmtBytes(s.size_bytes)} (full precision ${fmtBytes(s.full_precision_bytes)})`],
    ["Average bits", `${s.avg_bits.toFixed(3)} with scales, ${s.avg_bits_no_overhead.toFixed(3)} without`],
    ["Solver", `${r.solver.status}, objective ${fmtNum(r.solver.objective)}, `
      + `${(r.solver.solve_time_s * 1000).toFixed(0)} ms (${r.solver.backend})`],
    ["Timings", Object.entries(r.timings).map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(", ")],
  ]));
}

// Each metric with its direction; uniform and allocation with their drop from
// full precision (the change for the worse, by the metric's direction).
function qualityCard(r) {
  const q = r.quality;
  const metrics = [q.metric, ...Object.keys(q.full_precision).filter((k) => k !== q.metric)];
  const measured = (m, value, attrs = {}) => h("td.num", attrs, fmtNum(value, 4),
    h("div.muted", { "data-drop": m }, `drop ${fmtNum(drop(q, m, q.full_precision[m], value), 3)}`));
  return h("div.card", { id: "quality" }, h("h2", {}, "Measured quality"),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th.num", {}, "full precision"),
        h("th.num", {}, `uniform ${q.uniform_bits}-bit`), h("th.num", {}, "allocation"))),
      h("tbody", {}, metrics.map((m) => h("tr", {},
        h("td", {}, m, h("div.muted", { "data-direction": direction(q, m) }, `${direction(q, m)} is better`)),
        h("td.num", {}, fmtNum(q.full_precision[m], 4)), measured(m, q.uniform[m]),
        measured(m, q.allocation[m], { "data-metric": m }))))),
    h("p.muted", {}, `Uniform ${q.uniform_bits}-bit is ${fmtBytes(q.uniform_size_bytes)}; `
      + `the allocation is ${fmtBytes(r.summary.size_bytes)}. A drop is the change from full `
      + "precision for the worse."));
}

// The allocation beside uniform W8A8, W4A8, ... (every input at that width): the cost in the
// frontier's budget (BOPs under a bops budget) and the headline metric with its drop.
function activationTable(r) {
  const q = r.quality;
  const m = q.metric;
  const kind = r.frontier_kind || "bops";
  const allocCost = kind === "bops" ? r.summary.bops : r.solver.budget_use[kind]?.[0];
  const row = (label, cost, size, quality, attrs) => h("tr", attrs, h("td", {}, label),
    h("td.num", {}, fmtNum(cost)), h("td.num", {}, fmtBytes(size)), h("td.num", {}, fmtNum(quality[m], 4)),
    h("td.num", { "data-drop": m }, fmtNum(drop(q, m, q.full_precision[m], quality[m]), 3)));
  return h("table", { id: "activation-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "widths"), h("th.num", {}, kind === "bops" ? "BOPs" : kind),
      h("th.num", {}, "size"), h("th.num", {}, `${m} (${direction(q, m)} is better)`),
      h("th.num", {}, "drop"))),
    h("tbody", {},
      row("allocation", allocCost, r.summary.size_bytes, q.allocation, { "data-point": "allocation" }),
      r.uniform_activation_points.map((u) => row(`W${u.w_bits}A${u.a_bits}`, u.cost, u.size_bytes, u.quality,
        { "data-point": `W${u.w_bits}A${u.a_bits}` }))));
}

function layerTable(r) {
  // an "a bits" column (each layer's input width) when some input is quantized
  const acts = r.layers.some((l) => l.a_bits < 16);
  const cols = ["layer", "kind", "params", "bits", ...(acts ? ["a bits"] : []), "bits/weight", "bytes", "Ω",
    "trace ± se"];
  return h("table", { id: "layer-table" },
    h("thead", {}, h("tr", {}, cols.map((c, i) => h(i > 1 ? "th.num" : "th", {}, c)))),
    h("tbody", {}, r.layers.map((l) => h("tr", { "data-layer": l.name },
      h("td", {}, h("code", {}, l.name)), h("td", {}, l.kind), h("td.num", {}, l.params.toLocaleString()),
      h("td.num", {}, String(l.w_bits)),
      ...(acts ? [h("td.num", { "data-a-bits": l.a_bits }, String(l.a_bits))] : []),
      h("td.num", {}, l.bits_per_weight.toFixed(2)),
      h("td.num", {}, fmtBytes(l.bytes)), h("td.num", {}, fmtNum(l.omega)),
      h("td.num", {}, l.stats?.trace !== undefined
        ? `${fmtNum(l.stats.trace)} ± ${fmtNum(l.stats.trace_se)}` : "–")))));
}

function downloads(job, r) {
  const status = h("span.muted", { id: "download-status" });
  const json = h("button.secondary", { type: "button", id: "download-result", onclick: () => {
    saveBlob(new Blob([JSON.stringify(r, null, 2)], { type: "application/json" }),
      `bitalloc-${job.id}.json`);
  } }, "Result JSON");
  const artifact = h("button.secondary", { type: "button", id: "download-artifact",
    disabled: !job.has_artifact, onclick: async () => {
      status.textContent = "downloading…";
      try {
        const resp = await api.artifact(job.id);
        const name = /filename="?([^";]+)"?/.exec(resp.headers.get("Content-Disposition") || "");
        saveBlob(await resp.blob(), name ? name[1] : `bitalloc-${job.id}.artifact`);
        status.textContent = "";
      } catch (err) {
        status.textContent = err.message;
      }
    } }, job.has_artifact ? "Packed artifact" : "No artifact");
  return h("div.actions", {}, json, artifact, status);
}
