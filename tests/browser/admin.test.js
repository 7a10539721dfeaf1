// The /admin dashboard in headless Chromium against a real gateway: it logs in with the
// admin key, shows a connection a test client opens, and its "Disconnect" closes that client.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Realtime } from "../../clients/js/realtime.js";
import { ADMIN_KEY, CouchDB, Gateway, jwt, recordingWebSocket, unique, within } from "../../clients/js/test/gateway.js";
import { errorsOf, launch, newPage, screenshotPath } from "./browser.js";

const T = 20000;
let couch;
let gateway;
let browser;
const clients = [];

before(async () => {
  couch = await new CouchDB().start();
  gateway = await new Gateway(couch).start();
  browser = await launch();
});

after(async () => {
  for (const rt of clients) rt.close();
  await browser.close();
  await gateway.cleanup();
  await couch.stop();
});

function nodeClient(user) {
  const rt = new Realtime(gateway.wsUrl, { token: jwt(user), WebSocket: recordingWebSocket().WebSocket });
  clients.push(rt);
  return within(rt.once("state", (s) => s === "open"), T, `${user} connected`).then(() => rt);
}

async function loggedIn(page) {
  await page.goto(gateway.url + "/admin?interval=300");
  await page.waitForSelector("#login-panel:not([hidden])", { timeout: T });
  await page.fill('input[name="credential"]', ADMIN_KEY);
  await page.click('#login button[type="submit"]');
  await page.waitForFunction(() => document.body.dataset.ready === "dashboard", null, { timeout: T });
}

test("a wrong key is refused with a clear message, and kept nowhere", async () => {
  const page = await newPage(browser);
  await page.goto(gateway.url + "/admin");
  await page.fill('input[name="credential"]', "not-the-key");
  await page.click('#login button[type="submit"]');
  await page.waitForSelector("#login-error:not([hidden])", { timeout: T });
  assert.match(await page.textContent("#login-error"), /Not accepted/);
  assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);
  await page.context().close();
});

test("the dashboard logs in, shows a new connection, and its Disconnect closes that client", async () => {
  const page = await newPage(browser);
  await loggedIn(page);
  // the key: in sessionStorage only, never in the URL or localStorage
  assert.equal(await page.evaluate(() => sessionStorage.getItem("realtime-admin-credential")), ADMIN_KEY);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.ok(!page.url().includes(ADMIN_KEY));

  const user = unique("watched");
  const rt = await nodeClient(user);
  const row = page.locator(`#users tr[data-user="${user}"]`);
  await row.waitFor({ timeout: T });
  assert.equal((await row.locator("td").nth(1).textContent()).trim(), "1");
  await page.locator("#feeds tr[data-db=_users]").waitFor({ timeout: T });
  await page.locator("#processes tr[data-process]").first().waitFor({ timeout: T });

  const closed = within(rt.once("state", (s) => s === "closed"), T, "the client to be closed");
  await row.locator("button.danger").click();
  const [, detail] = await closed;
  assert.equal(detail.code, 4003);
  await row.waitFor({ state: "detached", timeout: T });
  assert.deepEqual(errorsOf(page), []);
  await page.context().close();
});

test("actions: a message to a user and a broadcast reach the client", async () => {
  const page = await newPage(browser);
  await loggedIn(page);
  const user = unique("told");
  const rt = await nodeClient(user);
  const notice = within(rt.once("notice"), T, "the notice");
  const form = page.locator("#f-message");
  await form.locator('input[name="userId"]').fill(user);
  await form.locator('textarea[name="data"]').fill('{"text": "from the dashboard"}');
  await form.locator('button[type="submit"]').click();
  assert.equal((await notice).data.text, "from the dashboard");
  const announcement = within(rt.once("announcement"), T, "the broadcast");
  await page.locator('#f-broadcast button[type="submit"]').click();
  assert.equal((await announcement).data.text, "maintenance at 22:00");
  await page.locator('#actions li[data-ok="true"]').nth(1).waitFor({ timeout: T });
  await page.context().close();
});

test("revoking a token from the dashboard closes its connection (4001, revoked)", async () => {
  const page = await newPage(browser);
  await loggedIn(page);
  const token = jwt(unique("revoked"));
  const rt = new Realtime(gateway.wsUrl, { token, WebSocket: recordingWebSocket().WebSocket });
  clients.push(rt);
  await within(rt.once("state", (s) => s === "open"), T, "connected");
  const closed = within(rt.once("state", (s) => s === "closed"), T, "the client to be closed");
  await page.fill('#f-revoke input[name="token"]', token);
  await page.click('#f-revoke button[type="submit"]');
  const [, detail] = await closed;
  assert.deepEqual([detail.code, detail.reason], [4001, "revoked"]);
  // the token was sent in the body only: it is not on the page afterwards
  assert.equal((await page.content()).includes(token), false);
  await page.context().close();
});

test("screenshot of the dashboard with traffic on its charts", async () => {
  const page = await newPage(browser);
  const people = await Promise.all(["ada", "grace", "linus", "ken"].map((name) => nodeClient(unique(name))));
  const topic = "public:screenshot";
  await Promise.all(people.map((rt) => rt.subscribe(topic, () => {})));
  await loggedIn(page);
  await people[1].subscribe("user:somebody-else").catch(() => {}); // a refusal: forbidden
  const publishing = setInterval(() => {
    gateway.rest("POST", "/websocket/publish", { topic, data: { at: Date.now() } }).catch(() => {});
    people[0].publish(topic, { hello: true }).catch(() => {});
  }, 100);
  try {
    await page.waitForFunction(() => window.realtimeAdmin.samples.length >= 25, null, { timeout: 30000 });
  } finally {
    clearInterval(publishing);
  }
  await page.screenshot({ path: screenshotPath("admin.png"), fullPage: true, animations: "disabled" });
  assert.ok(Number(await page.textContent("#t-auth")) >= 4);
  await page.context().close();
});
