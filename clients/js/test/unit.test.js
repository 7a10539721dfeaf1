// The client against a scripted server: a fake WebSocket whose every frame the test writes,
// for what a real gateway does only in rare moments (a drop in mid-replay, CouchDB away
// during a resume, a topic refused on re-subscription, a missing WebCrypto).
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocket as NodeWebSocket } from "ws";

import { Realtime } from "../realtime.js";

/** A WebSocket class whose sockets the test drives; `sockets` lists them in order. */
function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closed = null;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closed = { code, reason };
      this.readyState = 3;
    }

    // -- the server's side --
    open() {
      this.readyState = 1;
    }

    receive(message) {
      this.onmessage && this.onmessage({ data: typeof message === "string" ? message : JSON.stringify(message) });
    }

    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason });
    }

    /** The last message of `type` the client sent on this socket (and `filter` accepts). */
    last(type, filter = () => true) {
      return [...this.sent].reverse().find((m) => m.type === type && filter(m));
    }
  }
  return { WebSocket: FakeWebSocket, sockets };
}

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/** A client on a fake gateway: immediate reconnects, no watchdog during the test. */
function setup(options = {}) {
  const fake = fakeWebSocket();
  const rt = new Realtime("ws://gateway.test/ws", {
    token: "a.b.c", WebSocket: fake.WebSocket, random: () => 0, jitterMs: 0,
    minDelayMs: 5, maxDelayMs: 20, pingIntervalMs: 60000, requestTimeoutMs: 2000, ...options,
  });
  return { rt, fake };
}

/** Accept the newest socket: open, authenticate, `connected` with `seqs`. */
async function accept(fake, seqs = {}, extra = {}) {
  await tick(); // reconnects are on a timer
  const ws = fake.sockets.at(-1);
  ws.open();
  ws.receive({ type: "connection_established" });
  ws.receive({ type: "connected", user: { id: "ann", name: "ann", roles: [] }, connectionId: `c${fake.sockets.length}`, seqs, ...extra });
  return ws;
}

test("a topic resumed with since keeps subscribed.until: the next reconnect does not replay it again", async () => {
  const { rt, fake } = setup();
  try {
    let ws = await accept(fake);
    const got = [];
    const subscribing = rt.subscribe("public:room", (m) => got.push(m));
    ws.receive({ type: "subscribed", topic: "public:room", ref: ws.last("subscribe").ref });
    await subscribing;
    ws.receive({ type: "publication", topic: "public:room", data: 1, offset: "o1" });
    ws.drop();

    ws = await accept(fake);
    const again = ws.last("subscribe");
    assert.equal(again.since, "o1");
    // the server replays what came after o1, then says where the topic stands
    ws.receive({ type: "publication", topic: "public:room", data: 2, offset: "o2", replay: true });
    ws.receive({ type: "subscribed", topic: "public:room", recovered: true, until: "o2", replayed: 1, ref: again.ref });
    assert.equal(rt.positions.topics["public:room"], "o2");
    ws.drop();

    ws = await accept(fake);
    assert.equal(ws.last("subscribe").since, "o2", "publication o2 would be replayed a second time");
    assert.deepEqual(got.map((m) => m.data), [1, 2]);
  } finally {
    rt.close();
  }
});

test("a live change that arrives before the replay is done does not move the seq past the replay", async () => {
  const { rt, fake } = setup();
  try {
    let ws = await accept(fake, { notes: 5 });
    ws.receive({ type: "doc-change", db: "notes", id: "a", rev: "1-x", seq: 6, doc: {} });
    ws.drop();

    ws = await accept(fake, { notes: 12 });
    const resume = ws.last("resume");
    assert.deepEqual(resume.since, { notes: 6 });
    // live, before the server has read `resume` (it sends what it has at once)
    ws.receive({ type: "doc-change", db: "notes", id: "b", rev: "3-x", seq: 12, doc: {} });
    ws.receive({ type: "doc-change", db: "notes", id: "c", rev: "1-x", seq: 8, doc: {}, replay: true });
    ws.drop(); // the replay of 7..11 is cut short

    ws = await accept(fake, { notes: 12 });
    assert.deepEqual(ws.last("resume").since, { notes: 6 }, "changes 7-11 would never be replayed");
    ws.receive({ type: "resumed", since: { notes: 6 }, until: { notes: 12 }, replayed: { notes: 3 }, recovered: { notes: true }, ref: ws.last("resume").ref });
    assert.equal(rt.positions.seqs.notes, 12);
    ws.receive({ type: "doc-change", db: "notes", id: "d", rev: "1-x", seq: 13, doc: {} });
    assert.equal(rt.positions.seqs.notes, 13, "after resumed, live seqs count again");
  } finally {
    rt.close();
  }
});

test("a database whose resume was unavailable is resumed again from the same seq", async () => {
  const { rt, fake } = setup();
  try {
    let ws = await accept(fake, { notes: 5, _users: 3 });
    ws.drop();
    ws = await accept(fake, { notes: 9, _users: 4 });
    const first = ws.last("resume");
    assert.deepEqual(first.since, { notes: 5, _users: 3 });
    const told = [];
    rt.on("resumed", (m) => told.push(m));
    ws.receive({
      type: "resumed", since: first.since, until: { notes: 5, _users: 4 }, replayed: { notes: 0, _users: 1 },
      recovered: { notes: false, _users: true }, reason: { notes: "unavailable" }, ref: first.ref,
    });
    assert.equal(told.length, 1, "the app is told");
    ws.receive({ type: "doc-change", db: "notes", id: "z", rev: "1-x", seq: 9, doc: {} });
    assert.equal(rt.positions.seqs.notes, 5, "a live change does not skip the changes not replayed");
    assert.equal(rt.positions.seqs._users, 4);
    const deadline = Date.now() + 1000;
    while (!ws.last("resume", (m) => m !== first) && Date.now() < deadline) await tick(5);
    const retry = ws.last("resume", (m) => m !== first);
    assert.ok(retry, "no second resume for the database CouchDB could not answer");
    assert.deepEqual(retry.since, { notes: 5 });
    ws.receive({ type: "resumed", since: { notes: 5 }, until: { notes: 9 }, replayed: { notes: 2 }, recovered: { notes: true }, ref: retry.ref });
    assert.equal(rt.positions.seqs.notes, 9);
  } finally {
    rt.close();
  }
});

test("a database the gateway does not follow is no longer sent in resume", async () => {
  const { rt, fake } = setup({ since: { seqs: { gone: 4, notes: 1 } } });
  try {
    let ws = await accept(fake, { notes: 2 });
    const resume = ws.last("resume");
    assert.deepEqual(resume.since, { gone: 4, notes: 1 });
    ws.receive({
      type: "resumed", since: resume.since, until: { gone: 4, notes: 2 }, replayed: { gone: 0, notes: 0 },
      recovered: { gone: false, notes: true }, reason: { gone: "unknown_database" }, ref: resume.ref,
    });
    ws.drop();
    ws = await accept(fake, { notes: 2 });
    assert.deepEqual(ws.last("resume").since, { notes: 2 });
  } finally {
    rt.close();
  }
});

test("a topic refused when re-subscribed after a reconnect is forgotten, and its handler told", async () => {
  const { rt, fake } = setup();
  try {
    let ws = await accept(fake);
    const got = [];
    const subscribing = rt.subscribe("doc:notes/n1", (m) => got.push(m), { snapshot: true });
    ws.receive({ type: "subscribed", topic: "doc:notes/n1", ref: ws.last("subscribe").ref });
    await subscribing;
    ws.drop();

    ws = await accept(fake); // access to n1 was lost while away
    const again = ws.last("subscribe");
    assert.equal(again.snapshot, true);
    ws.receive({ type: "error", code: "forbidden", message: "you may not subscribe", topic: "doc:notes/n1", ref: again.ref });
    assert.deepEqual(got.map((m) => [m.type, m.topic, m.reason]), [["unsubscribed", "doc:notes/n1", "forbidden"]]);
    ws.drop();

    ws = await accept(fake);
    assert.equal(ws.last("subscribe"), undefined, "a refused topic is asked for at every reconnect");
  } finally {
    rt.close();
  }
});

test("close() then connect() while the token function runs opens one socket, not two", async () => {
  const fake = fakeWebSocket();
  const waiting = [];
  const rt = new Realtime("ws://gateway.test/ws", {
    WebSocket: fake.WebSocket, token: () => new Promise((resolve) => waiting.push(resolve)),
  });
  try {
    await tick();
    rt.close();
    rt.connect();
    await tick();
    for (const resolve of waiting) resolve("a.b.c");
    await tick();
    assert.equal(fake.sockets.length, 1, "an orphan socket nobody closes");
  } finally {
    rt.close();
  }
});

test("a signed session without WebCrypto (a plain http:// page) stops and says why", async (t) => {
  const reported = [];
  t.mock.method(console, "error", (e) => reported.push(String(e)));
  const { rt, fake } = setup();
  const real = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  try {
    await tick();
    const ws = fake.sockets[0];
    ws.open();
    ws.receive({ type: "connection_established" });
    Object.defineProperty(globalThis, "crypto", { value: { getRandomValues: (a) => a }, configurable: true });
    ws.receive({ type: "connected", user: { id: "ann" }, connectionId: "c1", seqs: {}, sessionSecret: "s3cret" });
    Object.defineProperty(globalThis, "crypto", real);
    assert.equal(rt.state, "closed");
    assert.equal(rt.lastClose.reason, "no-webcrypto");
    assert.ok(ws.closed, "the socket is closed");
    assert.ok(reported.some((text) => /WebCrypto/.test(text)), reported.join("\n"));
  } finally {
    Object.defineProperty(globalThis, "crypto", real);
    rt.close();
  }
});

test("a token in the query string is not written to the console when the URL is refused", async (t) => {
  const reported = [];
  t.mock.method(console, "error", (e) => reported.push(String(e && e.stack ? `${e.message} ${e.stack}` : e)));
  const rt = new Realtime("gateway.test/ws", { token: "SECRET.TOKEN.VALUE", tokenIn: "query", WebSocket: NodeWebSocket });
  try {
    await tick();
    assert.equal(rt.state, "closed");
    assert.equal(rt.lastClose.reason, "bad gateway URL");
    assert.ok(reported.length > 0, "the bad URL is reported");
    assert.ok(!reported.some((text) => text.includes("SECRET")), reported.join("\n"));
  } finally {
    rt.close();
  }
});

test("malformed frames and messages with missing fields never break the client", async () => {
  const { rt, fake } = setup();
  try {
    const ws = await accept(fake);
    for (const frame of ["not json", "null", "[]", "42", '{"type":7}', '{"no":"type"}']) ws.receive(frame);
    for (const message of [
      { type: "doc-change" }, { type: "publication" }, { type: "resumed", until: null, recovered: 3 },
      { type: "resumed", until: { notes: 1 }, recovered: null, reason: "x" }, { type: "subscribed" },
      { type: "unsubscribed" }, { type: "error" }, { type: "pong" }, { type: "connected", seqs: null },
      { type: "a-type-nobody-knows", data: 1 },
    ]) ws.receive(message);
    assert.equal(rt.state, "open");
    const pong = rt.ping();
    const ping = ws.last("ping");
    ws.receive({ type: "pong", ref: ping.ref });
    assert.equal((await pong).type, "pong");
  } finally {
    rt.close();
  }
});

test("listeners attached right after the constructor see every state, connecting first", async () => {
  const { rt, fake } = setup();
  const states = [];
  assert.equal(rt.state, "connecting");
  rt.on("state", (state) => states.push(state));
  try {
    await accept(fake);
    assert.deepEqual(states, ["connecting", "open"]);
    assert.equal(fake.sockets.length, 1);
  } finally {
    rt.close();
  }
  assert.deepEqual(states, ["connecting", "open", "closed"]);
});

test("close() right after the constructor: no socket is ever opened", async () => {
  const { rt, fake } = setup();
  const states = [];
  rt.on("state", (state) => states.push(state));
  rt.close();
  await tick(10);
  assert.equal(fake.sockets.length, 0);
  assert.equal(rt.state, "closed");
  assert.deepEqual(states, ["closed"]);
});

test("a subscription made right after the constructor waits for the connection", async () => {
  const { rt, fake } = setup();
  try {
    const subscribing = rt.subscribe("public:room", () => {});
    const ws = await accept(fake);
    const sent = ws.last("subscribe");
    assert.equal(sent.topic, "public:room");
    ws.receive({ type: "subscribed", topic: "public:room", ref: sent.ref });
    await subscribing;
  } finally {
    rt.close();
  }
});

test("a topic left before its first publication resumes from the until of its subscribed", async () => {
  const { rt, fake } = setup();
  try {
    let ws = await accept(fake);
    const subscribing = rt.subscribe("public:quiet", () => {});
    ws.receive({ type: "subscribed", topic: "public:quiet", until: "e-5", ref: ws.last("subscribe").ref });
    await subscribing;
    assert.equal(rt.positions.topics["public:quiet"], "e-5");
    ws.drop();
    ws = await accept(fake);
    assert.equal(ws.last("subscribe").since, "e-5");
  } finally {
    rt.close();
  }
});

test("a token function that gives something other than a string opens no socket and is reported", async (t) => {
  const reported = [];
  t.mock.method(console, "error", (e) => reported.push(String(e)));
  const { rt, fake } = setup({ token: async () => ({ jwt: "a.b.c" }) });
  try {
    await tick(2);
    assert.equal(fake.sockets.length, 0, "an object was about to be sent as the token");
    assert.equal(rt.state, "connecting");
    assert.equal(rt.lastClose.reason, "the token function failed");
    assert.ok(reported.some((text) => /not a string/.test(text)), reported.join("\n"));
  } finally {
    rt.close();
  }
});

test("a pong with a ref nobody waits for does not answer the app's ping", async () => {
  const { rt, fake } = setup();
  try {
    const ws = await accept(fake);
    let answered = null;
    const pinging = rt.ping().then((pong) => { answered = pong; });
    const ref = ws.last("ping").ref;
    ws.receive({ type: "pong", ref: "not-yours" });
    await tick();
    assert.equal(answered, null);
    ws.receive({ type: "pong", ref });
    await pinging;
    assert.equal(answered.ref, ref);
  } finally {
    rt.close();
  }
});

test("a subscription made while disconnected is sent when the connection is back, and timed from then", async () => {
  const { rt, fake } = setup({ requestTimeoutMs: 40, minDelayMs: 150, maxDelayMs: 150 });
  try {
    let ws = await accept(fake);
    ws.drop(4100, "backoff"); // reconnect in 150 ms, more than the request timeout
    let outcome = null;
    const subscribing = rt.subscribe("public:later", () => {}).then(
      (answer) => { outcome = answer; }, (error) => { outcome = error; });
    await tick(100);
    assert.equal(outcome, null, "timed out before it could be sent");
    await tick(80);
    ws = await accept(fake);
    const sent = ws.last("subscribe");
    assert.equal(sent.topic, "public:later");
    ws.receive({ type: "subscribed", topic: "public:later", ref: sent.ref });
    await subscribing;
    assert.equal(outcome.type, "subscribed");
  } finally {
    rt.close();
  }
});

test("a subscribe the server does not answer still times out once sent", async () => {
  const { rt, fake } = setup({ requestTimeoutMs: 40 });
  try {
    await accept(fake);
    await assert.rejects(rt.subscribe("public:silent", () => {}), (error) => error.code === "timeout");
    assert.equal(rt.positions.topics["public:silent"], undefined);
  } finally {
    rt.close();
  }
});

test("a listener that closes the client on its first connecting leaves it closed", async () => {
  const fake = fakeWebSocket();
  const rt = new Realtime("ws://gateway.test/ws", { token: "a.b.c", WebSocket: fake.WebSocket, pingIntervalMs: 60000 });
  const states = [];
  rt.on("state", (state) => states.push(state));
  const off = rt.on("state", (state) => {
    if (state === "connecting") { off(); rt.close(); } // e.g. "offline: do not try now"
  });
  await tick(10);
  assert.equal(fake.sockets.length, 0);
  assert.equal(rt.state, "closed", "stopped, but its state says connecting");
  assert.deepEqual(states, ["connecting", "closed"]);
  rt.close();
});

test("a resume the gateway could not complete (error internal) keeps the positions and is asked again", async () => {
  const { rt, fake } = setup();
  try {
    let ws = await accept(fake, { notes: 5, messages: "e-1" });
    ws.drop();
    ws = await accept(fake, { notes: 9, messages: "e-7" });
    const first = ws.last("resume");
    assert.deepEqual(first.since, { notes: 5, messages: "e-1" });
    // the history could not be read (Redis away for a moment): the whole resume failed
    ws.receive({ type: "error", code: "internal", message: "the resume failed; reload what you hold", ref: first.ref });
    ws.receive({ type: "doc-change", db: "notes", id: "z", rev: "1-x", seq: 9, doc: {} });
    ws.receive({ type: "note", offset: "e-8" });
    assert.equal(rt.positions.seqs.notes, 5, "a live change skips the changes never replayed");
    assert.equal(rt.positions.messages, "e-1", "a live message skips the messages never replayed");
    const deadline = Date.now() + 1000;
    while (!ws.last("resume", (m) => m !== first) && Date.now() < deadline) await tick(5);
    const retry = ws.last("resume", (m) => m !== first);
    assert.ok(retry, "the failed resume is not asked again");
    assert.deepEqual(retry.since, { notes: 5, messages: "e-1" });
    ws.receive({ type: "resumed", since: retry.since, until: { notes: 9, messages: "e-8" }, replayed: { notes: 1, messages: 1 },
      recovered: { notes: true, messages: true }, ref: retry.ref });
    assert.deepEqual([rt.positions.seqs.notes, rt.positions.messages], [9, "e-8"]);
  } finally {
    rt.close();
  }
});

test("a signed session without WebCrypto does not tell the app it is connected", async (t) => {
  t.mock.method(console, "error", () => {});
  const { rt, fake } = setup();
  const real = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  const told = [];
  rt.on("connected", () => told.push(rt.state));
  try {
    await tick();
    const ws = fake.sockets[0];
    ws.open();
    ws.receive({ type: "connection_established" });
    Object.defineProperty(globalThis, "crypto", { value: { getRandomValues: (a) => a }, configurable: true });
    ws.receive({ type: "connected", user: { id: "ann" }, connectionId: "c1", seqs: {}, sessionSecret: "s3cret" });
    Object.defineProperty(globalThis, "crypto", real);
    assert.equal(rt.state, "closed");
    assert.deepEqual(told, [], "a connected event after the closed state");
  } finally {
    Object.defineProperty(globalThis, "crypto", real);
    rt.close();
  }
});
