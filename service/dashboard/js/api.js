// The REST API with the signed-in key. The key lives in sessionStorage only:
// it leaves when the tab closes and is never written to the page or the URL.
const KEY = "bitalloc.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn: (key) => sessionStorage.setItem(KEY, key),
  signOut: () => sessionStorage.removeItem(KEY),
};

async function call(method, path, { json, form, raw } = {}) {
  const headers = { Authorization: `Bearer ${session.key()}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail ?? detail; } catch { /* not JSON */ }
    throw new ApiError(resp.status, detail);
  }
  return raw ? resp : resp.json();
}

export const api = {
  jobs: (params) => call("GET", `/v1/jobs?${params}`),
  job: (id) => call("GET", `/v1/jobs/${encodeURIComponent(id)}`),
  result: (id) => call("GET", `/v1/jobs/${encodeURIComponent(id)}/result`),
  cancel: (id) => call("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`),
  artifact: (id) => call("GET", `/v1/jobs/${encodeURIComponent(id)}/artifact`, { raw: true }),
  submit: (body) => call("POST", "/v1/jobs", { json: body }),
  models: () => call("GET", "/v1/models?limit=200"),
  datasets: () => call("GET", "/v1/datasets?limit=200"),
  upload: (kind, form) => call("POST", `/v1/${kind}`, { form }),
};

// Saves a response or a value as a file through a temporary link (downloads
// need the Authorization header, so a plain href cannot fetch them).
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
