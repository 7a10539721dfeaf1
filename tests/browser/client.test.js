// The client (/realtime.js) in headless Chromium, on a page of the gateway (the /admin page:
// its strict Content-Security-Policy is what an application's page would have), against a
// real gateway and pouchdb-server.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { CouchDB, Gateway, TcpProxy, jwt, unique, until, within } from "../../clients/js/test/gateway.js";
import { errorsOf, launch, newPage } from "./browser.js";

const T = 20000;
let couch;
let gateway;
let browser;

before(async () => {
  couch = await new CouchDB().start();
  gateway = await new Gateway(couch, { REALTIME_DEMO: "true" }).start();
  browser = await launch();
});

after(async () => {
  await browser.close();
  await gateway.cleanup();
  await couch.stop();
});

/** Record every message the page's WebSockets send (signed envelopes: their payload). */
function recordSent() {
  window.__sent = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (text) {
    try {
      const message = JSON.parse(text);
      window.__sent.push(message.payload && message.signature ? { ...message.payload, signed: true } : message);
    } catch {
      // not JSON
    }
    return send.call(this, text);
  };
}

/** A page of `base` running a Realtime client made with `options` (plus `tokenFromNode`). */
async function clientPage(base, options = {}, { tokenFromNode } = {}) {
  const page = await newPage(browser);
  await page.addInitScript(recordSent);
  if (tokenFromNode) await page.exposeFunction("tokenFromNode", tokenFromNode);
  await page.goto(base + "/admin");
  await page.evaluate(async ({ options, useFunction }) => {
    const { Realtime } = await import("/realtime.js");
    window.states = [];
    window.messages = [];
    if (useFunction) options.token = () => window.tokenFromNode();
    window.rt = new Realtime("/ws", options);
    window.rt.on("state", (state, detail) => window.states.push({ state, ...detail }));
    window.rt.on("*", (message) => window.messages.push(message));
  }, { options, useFunction: !!tokenFromNode });
  return page;
}

const isOpen = () => window.rt.state === "open";

describe("the four ways to authenticate", () => {
  test("a token string: first message, no token in the URL", async () => {
    const page = await clientPage(gateway.url, { token: jwt("anna") });
    await page.waitForFunction(isOpen, null, { timeout: T });
    assert.equal(await page.evaluate(() => window.rt.user.id), "anna");
    const sent = await page.evaluate(() => window.__sent);
    assert.equal(sent[0].type, "auth");
    assert.deepEqual(errorsOf(page), []);
    await page.context().close();
  });

  test("a token function, called at every connect", async () => {
    let calls = 0;
    const page = await clientPage(gateway.url, { jitterMs: 50 }, {
      tokenFromNode: () => {
        calls += 1;
        return jwt("bert");
      },
    });
    await page.waitForFunction(isOpen, null, { timeout: T });
    assert.equal(calls, 1);
    const { status } = await gateway.rest("DELETE", "/websocket/users/bert/disconnect");
    assert.equal(status, 200); // 4003: the client stops ...
    await page.waitForFunction(() => window.rt.state === "closed", null, { timeout: T });
    await page.evaluate(() => window.rt.connect()); // ... until told to connect again
    await page.waitForFunction(isOpen, null, { timeout: T });
    assert.equal(calls, 2);
    await page.context().close();
  });

  test("a token in the query string, when asked for", async () => {
    const page = await clientPage(gateway.url, { token: jwt("cleo"), tokenIn: "query" });
    await page.waitForFunction(isOpen, null, { timeout: T });
    assert.equal(await page.evaluate(() => window.rt.user.id), "cleo");
    assert.deepEqual(await page.evaluate(() => window.__sent.filter((m) => m.type === "auth")), []);
    await page.context().close();
  });

  test("the CouchDB cookie: logged in through /demo/session, no token at all", async () => {
    const name = unique("cookie");
    await couch.createUser(name, "pw-" + name);
    const page = await newPage(browser);
    await page.goto(gateway.url + "/admin");
    const status = await page.evaluate(async ({ name }) => (await fetch("/demo/session", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name, password: "pw-" + name }),
    })).status, { name });
    assert.equal(status, 200);
    assert.equal(await page.evaluate(() => document.cookie), ""); // HttpOnly: not for scripts
    await page.evaluate(async () => {
      const { Realtime } = await import("/realtime.js");
      window.rt = new Realtime("/ws");
    });
    await page.waitForFunction(isOpen, null, { timeout: T });
    assert.equal(await page.evaluate(() => window.rt.user.name), name);
    await page.context().close();
  });
});

describe("another origin", () => {
  test("a page of another origin imports /realtime.js (CORS) and connects with a token", async (t) => {
    const proxy = await new TcpProxy(gateway.port).start(); // another port: another origin
    t.after(() => proxy.stop());
    const page = await newPage(browser);
    await page.goto(`http://127.0.0.1:${proxy.port}/websocket/status`); // a JSON page: no CSP
    const user = await within(page.evaluate(async ({ base, token }) => {
      const { Realtime } = await import(`${base}/realtime.js`);
      const rt = new Realtime(`${base.replace("http", "ws")}/ws`, { token });
      await new Promise((resolve) => rt.on("state", (s) => s === "open" && resolve()));
      rt.close();
      return rt.user.id;
    }, { base: gateway.url, token: jwt("far-away") }), T, "the client from another origin");
    assert.equal(user, "far-away");
    await page.context().close();
  });
});

describe("close codes and lost networks", () => {
  test("a refused token (4001): the client stops and says why", async () => {
    const page = await clientPage(gateway.url, { token: jwt("dora", { secret: "wrong-secret" }) });
    await page.waitForFunction(() => window.rt.state === "closed", null, { timeout: T });
    const last = await page.evaluate(() => window.states.at(-1));
    assert.equal(last.code, 4001);
    assert.equal(last.reason, "auth-failed");
    await page.context().close();
  });

  test("a gateway restart (4200): back at once, resumed from the last seq, re-subscribed", async () => {
    const name = unique("restart");
    await couch.createUser(name, "pw");
    const page = await clientPage(gateway.url, { token: jwt(name), jitterMs: 200 });
    await page.waitForFunction(isOpen, null, { timeout: T });
    const topic = `public:${unique("news")}`;
    await page.evaluate(async (topic) => {
      window.news = [];
      await window.rt.subscribe(topic, (m) => window.news.push(m.data));
    }, topic);
    await couch.touchUser(name, { mood: "before" });
    await page.waitForFunction(() => window.messages.some((m) => m.type === "user-change" && m.doc && m.doc.mood === "before"),
      null, { timeout: 30000 });
    const seq = await page.evaluate(() => window.rt.positions.seqs._users);

    await gateway.restart();
    await page.waitForFunction(() => window.states.some((s) => s.code === 4200), null, { timeout: T });
    await page.waitForFunction(isOpen, null, { timeout: T });
    const resume = await page.evaluate(() => window.__sent.filter((m) => m.type === "resume"));
    assert.equal(resume.length, 1);
    assert.equal(resume[0].since._users, seq);
    await page.waitForFunction((topic) => window.messages.filter((m) => m.type === "subscribed" && m.topic === topic).length === 2,
      topic, { timeout: T });
    await gateway.rest("POST", "/websocket/publish", { topic, data: "after the restart" });
    await page.waitForFunction(() => window.news.includes("after the restart"), null, { timeout: T });
    await page.context().close();
  });

  test("a cut network: the page comes back, resumes, and shows what it missed", async (t) => {
    const name = unique("cut");
    await couch.createUser(name, "pw");
    const proxy = await new TcpProxy(gateway.port).start();
    t.after(() => proxy.stop());
    const page = await clientPage(`http://127.0.0.1:${proxy.port}`, { token: jwt(name), jitterMs: 100, minDelayMs: 200 });
    await page.waitForFunction(isOpen, null, { timeout: T });
    await couch.touchUser(name, { step: 1 });
    await page.waitForFunction(() => window.messages.some((m) => m.type === "user-change" && m.doc && m.doc.step === 1),
      null, { timeout: 30000 });
    const seq = await page.evaluate(() => window.rt.positions.seqs._users);

    await proxy.cut();
    await page.waitForFunction(() => window.rt.state === "connecting", null, { timeout: T });
    await couch.touchUser(name, { step: 2 }); // while the page is cut off
    await until(async () => (await gateway.rest("GET", `/websocket/users/${name}/status`)).body.connected === false,
      T, "the gateway to see the page gone");
    const stored = await gateway.rest("POST", "/websocket/message/user",
      { userId: name, type: "missed-note", data: { text: "sent while you were away" } });
    assert.equal(stored.status, 404); // not connected anywhere: kept in the history
    await proxy.restore();
    await page.waitForFunction(isOpen, null, { timeout: T });
    const resume = await page.evaluate(() => window.__sent.filter((m) => m.type === "resume"));
    assert.equal(resume.length, 1);
    assert.equal(resume[0].since._users, seq);
    const answer = await page.waitForFunction(() => window.messages.find((m) => m.type === "resumed"
      || (m.type === "error" && m.code === "unknown_type")), null, { timeout: T });
    const resumed = await answer.jsonValue();
    // the message sent while away arrives, from the history
    await page.waitForFunction(() => window.messages.some((m) => m.type === "missed-note"), null, { timeout: T });
    assert.equal(resumed.recovered.messages, true);
    assert.equal(resumed.recovered._users, true);
    await page.waitForFunction(() => window.messages.some((m) => m.type === "user-change" && m.doc && m.doc.step === 2),
      null, { timeout: T });
    await page.context().close();
  });
});

describe("signed messages", () => {
  test("with WS_SIGNED_MESSAGES the page signs with WebCrypto, and the gateway accepts it", async (t) => {
    const signed = await new Gateway(couch, { WS_SIGNED_MESSAGES: "true" }).start();
    t.after(() => signed.cleanup());
    const page = await clientPage(signed.url, { token: jwt("sig") });
    await page.waitForFunction(isOpen, null, { timeout: T });
    const pong = await page.evaluate(async () => {
      const topic = "public:signed-in-chromium";
      window.seen = [];
      await window.rt.subscribe(topic, (m) => window.seen.push(m.data.n));
      await Promise.all([1, 2, 3].map((n) => window.rt.publish(topic, { n })));
      return (await window.rt.ping()).type;
    });
    assert.equal(pong, "pong");
    await page.waitForFunction(() => window.seen.length === 3, null, { timeout: T });
    assert.deepEqual(await page.evaluate(() => window.seen), [1, 2, 3]);
    assert.deepEqual(await page.evaluate(() => window.messages.filter((m) => m.type === "error")), []);
    const sent = await page.evaluate(() => window.__sent);
    assert.equal(sent[0].type, "auth"); // before connected: not signed
    assert.ok(sent.length > 4 && sent.slice(1).every((m) => m.signed), JSON.stringify(sent));
    await page.context().close();
  });
});
