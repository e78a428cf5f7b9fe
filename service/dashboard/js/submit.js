// The submit form: a built-in or uploaded model and dataset (or a file to
// upload first), method, budgets and overrides. The API validates; its messages
// are shown next to the fields they are about.
import { api } from "./api.js";
import { h } from "./dom.js";

const BUILTIN = ["digits-cnn", "minilm"]; // replaced by /dashboard/builtins.json when it loads
const WIDTHS = [2, 3, 4, 5, 6, 8, 16];
// the inputs' widths (16: not quantized, the API's default) and how they are quantized
const ACT_WIDTHS = [4, 6, 8, 16];
const ACT_MODES = ["static", "dynamic"];
const ACT_RANGES = ["minmax", "percentile", "mse"];
const BUDGETS = [["avg_bits", "average bits", "4"], ["size_mb", "size (MB)", ""],
  ["bops", "bit operations", ""], ["latency_ms", "latency (ms)", ""],
  ["max_quality_drop", "max quality drop", ""]];
// fisher first: the API's default method (same allocations as hawq_v2 on our models, far cheaper)
const METHODS = ["fisher", "hawq_v2", "hawq_v1", "empirical", "lrp", "interlayer"];
// the algorithm that picks the integers (quant.algorithm); rtn is the API's default
const QUANTIZERS = [["rtn", "round to nearest"], ["gptq", "GPTQ (error-compensating)"],
  ["adaquant", "AdaQuant (GPTQ + layer-wise calibration)"]];

function field(name, label, control, hint) {
  return h("div.field", { "data-field": name }, h("label", { for: control.id }, label), control,
    hint ? h("div.muted", {}, hint) : null, h("div.field-error", { id: `error-${name}` }));
}

function sourcePicker(kind, builtin) {
  const select = h("select", { id: `${kind}-source`, name: kind },
    builtin.map((b) => h("option", { value: b }, `${b} (built-in)`)),
    kind === "dataset" ? h("option", { value: "" }, "the model's own calibration data") : null,
    h("option", { value: "__upload__" }, "upload a file…"));
  const file = h("input", { type: "file", id: `${kind}-file` });
  const name = h("input", { id: `${kind}-name`, placeholder: "name for the upload" });
  const arch = kind === "model" ? h("select", { id: "model-architecture" },
    h("option", { value: "" }, "Hugging Face archive (.zip/.tar)"),
    BUILTIN.map((b) => h("option", { value: b }, `${b} state dict (.safetensors)`))) : null;
  const upload = h("div.row", { hidden: true }, file, name, arch);
  select.addEventListener("change", () => { upload.hidden = select.value !== "__upload__"; });
  return { select, file, name, arch, upload };
}

export function submitView(root) {
  const model = sourcePicker("model", BUILTIN);
  const dataset = sourcePicker("dataset", []);
  dataset.select.value = "";
  const method = h("input", { id: "method", value: METHODS[0], list: "methods" });
  const params = h("textarea", { id: "method-params", placeholder: "{} — the method's defaults" }, "{}");
  const budgetInputs = Object.fromEntries(BUDGETS.map(([k, , v]) => [k,
    h("input", { id: `budget-${k}`, type: "number", step: "any", value: v })]));
  const widths = WIDTHS.map((b) => h("input", { type: "checkbox", value: b, checked: true,
    id: `bits-${b}` }));
  const actWidths = ACT_WIDTHS.map((b) => h("input", { type: "checkbox", value: b, checked: b === 16,
    id: `act-bits-${b}` }));
  const actMode = h("select", { id: "act-mode" }, ACT_MODES.map((m) => h("option", { value: m }, m)));
  const actRange = h("select", { id: "act-range" }, ACT_RANGES.map((r) => h("option", { value: r }, r)));
  const actSymmetric = h("input", { id: "act-symmetric", type: "checkbox" });
  const groupSize = h("input", { id: "group-size", type: "number", value: "128" });
  const symmetric = h("input", { id: "symmetric", type: "checkbox" });
  const mseClip = h("input", { id: "mse-clip", type: "checkbox" });
  const quantizer = h("select", { id: "quantizer" }, QUANTIZERS.map(([v, label]) => h("option", { value: v }, label)));
  const pins = h("textarea", { id: "pins", placeholder: "layer.name=8   (one per line)" });
  const exclude = h("textarea", { id: "exclude", placeholder: "layer.name   (one per line)" });
  const seed = h("input", { id: "seed", type: "number", value: "0" });
  // the formats come from the manifest; bitalloc's own artifact until it loads
  const exportFormat = h("select", { id: "export" }, h("option", { value: "bitalloc" }, "bitalloc"));
  const formError = h("p.error", { id: "form-error" });
  const go = h("button.primary", { type: "submit", id: "submit-job" }, "Submit job");
  const form = h("form", { id: "submit-form", novalidate: true },
    h("datalist", { id: "methods" }, METHODS.map((m) => h("option", { value: m }))),
    h("div.card", {}, h("h2", {}, "Model and data"),
      field("model", "Model", model.select), model.upload,
      field("dataset", "Calibration data", dataset.select), dataset.upload),
    h("div.card", {}, h("h2", {}, "Method"),
      h("div.row", {}, field("method", "Sensitivity method", method),
        field("method_params", "Method parameters (JSON)", params))),
    h("div.card", {}, h("h2", {}, "Budgets"),
      h("div.row", {}, BUDGETS.map(([k, label]) => field(`budgets.${k}`, label, budgetInputs[k]))),
      h("div.field-error", { id: "error-budgets" }),
      field("weight_bits", "Candidate weight widths", h("div.checks", { id: "weight-bits" },
        widths.map((w) => h("label", {}, w, `${w.value}-bit`)))),
      h("div.row", {}, field("activation_bits", "Candidate activation widths", h("div.checks", { id: "activation-bits" },
        actWidths.map((w) => h("label", {}, w, w.value === "16" ? "16-bit (not quantized)" : `${w.value}-bit`))),
      "below 16: joint (weight, activation) choices; hawq_v2, fisher or empirical"),
      field("quant.activation", "Activation mode", actMode),
      h("div.field", { "data-field": "quant.activation.range" }, h("label", { for: actRange.id }, "Activation range"),
        actRange),
      h("div.field.checks", {}, h("label", {}, actSymmetric, "symmetric activations")))),
    h("div.card", {}, h("h2", {}, "Quantization and overrides"),
      h("div.row", {}, field("quant", "Group size", groupSize),
        h("div.field.checks", {}, h("label", {}, symmetric, "symmetric"), h("label", {}, mseClip, "MSE clipping")),
        field("quant.algorithm", "Quantizer", quantizer),
        field("seed", "Seed", seed), field("export", "Export format", exportFormat)),
      h("div.row", {}, field("overrides.pins", "Pin layers to a width", pins),
        field("overrides.exclude", "Leave layers at 16-bit", exclude)),
      h("div.field-error", { id: "error-overrides" })),
    formError, go);
  root.replaceChildren(h("h1", {}, "Submit a job"), form);
  loadBuiltins(model);
  loadExports(exportFormat);
  loadUploads(model.select, "models", BUILTIN.length);
  loadUploads(dataset.select, "datasets", 1);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    go.disabled = true;
    try {
      const body = {
        model: await chosen(model, "models", "model"),
        method: method.value.trim(),
        budgets: Object.fromEntries(Object.entries(budgetInputs).filter(([, i]) => i.value !== "")
          .map(([k, i]) => [k, Number(i.value)])),
        weight_bits: widths.filter((w) => w.checked).map((w) => Number(w.value)),
        quant: { group_size: Number(groupSize.value), symmetric: symmetric.checked, mse_clip: mseClip.checked,
          algorithm: quantizer.value },
        overrides: { pins: parsePins(pins.value), exclude: lines(exclude.value) },
        seed: Number(seed.value || 0),
        export: exportFormat.value,
      };
      const actBits = actWidths.filter((w) => w.checked).map((w) => Number(w.value));
      if (actBits.some((b) => b < 16)) { // else nothing: the API's default (16, not quantized)
        body.activation_bits = actBits;
        body.quant.activation = { mode: actMode.value, range: actRange.value, symmetric: actSymmetric.checked };
      }
      body.method_params = parseParams(params.value);
      const ds = await chosen(dataset, "datasets", "dataset");
      if (ds) body.dataset = ds;
      const job = await api.submit(body);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      showErrors(form, err, formError);
    } finally {
      go.disabled = false;
    }
  });
  return () => {};
}

async function loadBuiltins(picker) {
  try {
    const { models } = await (await fetch("/dashboard/builtins.json")).json();
    const known = [...picker.select.options].map((o) => o.value);
    for (const name of models.filter((m) => !known.includes(m))) {
      picker.select.add(h("option", { value: name }, `${name} (built-in)`), BUILTIN.length);
    }
    for (const name of BUILTIN.filter((m) => !models.includes(m))) {
      picker.select.querySelector(`option[value="${CSS.escape(name)}"]`)?.remove();
    }
    if (picker.arch) {
      for (const name of models.filter((m) => !known.includes(m))) {
        picker.arch.add(h("option", { value: name }, `${name} state dict (.safetensors)`));
      }
    }
  } catch { /* the built-in list above stands */ }
}

async function loadExports(select) {
  try {
    const { exports } = await (await fetch("/dashboard/manifest.json")).json();
    select.replaceChildren(...exports.map((f) => h("option", { value: f.name, title: f.description },
      f.symmetric_only ? `${f.name} (symmetric groups)` : f.name)));
  } catch { /* bitalloc's own artifact stands */ }
}

async function loadUploads(select, kind, at) {
  try {
    const { data } = await api[kind]();
    const before = select.options[at] || null;
    for (const row of data) select.add(h("option", { value: row.name }, `${row.name} (uploaded)`), before);
  } catch { /* the list is a convenience; submitting by name still works */ }
}

class FieldError extends Error {
  constructor(field, message) { super(message); this.field = field; }
}

async function chosen(picker, kind, fieldName) {
  if (picker.select.value !== "__upload__") return picker.select.value;
  const file = picker.file.files[0];
  if (!file) throw new FieldError(fieldName, "choose a file to upload");
  const form = new FormData();
  form.append("name", picker.name.value.trim() || file.name.replace(/\..*$/, ""));
  if (picker.arch && picker.arch.value) form.append("architecture", picker.arch.value);
  form.append("file", file);
  let stored;
  try {
    stored = await api.upload(kind, form);
  } catch (err) {
    throw new FieldError(fieldName, err.message);
  }
  // uploaded once: a resubmit (say after a budget error) uses it instead of uploading again
  picker.select.add(h("option", { value: stored.name }, `${stored.name} (uploaded)`), 0);
  picker.select.value = stored.name;
  picker.upload.hidden = true;
  return stored.name;
}

function lines(text) {
  return text.split("\n").map((l) => l.trim()).filter(Boolean);
}

function parsePins(text) {
  const pins = {};
  for (const line of lines(text)) {
    const [name, bits] = line.split("=").map((p) => p.trim());
    if (!name || !bits || Number.isNaN(Number(bits))) {
      throw new FieldError("overrides.pins", `expected LAYER=BITS, got "${line}"`);
    }
    pins[name] = Number(bits);
  }
  return pins;
}

function parseParams(text) {
  if (!text.trim()) return {};
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new FieldError("method_params", `not JSON: ${err.message}`);
  }
}

function clearErrors(form) {
  form.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
  form.querySelectorAll(".field.invalid").forEach((e) => e.classList.remove("invalid"));
  form.querySelector("#form-error").textContent = "";
}

// Where an API message belongs: pydantic's `loc` (["body", "budgets", ...]),
// or, for a plain reason, the field it names.
function errorsByField(err) {
  if (err instanceof FieldError) return [[err.field, err.message]];
  if (Array.isArray(err.detail)) {
    return err.detail.map((e) => {
      const loc = (e.loc || []).filter((p) => p !== "body");
      const msg = String(e.msg || "").replace(/^Value error, /, "");
      const where = loc.length ? loc.slice(0, 2).join(".") : guessField(msg);
      return [where, `${msg}${loc.length > 2 ? ` (${loc.slice(1).join(".")})` : ""}`];
    });
  }
  const text = String(err.detail ?? err.message);
  const named = ["dataset", "model", "method"].find((f) => text.startsWith(`unknown ${f}`));
  return [[named || "", text]];
}

function guessField(msg) {
  if (/activation/.test(msg)) return "activation_bits"; // e.g. an export or method without them
  if (/^export /.test(msg)) return "export";
  return /avg_bits|size_mb|size_bytes|bops|latency_ms|budget/.test(msg) ? "budgets" : "";
}

function showErrors(form, err, formError) {
  for (const [where, msg] of errorsByField(err)) {
    const target = [where, where.split(".")[0]].map((w) => w && form.querySelector(`#error-${CSS.escape(w)}`))
      .find(Boolean);
    if (target) {
      target.textContent = target.textContent ? `${target.textContent}; ${msg}` : msg;
      target.closest(".field")?.classList.add("invalid");
    } else {
      formError.textContent = formError.textContent ? `${formError.textContent}; ${msg}` : msg;
    }
  }
}
