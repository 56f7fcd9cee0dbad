// Skein behind --query-token-file, in a real headless Chromium: a page leads to the login page,
// a wrong token is refused, the right one opens the UI (its API calls work with the HttpOnly
// cookie, which scripts cannot read), and Log out closes it again. Started by
// crates/skein/tests/ui.rs, which passes SKEIN_PROTECTED_URL and SKEIN_PROTECTED_TOKEN.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const base = process.env.SKEIN_PROTECTED_URL;
const token = process.env.SKEIN_PROTECTED_TOKEN;
if (!base || !token) throw new Error("set SKEIN_PROTECTED_URL and SKEIN_PROTECTED_TOKEN (crates/skein/tests/ui.rs does)");

let browser;
let page;
const pageErrors = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.SKEIN_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
  page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
});

after(async () => {
  await browser?.close();
});

test("login: the token opens the UI in an HttpOnly cookie, and Log out closes it", async () => {
  await page.goto(`${base}/search?service=frontend`);
  assert.equal(new URL(page.url()).pathname, "/login", "a page leads to the login page");
  await page.fill("input[name=token]", "not-the-token");
  await page.click("button[type=submit]");
  await page.locator("p.warning", { hasText: "That token is not valid here." }).waitFor();

  await page.fill("input[name=token]", token);
  await page.click("button[type=submit]");
  await page.waitForURL(`${base}/search?service=frontend`);
  // The UI's own API calls work: the service list is filled from /api/services.
  await page.locator("select[name=service]").waitFor();
  const logout = page.locator("#logout button");
  await logout.waitFor({ state: "visible" });
  assert.equal(await page.evaluate(() => document.cookie), "", "the token cookie is HttpOnly");
  const cookies = await page.context().cookies();
  const cookie = cookies.find((c) => c.name === "skein_token");
  assert.ok(cookie?.httpOnly && cookie.sameSite === "Strict", JSON.stringify(cookies));

  await logout.click();
  await page.waitForURL(`${base}/login`);
  await page.goto(`${base}/doctor`);
  assert.equal(new URL(page.url()).pathname, "/login", "logged out: pages lead to the login page again");
  assert.deepEqual(pageErrors, []);
});
