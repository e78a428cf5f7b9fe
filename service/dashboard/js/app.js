// Routes (#/jobs, #/jobs/ID, #/submit) and sign-in. Every view returns a
// function that stops its polling; leaving the view calls it.
import { api, session } from "./api.js";
import { h } from "./dom.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { submitView } from "./submit.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let stop = () => {};

function signInView() {
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off",
    placeholder: "ba_…", required: true });
  const error = h("p.error", { id: "signin-error" });
  const form = h("form.card.signin", { id: "signin-form" },
    h("h1", {}, "Sign in"),
    h("label", { for: "api-key" }, "API key"), key,
    h("p.muted", {}, "`bitalloc serve` prints a key; `bitalloc keys create --tenant NAME` makes one. "
      + "The key stays in this tab's session storage."),
    error, h("button.primary", { type: "submit", id: "signin-submit" }, "Sign in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    session.signIn(key.value.trim());
    try {
      await api.jobs(new URLSearchParams({ limit: "1" }));
      route();
    } catch (err) {
      session.signOut();
      error.textContent = err.status === 401 ? "That key was not accepted." : err.message;
    }
  });
  view.replaceChildren(form);
  return () => {};
}

function route() {
  stop();
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  const signedIn = Boolean(session.key());
  nav.hidden = !signedIn;
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.nav === (parts[0] || "jobs"));
  if (!signedIn) {
    stop = signInView();
  } else if (parts[0] === "submit") {
    stop = submitView(view);
  } else if (parts[0] === "jobs" && parts[1]) {
    stop = jobView(view, decodeURIComponent(parts[1]));
  } else {
    stop = jobsView(view, new URLSearchParams(query));
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  location.hash = "#/jobs";
  route();
});
window.addEventListener("hashchange", route);
route();
