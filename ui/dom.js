// DOM helpers. The one rule of this UI: data (names, attributes, messages) only ever becomes
// text — through text nodes, textContent or setAttribute on harmless attributes — never markup.
// Nothing here or anywhere else in the UI assigns innerHTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "href" && !isSafeHref(v)) throw new Error(`refusing unsafe link ${v}`);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

// Links are built by the UI from its own routes; anything else is a bug, not data.
function isSafeHref(v) {
  return typeof v === "string" && (v.startsWith("/") || v.startsWith("#")) && !v.startsWith("//");
}

/** `h("div", {class: "x"}, "text", child…)`: an HTML element; strings become text nodes. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element, same calling convention as `h`. */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** Replaces all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** A link that navigates inside the app without a page load. */
export function link(href, attrs, ...children) {
  return h("a", { ...attrs, href, "data-link": true }, ...children);
}

/** Copies text to the clipboard; falls back to a selection for non-secure contexts. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h("textarea", { style: { position: "fixed", opacity: "0" } });
    area.value = text;
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}
