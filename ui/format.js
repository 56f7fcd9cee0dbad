// Formatting of durations, times and colours, shared by every page.

/** A duration in microseconds, with 3 significant digits: 812µs, 12.3ms, 4.56s, 2m 05s. */
export function fmtDuration(us) {
  if (!Number.isFinite(us)) return "?";
  if (us < 0) return `-${fmtDuration(-us)}`;
  if (us < 1) return `${Math.round(us * 1000)}ns`;
  if (us < 1000) return `${sig(us)}µs`;
  if (us < 1e6) return `${sig(us / 1000)}ms`;
  if (us < 60e6) return `${sig(us / 1e6)}s`;
  const s = Math.round(us / 1e6);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function sig(x) {
  if (x >= 100) return String(Math.round(x));
  if (x >= 10) return x.toFixed(1).replace(/\.0$/, "");
  return x.toFixed(2).replace(/\.?0+$/, "");
}

/** Local date and time of a unix time in milliseconds, to the millisecond. */
export function fmtDateTime(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`
  );
}

/** "5 minutes ago" style age of a unix time in milliseconds. */
export function fmtAgo(ms, now = Date.now()) {
  const s = Math.round((now - ms) / 1000);
  if (s < 0) return "in the future";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

const PALETTE = [
  "#3f7fbf", "#e0873a", "#4aa36b", "#c44e52", "#8a6bbf", "#8c6d31", "#d46fae", "#6f7f8f",
  "#b8b53a", "#2fa6b3", "#5b5fc7", "#a0522d", "#3c9d9d", "#c7833c", "#7b9e3a", "#b25aa8",
];

function slot(name) {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return (h >>> 0) % PALETTE.length;
}

/** A stable colour per service name (the same on every page and every load). */
export function serviceColor(name) {
  return PALETTE[slot(name)];
}

/**
 * Colours for a set of services shown together: each keeps its stable colour unless another
 * service of the set already has it, in which case it takes the next free one (up to 16
 * services all differ). Deterministic for a given set.
 */
export function serviceColors(names) {
  const used = new Set();
  const colors = new Map();
  for (const name of [...new Set(names)].sort()) {
    let i = slot(name);
    for (let k = 0; k < PALETTE.length && used.has(i); k++) i = (i + 1) % PALETTE.length;
    used.add(i);
    colors.set(name, PALETTE[i]);
  }
  return colors;
}

/** Plural helper: `plural(3, "span")` → "3 spans". */
export function plural(n, word) {
  return `${n.toLocaleString("en-US")} ${word}${n === 1 ? "" : "s"}`;
}
