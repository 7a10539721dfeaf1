// The /demo page in headless Chromium: two browser contexts as two CouchDB users, against a
// real gateway with a rule file and a real pouchdb-server.  Each sees only the documents the
// rule lets it read; an edit in one shows in the other.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { CouchDB, Gateway, TcpProxy } from "../../clients/js/test/gateway.js";
import { errorsOf, launch, newPage, screenshotPath } from "./browser.js";

const T = 20000;
const RULES = `
[databases.notes]
users  = ["owner", "members"]
write  = ["owner", "members"]
fields = ["title", "body"]
owner  = "owner"
`;
let couch;
let gateway;
let browser;
let dir;
let alice;
let bob;

before(async () => {
  couch = await new CouchDB().start();
  alice = "alice"; // this file's own CouchDB: plain names (they show in the screenshot)
  bob = "bob";
  await couch.createUser(alice, "alice-pw", { roles: ["member"], fullName: "Alice Liddell" });
  await couch.createUser(bob, "bob-pw", { roles: ["member"], fullName: "Bob Dobbs" });
  assert.equal((await couch.request("PUT", "/notes")).status, 201);
  const docs = [
    { _id: "shared-plan", owner: alice, members: [bob], title: "Shared plan", body: "both may read" },
    { _id: "alice-diary", owner: alice, members: [], title: "Alice's diary", body: "only Alice" },
    { _id: "bob-list", owner: bob, members: [], title: "Bob's list", body: "only Bob" },
  ];
  for (const doc of docs) assert.equal((await couch.request("PUT", `/notes/${doc._id}`, doc)).status, 201);
  dir = mkdtempSync(path.join(tmpdir(), "realtime-demo-rules-"));
  writeFileSync(path.join(dir, "rules.toml"), RULES);
  gateway = await new Gateway(couch, { REALTIME_DEMO: "true", REALTIME_CONFIG: path.join(dir, "rules.toml") }).start();
  browser = await launch();
});

after(async () => {
  await browser.close();
  await gateway.cleanup();
  await couch.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function logIn(name, password, base = gateway.url) {
  const page = await newPage(browser);
  await page.goto(base + "/demo");
  await page.waitForSelector("#login-panel:not([hidden])", { timeout: T });
  await page.fill('#login input[name="name"]', name);
  await page.fill('#login input[name="password"]', password);
  await page.click('#login button[type="submit"]');
  await page.waitForFunction(() => document.body.dataset.ready === "live", null, { timeout: T });
  await page.waitForFunction(() => document.getElementById("status-notes")?.dataset.state === "subscribed",
    null, { timeout: T });
  return page;
}

const ids = (page) => page.$$eval('table[data-db="notes"] tbody tr', (rows) => rows.map((r) => r.dataset.id).sort());
const titleOf = (page, id) => page.textContent(`tr[data-id="${id}"] td[data-field="title"]`);

test("a wrong password is refused on the page", async () => {
  const page = await newPage(browser);
  await page.goto(gateway.url + "/demo");
  await page.fill('#login input[name="name"]', alice);
  await page.fill('#login input[name="password"]', "wrong");
  await page.click('#login button[type="submit"]');
  await page.waitForSelector("#login-error:not([hidden])", { timeout: T });
  assert.match(await page.textContent("#login-error"), /Wrong name or password/);
  await page.context().close();
});

test("two users, two browsers: each sees only its documents; an edit in one shows in the other", async () => {
  const pageA = await logIn(alice, "alice-pw");
  const pageB = await logIn(bob, "bob-pw");
  await pageA.waitForFunction(() => document.querySelectorAll('table[data-db="notes"] tbody tr').length === 2, null, { timeout: T });
  await pageB.waitForFunction(() => document.querySelectorAll('table[data-db="notes"] tbody tr').length === 2, null, { timeout: T });
  assert.deepEqual(await ids(pageA), ["alice-diary", "shared-plan"]);
  assert.deepEqual(await ids(pageB), ["bob-list", "shared-plan"]);
  // what a page holds is only what it may read (not merely what it shows)
  assert.equal(await pageB.evaluate(() => JSON.stringify([...window.realtimeDemo.docs.get("notes").keys()]).includes("alice-diary")), false);
  assert.match(await pageA.textContent("#profile"), /Alice Liddell/);
  assert.doesNotMatch(await pageA.textContent("#profile"), /password|derived_key|salt/);

  // Bob edits the shared document; Alice's page shows it
  await pageB.click('tr[data-id="shared-plan"] button');
  await pageB.fill('#edit-fields input[name="title"]', "Shared plan, edited by Bob");
  const started = Date.now();
  await pageB.click('#edit-form button[type="submit"]');
  await pageB.waitForFunction(() => document.getElementById("edit-result").dataset.state === "saved", null, { timeout: T });
  await pageA.waitForFunction(() => document.querySelector('tr[data-id="shared-plan"] td[data-field="title"]')
    ?.textContent === "Shared plan, edited by Bob", null, { timeout: T });
  const blink = Date.now() - started;
  assert.equal(await titleOf(pageB, "shared-plan"), "Shared plan, edited by Bob");
  assert.ok(blink < 5000, `the edit took ${blink} ms to show`);

  // Alice's profile changes in CouchDB: her page shows it live, Bob's does not
  await couch.touchUser(alice, { fullName: "Alice, renamed" });
  await pageA.waitForFunction(() => document.getElementById("profile").textContent.includes("Alice, renamed"), null, { timeout: 30000 });
  assert.match(await pageB.textContent("#profile"), /Bob Dobbs/);

  // Bob loses access to the shared plan: it leaves his page, stays on Alice's
  const { body: doc } = await couch.request("GET", "/notes/shared-plan");
  await couch.request("PUT", "/notes/shared-plan", { ...doc, members: [] });
  await pageB.waitForFunction(() => !document.querySelector('tr[data-id="shared-plan"]'), null, { timeout: T });
  assert.deepEqual(await ids(pageB), ["bob-list"]);
  assert.deepEqual(await ids(pageA), ["alice-diary", "shared-plan"]);

  await pageA.screenshot({ path: screenshotPath("demo.png"), fullPage: true, animations: "disabled" });
  assert.deepEqual(errorsOf(pageA), []);
  assert.deepEqual(errorsOf(pageB), []);
  await pageA.context().close();
  await pageB.context().close();
});

test("a reload keeps the session (HttpOnly cookie), and logging out ends it", async () => {
  const page = await logIn(alice, "alice-pw");
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.ready === "live", null, { timeout: T });
  assert.equal(await page.evaluate(() => document.cookie), "");
  await page.click("#logout");
  await page.waitForSelector("#login-panel:not([hidden])", { timeout: T });
  await page.reload();
  await page.waitForSelector("#login-panel:not([hidden])", { timeout: T });
  await page.context().close();
});

test("a cut network: back online, the page shows what changed while it was away", async (t) => {
  const proxy = await new TcpProxy(gateway.port).start(); // the page reaches the gateway through it
  t.after(() => proxy.stop());
  const temp = { _id: "alice-temp", owner: alice, members: [], title: "to be deleted while away" };
  assert.equal((await couch.request("PUT", "/notes/alice-temp", temp)).status, 201);
  const page = await logIn(alice, "alice-pw", `http://127.0.0.1:${proxy.port}`);
  await page.waitForSelector('tr[data-id="alice-diary"]', { timeout: T });
  await page.waitForSelector('tr[data-id="alice-temp"]', { timeout: T });
  await page.evaluate(() => window.realtimeDemo.rt.on("resumed", (m) => { window.resumedAnswer = m; }));
  await proxy.cut();
  await page.waitForFunction(() => document.getElementById("conn").dataset.state === "connecting", null, { timeout: T });
  const { body: doc } = await couch.request("GET", "/notes/alice-diary");
  await couch.request("PUT", "/notes/alice-diary", { ...doc, title: "Written while you were away" });
  const { body: tempNow } = await couch.request("GET", "/notes/alice-temp");
  assert.equal((await couch.request("DELETE", `/notes/alice-temp?rev=${tempNow._rev}`)).status, 200);
  await proxy.restore();
  await page.waitForFunction(() => document.querySelector('tr[data-id="alice-diary"] td[data-field="title"]')
    ?.textContent === "Written while you were away", null, { timeout: T });
  // the deleted one is gone, whether resume replayed its deletion or the snapshot lacked it
  await page.waitForSelector('tr[data-id="alice-temp"]', { state: "detached", timeout: T });
  // the re-subscription's snapshot brought the change; resume should have replayed it too
  const resumed = await (await page.waitForFunction(() => window.resumedAnswer, null, { timeout: T })).jsonValue();
  assert.equal(resumed.recovered.notes, true);
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("alice-diary changed (missed while away)"),
    null, { timeout: T });
  assert.match(await page.textContent("#log"), /resumed after a reconnect/);
  // While the network is cut, a reconnect that fires is refused, and Chromium logs that
  // refusal as a console error: it is what a cut network is, not a fault of the page (it
  // comes or not with the reconnect's jitter).  Every other error still fails the test.
  const cutOff = new RegExp(`^WebSocket connection to 'ws://127\\.0\\.0\\.1:${proxy.port}/ws' failed: .*ERR_CONNECTION_REFUSED`);
  assert.deepEqual(errorsOf(page).filter((error) => !cutOff.test(error)), []);
  await page.context().close();
});
