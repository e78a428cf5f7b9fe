// The job list: newest first, status filter and model search, a live progress
// bar per job, polled while shown (see poll.js).
import { api } from "./api.js";
import { badge, fmtBudgets, fmtTime, h, progressBar } from "./dom.js";
import { poller } from "./poll.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

export function jobsView(root, params) {
  const status = params.get("status") || "";
  const search = params.get("q") || "";
  let cursor = params.get("cursor") || "";
  const statusSelect = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "" }, "all"),
    STATUSES.map((st) => h("option", { value: st, selected: st === status }, st)));
  const searchInput = h("input", { id: "filter-model", type: "search", placeholder: "model or method",
    value: search });
  const apply = () => {
    const p = new URLSearchParams();
    if (statusSelect.value) p.set("status", statusSelect.value);
    if (searchInput.value) p.set("q", searchInput.value);
    location.hash = `#/jobs?${p}`;
  };
  statusSelect.addEventListener("change", apply);
  searchInput.addEventListener("change", apply);
  const body = h("tbody", { id: "jobs-body" });
  const count = h("span.muted", { id: "jobs-count" });
  const error = h("p.error", { id: "jobs-error" });
  const pager = h("div.pager");
  root.replaceChildren(
    h("h1", {}, "Jobs ", count),
    h("div.filters", {},
      h("div", {}, h("label", { for: "filter-status" }, "Status"), statusSelect),
      h("div", {}, h("label", { for: "filter-model" }, "Search"), searchInput),
      h("a", { href: "#/submit" }, h("button.primary", { type: "button" }, "New job"))),
    error,
    h("div.card", {}, h("table", { id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Created", "Model", "Method", "Budgets", "Status", "Stage",
        "Progress"].map((c) => h("th", {}, c)))), body), pager));

  async function tick() {
    const p = new URLSearchParams({ limit: "50" });
    if (status) p.append("status", status);
    if (cursor) p.set("cursor", cursor);
    try {
      const page = await api.jobs(p);
      error.textContent = "";
      render(page);
      return page.data.some((j) => j.status === "queued" || j.status === "running");
    } catch (err) {
      error.textContent = err.message;
      throw err;
    }
  }

  function render(page) {
    const q = search.toLowerCase();
    const rows = page.data.filter((j) => !q
      || `${j.spec.model} ${j.spec.method}`.toLowerCase().includes(q));
    count.textContent = `(${page.count}${q ? `, ${rows.length} shown` : ""})`;
    body.replaceChildren(...(rows.length ? rows.map(row)
      : [h("tr", {}, h("td.muted", { colspan: 7 }, "No jobs yet: submit one."))]));
    pager.replaceChildren(...(page.next_cursor ? [h("button.secondary", { type: "button",
      onclick: () => { cursor = page.next_cursor; tick(); } }, "Older jobs")] : []));
  }

  function row(j) {
    const open = () => { location.hash = `#/jobs/${j.id}`; };
    return h("tr.job-row", { "data-job": j.id, "data-status": j.status, onclick: open },
      h("td", {}, fmtTime(j.created_at)),
      h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.spec.model)),
      h("td", {}, j.spec.method),
      h("td", {}, fmtBudgets(j.spec.budgets)),
      h("td", {}, badge(j.status)),
      h("td.muted", { title: j.message }, j.stage || "–"),
      h("td", {}, h("div.progress-line", {}, progressBar(j),
        h("span.muted", {}, `${Math.round(100 * (j.status === "succeeded" ? 1 : j.progress))}%`))));
  }

  return poller(tick);
}
