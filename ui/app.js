// Skein's web UI: a small single-page app without a framework or a build step. Pages are drawn
// from the URL (`/search?…`, `/trace/{id}`, `/dependencies`, `/monitor`), so reloads and shared links work.

import { renderSearch } from "./search.js";
import { renderTrace } from "./trace.js";
import { renderDependencies } from "./dependencies.js";
import { renderDoctor } from "./doctor.js";
import { renderMonitor } from "./monitor.js";
import { h, link, replace } from "./dom.js";

const main = document.getElementById("app");
let cleanup = null;

/** Goes to an in-app URL (pushes a history entry unless `replace`). */
export function navigate(url, { replace: rep = false } = {}) {
  if (rep) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route();
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  let page = "";
  let m;
  if (path === "/" || path === "/search") {
    page = "search";
    cleanup = renderSearch(main, params, navigate);
  } else if ((m = path.match(/^\/trace\/([^/]+)\/?$/))) {
    page = "trace";
    cleanup = renderTrace(main, decodeURIComponent(m[1]), params, navigate);
  } else if (path === "/dependencies") {
    page = "dependencies";
    cleanup = renderDependencies(main, params, navigate);
  } else if (path === "/doctor") {
    page = "doctor";
    cleanup = renderDoctor(main, params, navigate);
  } else if (path === "/monitor") {
    page = "monitor";
    cleanup = renderMonitor(main, params, navigate);
  } else {
    document.title = "Not found · Skein";
    replace(main, h("div", { class: "pad" }, h("h1", null, "Page not found"), h("p", null, link("/search", null, "Search traces"))));
  }
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === page);
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-link]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

document.getElementById("jump").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = e.target.elements.id;
  const id = input.value.trim().toLowerCase();
  if (!/^[0-9a-f]{1,32}$/.test(id)) {
    input.setCustomValidity("a trace id is up to 32 hex digits");
    input.reportValidity();
    return;
  }
  input.setCustomValidity("");
  input.value = "";
  navigate(`/trace/${id}`);
});

// With --query-token-file the UI is behind a login: offer to log out (the cookie is HttpOnly,
// so only the server can say whether there is one).
fetch("/api/v1/session")
  .then((r) => (r.ok ? r.json() : null))
  .then((s) => {
    if (s?.tokenRequired) document.getElementById("logout").hidden = false;
  })
  .catch(() => {});

route();
