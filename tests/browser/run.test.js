// What a newcomer does: the run command (python -m realtime with the embedded CouchDB and
// REALTIME_DEMO=true, as `make run` starts it), its banner's /demo link, a login in Chromium.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";

import { ROOT, freePort, until } from "../../clients/js/test/gateway.js";
import { errorsOf, launch, newPage } from "./browser.js";

const T = 20000;
let child;
let output = "";
let browser;

before(async () => {
  const port = await freePort();
  const env = { ...process.env, REALTIME_DEMO: "true", REALTIME_LISTEN: `tcp:${port}:interface=127.0.0.1`,
    REALTIME_DEMO_PASSWORD: "newcomer-pw", PYTHONUNBUFFERED: "1" };
  delete env.COUCHDB_URL; // the embedded CouchDB, as make run
  child = spawn(process.env.PYTHON || "python3", ["-m", "realtime"], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", (data) => { output += data; });
  child.stderr.on("data", (data) => { output += data; });
  browser = await launch();
});

after(async () => {
  await browser.close();
  if (child.exitCode === null) {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM"); // the embedded pouchdb-server is stopped with it
    await exited;
  }
});

async function logIn(url, name) {
  const page = await newPage(browser);
  await page.goto(url);
  await page.fill('#login input[name="name"]', name);
  await page.fill('#login input[name="password"]', "newcomer-pw");
  await page.click('#login button[type="submit"]');
  await page.waitForFunction(() => document.body.dataset.ready === "live", null, { timeout: T });
  return page;
}

const notes = (page) => page.$$eval('table[data-db="notes"] tbody tr', (rows) => rows.map((r) => r.dataset.id).sort());

test("the run command's banner points to /demo: two demo users, each sees its own notes live", async () => {
  const url = await until(() => /Demo page[^\n]*\n\s*(http:\/\/\S+\/demo)/.exec(output)?.[1], 90000,
    `the banner's demo link (output so far:\n${output.slice(-2000)})`, 100);
  const first = await logIn(url, "demo");
  assert.match(await first.textContent("#profile"), /demo@example\.com/);
  const second = await logIn(url, "demo2");
  for (const page of [first, second]) {
    await page.waitForFunction(() => document.getElementById("status-notes")?.dataset.state === "subscribed",
      null, { timeout: T });
  }
  const [mine, theirs] = [await notes(first), await notes(second)];
  assert.ok(mine.includes("mine") && !mine.includes("theirs"), mine.join());
  assert.ok(theirs.includes("theirs") && !theirs.includes("mine"), theirs.join());
  assert.ok(mine.includes("welcome") && theirs.includes("welcome"));
  // an edit by one shows in the other
  await second.click('tr[data-id="welcome"] button');
  await second.fill('#edit-fields input[name="title"]', "Hello from demo2");
  await second.click('#edit-form button[type="submit"]');
  await first.waitForFunction(() => document.querySelector('tr[data-id="welcome"] td[data-field="title"]')
    ?.textContent === "Hello from demo2", null, { timeout: T });
  assert.deepEqual(errorsOf(first), []);
  assert.deepEqual(errorsOf(second), []);
  await first.context().close();
  await second.context().close();
});
