// Document writes and database topics through the client, against a real gateway with a
// rule file (REALTIME_CONFIG) on a real pouchdb-server.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { Realtime, RealtimeError } from "../realtime.js";
import { CouchDB, Gateway, TcpProxy, jwt, recordingWebSocket, unique, within } from "./gateway.js";

const T = 20000;
const RULES = `
[databases.notes]
users  = ["owner", "members"]
write  = ["owner"]
fields = ["title", "body"]
owner  = "owner"
`;
let couch;
let gateway;
let dir;
const clients = [];

before(async () => {
  couch = await new CouchDB().start();
  assert.equal((await couch.request("PUT", "/notes")).status, 201);
  dir = mkdtempSync(path.join(tmpdir(), "realtime-js-rules-"));
  writeFileSync(path.join(dir, "rules.toml"), RULES);
  gateway = await new Gateway(couch, { REALTIME_CONFIG: path.join(dir, "rules.toml") }).start();
});

after(async () => {
  for (const rt of clients) rt.close();
  await gateway.cleanup();
  await couch.stop();
  rmSync(dir, { recursive: true, force: true });
});

function open(url, user, options = {}) {
  const ws = recordingWebSocket();
  const rt = new Realtime(url, { token: jwt(user), WebSocket: ws.WebSocket, jitterMs: 50, minDelayMs: 100, ...options });
  rt.sent = ws.sent;
  clients.push(rt);
  return within(rt.once("state", (s) => s === "open"), T, `${user} open`).then(() => rt);
}

test("create, update and remove resolve with their answers; refusals reject with the error", async () => {
  const owner = unique("owner");
  const rt = await open(gateway.wsUrl, owner);
  const seen = [];
  await within(rt.subscribe("db:notes", (m) => seen.push(m), { snapshot: true }), T, "subscribed");

  const created = await within(rt.create("notes", { title: "first" }), T, "doc.created");
  assert.equal(created.type, "doc.created");
  const updated = await within(rt.update("notes", created.id, created.rev, { title: "second" }), T, "doc.updated");
  assert.equal(updated.type, "doc.updated");
  assert.notEqual(updated.rev, created.rev);

  await assert.rejects(rt.update("notes", created.id, created.rev, { title: "stale" }),
    (e) => e instanceof RealtimeError && e.code === "conflict" && e.rev === updated.rev);
  await assert.rejects(rt.update("notes", created.id, updated.rev, { owner: "someone-else" }),
    (e) => e instanceof RealtimeError && e.code === "forbidden");

  // the changes reach the writer too, through the feed, as doc-change on db:notes
  await within(new Promise((resolve) => {
    const poll = () => (seen.some((m) => m.doc && m.doc.title === "second") ? resolve() : setTimeout(poll, 20));
    poll();
  }), T, "the doc-change of the update");
  const removed = await within(rt.remove("notes", created.id, updated.rev), T, "doc.deleted");
  assert.equal(removed.type, "doc.deleted");
  assert.equal(rt.positions.seqs.notes !== undefined, true);
});

test("a write whose answer is lost with the connection is sent again, with the same ref", async (t) => {
  const owner = unique("retry");
  const proxy = await new TcpProxy(gateway.port).start();
  t.after(() => proxy.stop());
  const rt = await open(proxy.wsUrl, owner);
  const created = await within(rt.create("notes", { title: "before" }), T, "created");

  proxy.freeze(); // the update goes nowhere, no answer comes back
  const pending = rt.update("notes", created.id, created.rev, { title: "after the cut" });
  await proxy.cut();
  await proxy.restore();
  const answer = await within(pending, T, "the update's answer after the reconnect");
  assert.equal(answer.type, "doc.updated");
  const sent = rt.sent.filter((m) => m.type === "doc.update");
  assert.ok(sent.length >= 1);
  assert.ok(sent.every((m) => m.ref === answer.ref), JSON.stringify(sent));
  const { body } = await couch.request("GET", `/notes/${encodeURIComponent(created.id)}`);
  assert.equal(body.title, "after the cut");
});

test("two page loads' first creates of the same document are two documents: refs never repeat", async () => {
  const owner = unique("reload");
  const ids = [];
  const refs = [];
  for (let load = 0; load < 2; load += 1) { // a page load: a new client, its first create
    const rt = await open(gateway.wsUrl, owner);
    const created = await within(rt.create("notes", { title: "same text" }), T, `created ${load}`);
    ids.push(created.id);
    refs.push(rt.sent.find((m) => m.type === "doc.create").ref);
    rt.close();
  }
  assert.notEqual(refs[0], refs[1]);
  assert.ok(refs.every((ref) => ref.length <= 64), refs.join(" "));
  assert.notEqual(ids[0], ids[1], "the second page's create was answered with the first's document");
  const { body } = await couch.request("GET", "/notes/_all_docs?include_docs=true");
  const mine = body.rows.filter((row) => row.doc.owner === owner);
  assert.equal(mine.length, 2);
});
