// Skein's web UI in a real headless Chromium against a real `skein serve` (started by
// crates/skein/tests/ui.rs, which passes its addresses in SKEIN_URL and SKEIN_OTLP_HTTP). Traces
// arrive over OTLP/HTTP JSON, exactly as an SDK would send them.
//
// SKEIN_SCREENSHOT_DIR: where the screenshots go (docs/screenshots for the README).
// SKEIN_CHROMIUM: the browser (default /usr/bin/chromium, Debian's package).

import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { KIND, bigTrace, hex, post, request, shopTrace, span, xssTrace } from "./fixtures.mjs";

const base = process.env.SKEIN_URL;
const otlp = process.env.SKEIN_OTLP_HTTP;
const shots = process.env.SKEIN_SCREENSHOT_DIR;
if (!base || !otlp) throw new Error("set SKEIN_URL and SKEIN_OTLP_HTTP (crates/skein/tests/ui.rs does)");

let browser;
let context;
let page;
let pageErrors = [];
let dialogs = [];
const shop = [];
let xss;
let split;

async function screenshot(name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, `${name}.png`) });
}

const rows = () => page.locator(".spacer .row");
const fact = (label) => page.locator(".fact", { has: page.locator("dt", { hasText: label }) }).locator("dd");

before(async () => {
  // Twelve shop requests over the last ten minutes: every 4th fails, every 5th has a slow query,
  // one loses the context of its background task, one links to the request before it.
  const now = Date.now();
  for (let i = 0; i < 12; i++) {
    const prev = shop[i - 1];
    const t = shopTrace(now - 540_000 + i * 45_000, {
      error: i % 4 === 1,
      slow: i % 5 === 2,
      orphan: i === 3,
      linkTo: i === 6 ? { traceId: prev.traceId, spanId: prev.ids.root } : null,
    });
    shop.push(t);
    await post(otlp, t.body);
  }
  xss = xssTrace(now - 30_000);
  await post(otlp, xss.body);
  // A request whose checkout → cart call did not propagate the context: two traces.
  split = shopTrace(now - 120_000, { splitCart: true });
  await post(otlp, split.body);

  browser = await chromium.launch({
    executablePath: process.env.SKEIN_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  context = await browser.newContext({ viewport: { width: 1400, height: 860 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
  // Errors logged by the page count as failures; the browser's own note on a 4xx answer that a
  // test asked for does not.
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && pageErrors.push(`console: ${m.text()}`));
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss();
  });
});

after(async () => {
  await browser?.close();
});

afterEach(() => {
  const errors = pageErrors;
  pageErrors = [];
  assert.deepEqual(errors, [], "the page raised no errors");
});

test("search: the form runs a search that lives in the URL, and a reload runs it again", async () => {
  await page.goto(`${base}/search`);
  await page.locator('select[name=service] option[value="frontend"]').waitFor({ state: "attached" });
  await page.selectOption("select[name=service]", "frontend");
  await page.locator('select[name=operation] option[value="GET /checkout"]').waitFor({ state: "attached" });
  await page.fill("input[name=tags]", "http.response.status_code=500");
  await page.click("#app button[type=submit]");
  await page.locator(".result-count").waitFor();
  const url = new URL(page.url());
  assert.equal(url.pathname, "/search");
  assert.equal(url.searchParams.get("service"), "frontend");
  assert.deepEqual(JSON.parse(url.searchParams.get("tags")), { "http.response.status_code": "500" });
  const failing = shop.filter((_, i) => i % 4 === 1).map((t) => t.traceId).sort();
  const listed = async () => (await page.locator(".trace-item").evaluateAll((els) => els.map((e) => e.dataset.trace))).sort();
  assert.equal(await page.locator(".result-count").textContent(), "3 traces");
  assert.deepEqual(await listed(), failing);
  assert.equal(await page.locator(".scatter circle.dot.error").count(), 3, "every failing trace is a red point");
  for (const item of await page.locator(".trace-item").all()) assert.match(await item.textContent(), /3 errors/);

  await page.reload();
  await page.locator(".result-count").waitFor();
  assert.deepEqual(await listed(), failing, "the reloaded URL runs the same search");
  assert.equal(await page.inputValue("input[name=tags]"), "http.response.status_code=500", "the form shows the search");

  // Duration filter and all traces of the service.
  await page.goto(`${base}/search?service=frontend&minDuration=300ms&lookback=1h`);
  await page.locator(".result-count").waitFor();
  const slow = shop.filter((_, i) => i % 5 === 2).map((t) => t.traceId).sort();
  assert.deepEqual(await listed(), slow);
  await page.goto(`${base}/search?service=frontend&lookback=1h&limit=20`);
  await page.locator(".result-count").waitFor();
  assert.equal(await page.locator(".trace-item").count(), 13, "the twelve requests and the split one");
  const first = page.locator(".trace-item").first();
  assert.match(await first.textContent(), /frontend: GET \/checkout/);
  assert.match(await first.textContent(), /7 spans/);
  await screenshot("search");

  // A click on a result opens its trace.
  const id = await first.getAttribute("data-trace");
  await first.locator("a").click();
  await page.waitForURL(`${base}/trace/${id}`);
  await page.locator(".row").first().waitFor();
  assert.equal(await page.locator(".trace-id").textContent(), id);
  // Back returns to the results.
  await page.goBack();
  await page.locator(".result-count").waitFor();
  assert.equal(await page.locator(".trace-item").count(), 13);
});

test("search: a click on a point of the scatter plot opens that trace", async () => {
  await page.goto(`${base}/search?service=frontend&lookback=1h&minDuration=300ms`);
  const dot = page.locator(".scatter circle.dot").first();
  await dot.waitFor();
  const id = await dot.getAttribute("data-trace");
  await dot.click();
  await page.waitForURL(`${base}/trace/${id}`);
});

test("search: bad input is a clear message, not a broken page", async () => {
  await page.goto(`${base}/search?service=frontend&minDuration=fast`);
  const alert = page.locator(".results [role=alert]");
  await alert.waitFor();
  assert.match(await alert.textContent(), /Search failed: .*minDuration/);
  await page.goto(`${base}/search`);
  await page.locator('select[name=service] option[value="frontend"]').waitFor({ state: "attached" });
  await page.selectOption("select[name=service]", "frontend");
  await page.fill("input[name=tags]", "justakey");
  await page.click("#app button[type=submit]");
  assert.match(await page.locator(".form-error").textContent(), /key=value/);
});

test("trace: header, timeline, collapse and expand, details", async () => {
  const t = shop[3]; // the one whose confirmation task lost its context
  await page.goto(`${base}/trace/${t.traceId}`);
  await rows().first().waitFor();
  assert.equal(await fact("Spans").textContent(), "8");
  assert.equal(await fact("Services").textContent(), "3");
  assert.equal(await fact("Depth").textContent(), "6");
  assert.match(await page.locator(".trace-title").textContent(), /frontend: GET \/checkout/);
  assert.equal(await rows().count(), 8);

  // The span whose parent never arrived: a visible warning, at the top level, never attached elsewhere.
  const warning = page.locator("[data-warning=orphans]");
  assert.match(await warning.textContent(), /1 span with a parent that is not in this trace/);
  const orphanRow = page.locator(`.row[data-span="${t.ids.orphan}"]`);
  assert.equal(await orphanRow.getAttribute("data-depth"), "0");
  assert.match(await orphanRow.locator(".orphan-mark").textContent(), /missing parent/);

  // Collapse the checkout server span: its four descendants disappear; expand brings them back.
  const toggle = page.locator(`[data-toggle="${t.ids.grpcServer}"]`);
  assert.equal(await toggle.getAttribute("aria-expanded"), "true");
  await toggle.click();
  assert.equal(await rows().count(), 4);
  assert.equal(await page.locator(`.row[data-span="${t.ids.redis}"]`).count(), 0);
  assert.equal(await page.locator(`[data-toggle="${t.ids.grpcServer}"]`).getAttribute("aria-expanded"), "false");
  await page.locator(`[data-toggle="${t.ids.grpcServer}"]`).click();
  assert.equal(await rows().count(), 8);
  await page.click("text=Collapse all");
  assert.equal(await rows().count(), 3, "root, its client span and the orphan");
  await page.click("text=Expand all");
  assert.equal(await rows().count(), 8);

  // The critical path is drawn.
  assert.ok((await page.locator(".cp").count()) > 0);

  // Details of the SQL span.
  await page.locator(`.row[data-span="${t.ids.sql}"] .op`).click();
  const detail = page.locator(`[data-detail="${t.ids.sql}"]`);
  await detail.waitFor();
  const text = await detail.textContent();
  assert.match(text, /SELECT id, total FROM orders WHERE user_id = \?/);
  assert.match(text, /KindCLIENT/);
  assert.match(text, /host\.namecheckout-1/, "resource attributes");
  assert.match(text, /skein-otel/, "instrumentation scope");
  assert.equal(await page.locator(`.row[data-span="${t.ids.sql}"]`).getAttribute("class"), "row selected");
  // The parent id navigates to the parent.
  await detail.locator("button.linkish").click();
  await page.locator(`[data-detail="${t.ids.grpcServer}"]`).waitFor();
  await page.click("button.close");
  assert.equal(await page.locator("aside.detail").isHidden(), true);
});

test("trace: errors and events are shown", async () => {
  const t = shop[1]; // failing
  await page.goto(`${base}/trace/${t.traceId}`);
  await rows().first().waitFor();
  assert.equal(await fact("Errors").textContent(), "3");
  assert.equal(await page.locator(".row.has-error").count(), 3);
  await page.locator(`.row[data-span="${t.ids.grpcServer}"] .op`).click();
  const detail = page.locator(`[data-detail="${t.ids.grpcServer}"]`);
  assert.match(await detail.textContent(), /StatusERROR: payment declined/);
  assert.match(await detail.textContent(), /Events \(1\)exception at \+\d+ms.*exception\.messagecard declined/);
});

test("trace: a link opens the linked trace at the linked span", async () => {
  const t = shop[6];
  const target = shop[5];
  await page.goto(`${base}/trace/${t.traceId}`);
  await page.locator(`.row[data-span="${t.ids.root}"] .op`).click();
  const linkEl = page.locator(`[data-detail="${t.ids.root}"] a.trace-link`);
  assert.match(await linkEl.textContent(), new RegExp(target.traceId));
  await linkEl.click();
  await page.waitForURL(`${base}/trace/${target.traceId}?span=${target.ids.root}`);
  await page.locator(`[data-detail="${target.ids.root}"]`).waitFor();
});

test("trace: find in trace and copy the trace id", async () => {
  const t = shop[0];
  await page.goto(`${base}/trace/${t.traceId}`);
  await rows().first().waitFor();
  await page.fill("input.find", "hgetall");
  assert.equal(await page.locator(".find-count").textContent(), "1 of 1");
  assert.equal(await page.locator(".row.current-match").getAttribute("data-span"), t.ids.redis);
  await page.fill("input.find", "127.0.0.1");
  assert.equal(await page.locator(".find-count").textContent(), "1 of 3", "server.address of the gRPC, HTTP and Redis clients");
  await page.locator("input.find").press("Enter");
  assert.equal(await page.locator(".find-count").textContent(), "2 of 3");
  await page.fill("input.find", "no-such-thing");
  assert.equal(await page.locator(".find-count").textContent(), "no match");

  await page.click("text=Copy");
  await page.locator("text=Copied").waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), t.traceId);
});

test("trace: an unknown id says so", async () => {
  await page.goto(`${base}/trace/0123456789abcdef0123456789abcdef`);
  await page.locator("h1", { hasText: "Trace not found" }).waitFor();
  await page.goto(`${base}/trace/not-hex`);
  await page.locator("h1", { hasText: "Cannot show this trace" }).waitFor();
  assert.match(await page.locator(".error-text").textContent(), /malformed trace id/);
});

test("safety: names and attributes that look like HTML are shown as text and run nothing", async () => {
  const service = `xss-${xss.payload}`;
  await page.goto(`${base}/search?service=${encodeURIComponent(service)}&lookback=1h`);
  await page.locator(".trace-item").first().waitFor();
  assert.ok((await page.locator(".trace-item").first().textContent()).includes(xss.payload));
  await page.goto(`${base}/trace/${xss.traceId}`);
  await rows().first().waitFor();
  assert.ok((await page.locator(".trace-title").textContent()).includes(xss.payload));
  await rows().first().locator(".op").click();
  const detail = await page.locator("aside.detail").textContent();
  assert.ok(detail.includes(`${xss.payload}.key`) && detail.includes("<script>window.__xss=2</script>"));
  assert.ok((await rows().nth(1).textContent()).includes("<b>bold?</b>"));
  await page.waitForTimeout(200);
  assert.equal(await page.evaluate(() => window.__xss), undefined, "no injected script ran");
  assert.deepEqual(dialogs, [], "no alert was opened");
  assert.equal(await page.locator("#app img, #app script, #app b").count(), 0, "no element was made from data");
});

test("service map: services, databases, caches and peers, edges labelled with calls/s, errors and p95", async () => {
  await page.goto(`${base}/dependencies`);
  await page.locator(".service-map").waitFor();
  for (const s of ["frontend", "checkout", "cart"]) assert.equal(await page.locator(`.node[data-service="${s}"][data-kind="service"]`).count(), 1, s);
  // checkout's SQLite queries and cart's Redis calls, whose servers send no spans, are nodes of their own.
  assert.equal(await page.locator('.node[data-service="sqlite"][data-kind="database"]').count(), 1);
  assert.equal(await page.locator('.node[data-service="redis 127.0.0.1:6379"][data-kind="cache"]').count(), 1);
  // The split request's call to cart has no server span in its trace: an uninstrumented peer, as far as the map can tell.
  assert.equal(await page.locator('.node[data-service="127.0.0.1:8081"][data-kind="peer"]').count(), 1);
  const cell = (p, c, col) => page.locator(`.calls tr[data-parent="${p}"][data-child="${c}"] td.${col}`).textContent();
  assert.equal(await cell("frontend", "checkout", "calls"), "13");
  assert.equal(await cell("frontend", "checkout", "errors"), "23.1%", "3 of the 13 requests failed");
  assert.equal(await cell("checkout", "cart", "calls"), "12", "the split request's cart call is not a parent/child pair");
  assert.equal(await cell("checkout", "sqlite", "calls"), "13");
  assert.equal(await cell("checkout", "sqlite", "errors"), "0%");
  // Two of the 13 queries are slow (450 ms), the others take 12 ms: p95 is a slow one (quantiles
  // are within 1 % of the exact ones).
  const ms = async (col) => {
    const text = await cell("checkout", "sqlite", col);
    assert.match(text, /^[\d.]+ms$/, text);
    return parseFloat(text);
  };
  assert.ok(Math.abs((await ms("p50")) - 12) <= 0.2, await cell("checkout", "sqlite", "p50"));
  assert.ok(Math.abs((await ms("p95")) - 450) <= 5, await cell("checkout", "sqlite", "p95"));
  const label = await page.locator('.edge[data-parent="frontend"][data-child="checkout"] .edge-label').textContent();
  assert.match(label, /^0\.0036\/s · 23\.1% · p95 \d/, label);
  assert.equal(await page.locator('.edge.failing[data-parent="frontend"][data-child="checkout"]').count(), 1);
  await screenshot("service-map");
  await page.selectOption(".deps-head select", "15m");
  await page.waitForURL(`${base}/dependencies?lookback=15m`);
  await page.locator(".service-map").waitFor();
  // A clicked service opens its search.
  await page.locator('.node[data-service="checkout"]').click();
  await page.waitForURL(/\/search\?service=checkout/);
  await page.locator(".result-count").waitFor();
});

test("monitor: a service's rate, errors and latency over time, its operations sortable, and their traces", async () => {
  // frontend: 13 `GET /checkout` requests in the last ten minutes, 3 of them failed.
  await page.goto(`${base}/monitor?service=frontend&lookback=1h`);
  await page.locator(".monitor-plot").first().waitFor();
  assert.equal(await page.locator(".monitor-plot").count(), 3);
  assert.deepEqual(await page.locator('.monitor-plot[data-plot="Latency"] polyline').evaluateAll((ls) => ls.map((l) => l.dataset.series)), ["p50", "p95", "p99"]);
  assert.ok((await page.locator('.monitor-plot[data-plot="Requests per second"] polyline').getAttribute("points")).split(" ").length > 10, "a point per step");
  const checkout = page.locator('.ops tr[data-operation="GET /checkout"]');
  assert.equal(await checkout.locator('td[data-col="calls"]').textContent(), "13");
  assert.equal(await checkout.locator('td[data-col="errors"]').textContent(), "23.1 %");
  await screenshot("monitor");

  // A service with two operations: many fast `GET /a`, one slow `GET /b`.
  const now = Date.now();
  const traceId = hex(16);
  const spans = [0, 1, 2, 3].map((i) => span(traceId, { name: "GET /a", kind: KIND.SERVER, t0: now - 60_000 + i * 1000, at: 0, dur: 5 }));
  spans.push(span(hex(16), { name: "GET /b", kind: KIND.SERVER, t0: now - 30_000, at: 0, dur: 900, error: "timeout" }));
  await post(otlp, request({ "monitor-demo": spans }));
  await page.goto(`${base}/monitor?service=monitor-demo&lookback=15m`);
  await page.locator(".ops tbody tr").first().waitFor();
  const order = () => page.locator(".ops tbody tr").evaluateAll((rs) => rs.map((r) => r.dataset.operation));
  assert.deepEqual(await order(), ["GET /a", "GET /b"], "by requests, most first");
  await page.locator('button.sort[data-sort="p95"]').click();
  await page.waitForURL(/sort=p95/);
  await page.locator('.ops th[aria-sort="descending"] button[data-sort="p95"]').waitFor();
  assert.deepEqual(await order(), ["GET /b", "GET /a"], "by p95, slowest first");
  // An operation's failing traces open in Search.
  await page.locator('.ops tr[data-operation="GET /b"] a.failing').click();
  await page.waitForURL(/\/search\?service=monitor-demo&operation=GET/);
  await page.locator(".result-count").waitFor();
  assert.match(await page.locator(".result-count").textContent(), /^1 trace/);
});

test("chain health: the doctor's findings link both halves, and split traces carry a banner", async () => {
  await page.goto(`${base}/doctor?lookback=1h`);
  await page.locator(".health-summary").waitFor();
  assert.match(await page.locator(".health-summary").textContent(), /2 broken chains found/);
  const splitCard = page.locator('.finding[data-kind="split_trace"][data-service="checkout"][data-peer="cart"]');
  assert.match(await splitCard.textContent(), /checkout → cart loses context/);
  assert.match(await splitCard.textContent(), /1×/);
  const orphanCard = page.locator('.finding[data-kind="orphan_spans"][data-service="checkout"]');
  assert.match(await orphanCard.textContent(), /send confirmation/);
  const edge = page.locator('.edges tr[data-caller="checkout"][data-callee="cart"]');
  assert.match(await edge.textContent(), /9[0-9]\.[0-9]%/, "one split call among the checkout → cart calls");
  await screenshot("chain-health");

  // Both halves are one click away, and each says where the other is.
  await splitCard.locator("a.example-other").click();
  await page.waitForURL(new RegExp(`/trace/${split.cartTraceId}`));
  const back = page.locator('.split-banner[data-relation="continues_from"]');
  await back.waitFor();
  assert.match(await back.textContent(), /This trace is the continuation of/);
  await back.locator("a.continuation").click();
  await page.waitForURL(new RegExp(`/trace/${split.traceId}`));
  const forward = page.locator('.split-banner[data-relation="continues_in"]');
  await forward.waitFor();
  assert.match(await forward.textContent(), /This request is split: the context was lost at checkout: GET/);
  assert.equal(await forward.getAttribute("data-other"), split.cartTraceId);
});

test("screenshot: a trace with its details open", async () => {
  const t = shop[1];
  await page.goto(`${base}/trace/${t.traceId}`);
  await page.locator(`.row[data-span="${t.ids.grpcServer}"] .op`).click();
  await page.locator(`[data-detail="${t.ids.grpcServer}"]`).waitFor();
  await screenshot("trace");
});

test("large traces: 50,000 spans open, scroll and collapse; time to first render is measured", async () => {
  const big = bigTrace(Date.now() - 20_000, 50_000);
  for (const body of big.bodies) await post(otlp, body);

  const firstRender = [];
  for (let run = 0; run < 3; run++) {
    await page.goto(`${base}/trace/${big.traceId}`);
    await page.waitForSelector(`body[data-trace-rendered="${big.traceId}"]`, { timeout: 60_000 });
    firstRender.push(await page.evaluate(() => performance.getEntriesByName("skein-trace-rendered")[0].startTime));
  }
  assert.equal(await fact("Spans").textContent(), "50,000");
  const inDom = await rows().count();
  assert.ok(inDom > 10 && inDom < 200, `rows are virtualised: ${inDom} in the DOM`);

  // Scroll to the end: the last span of the tree is drawn; rows stay few.
  const scrolled = await page.evaluate(async () => {
    const el = document.querySelector(".rows");
    const t0 = performance.now();
    el.scrollTop = el.scrollHeight;
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    return { ms: performance.now() - t0, last: [...document.querySelectorAll(".spacer .row")].map((r) => r.dataset.span) };
  });
  assert.ok(scrolled.last.includes(big.lastInOrder), "the last span is drawn after scrolling to the end");
  assert.ok(scrolled.last.length < 200);

  // Back to the top, collapse the root: one row; expand: all of them again.
  await page.evaluate(() => (document.querySelector(".rows").scrollTop = 0));
  await page.locator(`[data-toggle="${big.rootId}"]`).waitFor();
  const t0 = Date.now();
  await page.locator(`[data-toggle="${big.rootId}"]`).click();
  assert.equal(await rows().count(), 1);
  const collapseMs = Date.now() - t0;
  await page.locator(`[data-toggle="${big.rootId}"]`).click();
  assert.equal(await page.evaluate(() => document.querySelector(".spacer").getBoundingClientRect().height), 50_000 * 24, "every row is back");

  // Find across all 50,000 spans.
  await page.fill("input.find", "operation-42");
  assert.match(await page.locator(".find-count").textContent(), /^1 of \d+$/);

  const sorted = firstRender.slice().sort((a, b) => a - b);
  console.log(
    `UI figures: 50,000-span trace, time to first render (navigation start → rows drawn) ${firstRender.map((x) => Math.round(x)).join(" / ")} ms ` +
      `(median ${Math.round(sorted[1])} ms); scroll to the end redrawn in ${scrolled.ms.toFixed(1)} ms; collapse of the root ${collapseMs} ms`,
  );
});
