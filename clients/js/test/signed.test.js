// Signed messages (WS_SIGNED_MESSAGES=true): the client signs with WebCrypto, in order.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Realtime, RealtimeError } from "../realtime.js";
import { CouchDB, Gateway, jwt, recordingWebSocket, unique, within } from "./gateway.js";

const T = 20000;
let couch;
let gateway;
const clients = [];

before(async () => {
  couch = await new CouchDB().start();
  gateway = await new Gateway(couch, { WS_SIGNED_MESSAGES: "true" }).start();
});

after(async () => {
  for (const rt of clients) rt.close();
  await gateway.cleanup();
  await couch.stop();
});

function open(options) {
  const rt = new Realtime(gateway.wsUrl, options);
  clients.push(rt);
  return within(rt.once("state", (s) => s === "open"), T, "open").then(() => rt);
}

test("with a sessionSecret every message after connected is a signed envelope, accepted", async () => {
  const ws = recordingWebSocket();
  const rt = await open({ token: jwt("kim"), WebSocket: ws.WebSocket });
  const errors = [];
  rt.on("error", (m) => errors.push(m));
  const topic = `public:${unique("signed")}`;
  const got = [];
  await within(rt.subscribe(topic, (m) => got.push(m)), T, "subscribed");
  // several at once: signing is asynchronous, the order must hold
  await Promise.all([1, 2, 3, 4, 5].map((n) => rt.publish(topic, { n, text: "é ✓" })));
  await within(new Promise((resolve) => {
    const poll = () => (got.length === 5 ? resolve() : setTimeout(poll, 20));
    poll();
  }), T, "five publications");
  assert.deepEqual(got.map((m) => m.data.n), [1, 2, 3, 4, 5]);
  assert.deepEqual(errors, []);
  assert.equal(ws.sent[0].type, "auth");
  assert.equal(ws.sent[0].signed, undefined); // before connected: not signed
  assert.ok(ws.sent.slice(1).every((m) => m.signed), JSON.stringify(ws.sent));
});

test("a refusal still comes back as a rejected promise when signed", async () => {
  const rt = await open({ token: jwt("lee"), WebSocket: recordingWebSocket().WebSocket });
  await assert.rejects(within(rt.subscribe("user:not-lee"), T, "refusal"),
    (e) => e instanceof RealtimeError && e.code === "forbidden");
  const pong = await within(rt.ping(), T, "pong");
  assert.equal(pong.type, "pong");
});
