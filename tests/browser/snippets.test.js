// The documentation's JavaScript snippets (README.rst, docs/*.rst) run as written in Chromium,
// against a gateway started as `make run` starts it (the embedded CouchDB, REALTIME_DEMO=true,
// plus JWT_SECRET and REALTIME_ADMIN_KEY), so that a snippet that fails as written fails here.
//
// Which blocks: those tests/test_doc_snippets.py finds as JavaScript commands (it is asked, so
// both tests read the pages with the same rules); a block marked `.. not run by the tests:
// <why>` is not run.  Each snippet runs as a module script on a document of the gateway's
// origin (/websocket/status), with `http://127.0.0.1:8080` (and ws://) replaced by the gateway's address and a
// `<script type="module">` wrapper taken off.  What the snippets leave to the application is
// given as page globals: `jwt`, `token` and `getJwt()` (the demo user's JWT, as
// `python -m realtime.token demo` prints it), `id` and `rev0` (the demo user's note "mine" and
// its current revision), and the application's own functions (`show`, `profile`, `render`,
// `apply`, `updateProfile`, `reloadFromMyApi`, `connect`), which record their calls.
//
// A snippet passes when it runs to its end with no page error and no console error, opens a
// WebSocket that gets `connected` (never `auth_failed` or an `error`), and, when it sends a
// `resume`, gets `resumed`.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { after, before, test } from "node:test";

import { ROOT, freePort, jwt as makeJwt, until } from "../../clients/js/test/gateway.js";
import { errorsOf, launch, newPage } from "./browser.js";

const T = 20000;
const SECRET = "snippets-test-secret-0123456789-abcdefghij";
const PYTHON = process.env.PYTHON || "python3";
const APP_FUNCTIONS = ["show", "profile", "render", "apply", "updateProfile", "reloadFromMyApi", "connect"];

const SNIPPETS = JSON.parse(execFileSync(PYTHON, ["-c", `
import json, sys
sys.path.insert(0, ".")
from tests.test_doc_snippets import PAGES, snippets
print(json.dumps([{"page": p, "line": l, "text": t, "reason": r}
                  for p in PAGES for (l, lang, t, r) in snippets(p) if lang == "javascript"]))
`], { cwd: ROOT }).toString());

let child;
let output = "";
let browser;
let base;
let couch;

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const env = { ...process.env, REALTIME_DEMO: "true", REALTIME_LISTEN: `tcp:${port}:interface=127.0.0.1`,
    JWT_SECRET: SECRET, REALTIME_ADMIN_KEY: "s3cret-admin-key", PYTHONUNBUFFERED: "1" };
  delete env.COUCHDB_URL; // the embedded CouchDB, as make run
  child = spawn(PYTHON, ["-m", "realtime"], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", (data) => { output += data; });
  child.stderr.on("data", (data) => { output += data; });
  await until(() => /realtime: ready/.test(output), 90000, `the gateway to be ready:\n${output.slice(-2000)}`, 100);
  const share = /COUCHDB_URL=(\S+) COUCHDB_ADMIN_AUTH=(\S+)/.exec(output);
  assert.ok(share, output);
  couch = { url: share[1], auth: `Basic ${share[2]}` };
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (child && child.exitCode === null) {
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    await exited;
  }
});

/** What a page receives and sends on its WebSockets (installed before the snippet runs). */
function recordWebSockets() {
  window.__received = [];
  window.__sent = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        try { window.__received.push(JSON.parse(event.data)); } catch { /* not JSON */ }
      });
    }

    send(text) {
      try { window.__sent.push(JSON.parse(text)); } catch { /* not JSON */ }
      return super.send(text);
    }
  };
}

function moduleOf(text) {
  let code = text.replaceAll("127.0.0.1:8080", base.slice("http://".length));
  const wrapped = /^\s*<script type="module">\n([\s\S]*?)<\/script>\s*$/.exec(code);
  if (wrapped) code = wrapped[1];
  const lines = code.split("\n");
  const imports = lines.filter((line) => /^\s*import\s/.test(line));
  const body = lines.filter((line) => !/^\s*import\s/.test(line));
  return [...imports, ...body, "window.__done = true;"].join("\n");
}

async function noteRevision(docId) {
  const response = await fetch(`${couch.url}/notes/${docId}`, { headers: { Authorization: couch.auth } });
  assert.equal(response.status, 200, `the demo note ${docId}`);
  return (await response.json())._rev;
}

const toRun = SNIPPETS.filter((s) => s.reason === null);

test("the pages hold JavaScript snippets, and each one that is not run says why", () => {
  assert.ok(toRun.length >= 3, JSON.stringify(SNIPPETS.map((s) => `${s.page}:${s.line}`)));
  for (const s of SNIPPETS) assert.notEqual(s.reason, "(no reason)", `${s.page}:${s.line}`);
});

for (const snippet of toRun) {
  test(`${snippet.page}:${snippet.line} runs as written`, async () => {
    const page = await newPage(browser);
    await page.addInitScript(recordWebSockets);
    // a document of the gateway's own origin with no Content-Security-Policy (the pages have
    // a strict one, which an inline snippet would meet first)
    await page.goto(`${base}/websocket/status`);
    const token = makeJwt("demo", { secret: SECRET });
    await page.evaluate(({ token, rev, names }) => {
      Object.assign(window, { jwt: token, token, getJwt: async () => token, id: "mine", rev0: rev });
      window.__calls = [];
      for (const name of names) window[name] = (...args) => { window.__calls.push([name, args]); };
    }, { token, rev: await noteRevision("mine"), names: APP_FUNCTIONS });
    const where = `${snippet.page}:${snippet.line}`;
    await page.addScriptTag({ type: "module", content: moduleOf(snippet.text) });
    await page.waitForFunction(() => window.__done === true || window.__received.some((m) => m.type === "auth_failed"),
      null, { timeout: T }).catch(() => {});
    assert.deepEqual(errorsOf(page), [], where);
    assert.equal(await page.evaluate(() => window.__done), true, `${where} did not run to its end`);
    await page.waitForFunction(() => window.__received.some((m) => m.type === "connected"), null, { timeout: T });
    if (await page.evaluate(() => window.__sent.some((m) => m.type === "resume"))) {
      await page.waitForFunction(() => window.__received.some((m) => m.type === "resumed"), null, { timeout: T });
    }
    const refused = await page.evaluate(() => window.__received.filter((m) => m.type === "auth_failed" || m.type === "error"));
    assert.deepEqual(refused, [], where);
    assert.deepEqual(errorsOf(page), [], where);
    await page.context().close();
  });
}
