// The client against a real gateway (python -m realtime) on a real pouchdb-server.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";

import { Realtime, RealtimeError } from "../realtime.js";
import { CouchDB, Gateway, TcpProxy, jwt, recordingWebSocket, unique, within } from "./gateway.js";

const T = 20000; // bound of every wait
let couch;
let gateway;
const clients = [];

function client(url, options) {
  const rt = new Realtime(url, options);
  clients.push(rt);
  return rt;
}

/** The state event reaching `state` (with `detail` matching `filter`), bounded. */
function reach(rt, state, filter = () => true, ms = T) {
  if (rt.state === state && filter(rt.lastClose || {})) return Promise.resolve(rt.lastClose || {});
  return within(rt.once("state", (s, d) => s === state && filter(d)).then(([, d]) => d), ms,
    `state ${state}`);
}

before(async () => {
  couch = await new CouchDB().start();
  gateway = await new Gateway(couch, { WS_MAX_CONNECTIONS_PER_USER: "2" }).start();
});

after(async () => {
  for (const rt of clients) rt.close();
  await gateway.cleanup();
  await couch.stop();
});

describe("authentication, four ways", () => {
  test("a token string is sent as the first message, never in the URL", async () => {
    const ws = recordingWebSocket();
    const rt = client(gateway.wsUrl, { token: jwt("ann"), WebSocket: ws.WebSocket });
    await reach(rt, "open");
    assert.equal(rt.user.id, "ann");
    assert.ok(rt.connectionId);
    assert.equal(ws.sent[0].type, "auth");
    assert.ok(!ws.sockets[0].url.includes("token"), ws.sockets[0].url);
  });

  test("a token function is called at every connect, and its new token is used", async () => {
    const ws = recordingWebSocket();
    const tokens = [];
    const rt = client(gateway.wsUrl, {
      WebSocket: ws.WebSocket, jitterMs: 50,
      token: async () => {
        const token = jwt("bob", { n: tokens.length });
        tokens.push(token);
        return token;
      },
    });
    await reach(rt, "open");
    const first = rt.connectionId;
    ws.sockets[0].terminate(); // the connection is lost
    await reach(rt, "connecting");
    await reach(rt, "open");
    assert.equal(tokens.length, 2);
    assert.deepEqual(ws.sent.filter((m) => m.type === "auth").map((m) => m.token), tokens);
    assert.notEqual(rt.connectionId, first);
  });

  test("a token may go in the query string when asked for", async () => {
    const ws = recordingWebSocket();
    const rt = client(gateway.wsUrl, { token: jwt("cat"), tokenIn: "query", WebSocket: ws.WebSocket });
    await reach(rt, "open");
    assert.equal(rt.user.id, "cat");
    assert.ok(ws.sockets[0].url.includes("token="));
    assert.equal(ws.sent.filter((m) => m.type === "auth").length, 0);
  });

  test("without a token the CouchDB session cookie is used", async () => {
    const name = unique("cookie");
    await couch.createUser(name, "pw-" + name, { roles: ["member"] });
    const cookie = await couch.login(name, "pw-" + name);
    const ws = recordingWebSocket({ headers: { Cookie: `AuthSession=${cookie}` } });
    const rt = client(gateway.wsUrl, { WebSocket: ws.WebSocket });
    await reach(rt, "open");
    assert.equal(rt.user.name, name);
    assert.deepEqual(rt.user.roles, ["member"]);
  });

  test("with neither token nor cookie the client stops at once: no-credentials", async () => {
    const rt = client(gateway.wsUrl, { WebSocket: recordingWebSocket().WebSocket });
    const detail = await reach(rt, "closed");
    assert.equal(detail.reason, "no-credentials");
  });

  test("a JWT from a token function is refreshed on the live connection before it expires", async () => {
    let calls = 0;
    const rt = client(gateway.wsUrl, {
      WebSocket: recordingWebSocket().WebSocket,
      token: () => {
        calls += 1;
        return jwt("dan", { expIn: 2 });
      },
    });
    await reach(rt, "open");
    const connectionId = rt.connectionId;
    const firstExpiry = Date.now() + 2000;
    // Refreshes come at 2/3 of each token's life: the third `connected` is past the first exp.
    await within(rt.once("connected"), T, "a refresh");
    await within(rt.once("connected"), T, "a second refresh");
    assert.ok(Date.now() > firstExpiry - 1000);
    assert.equal(rt.state, "open");
    assert.equal(rt.connectionId, connectionId);
    assert.ok(calls >= 3);
  });
});

describe("close codes", () => {
  test("a refused token (4001) stops the client and says why", async () => {
    const ws = recordingWebSocket();
    const rt = client(gateway.wsUrl, { token: jwt("eve", { secret: "not-the-secret" }), WebSocket: ws.WebSocket });
    const detail = await reach(rt, "closed");
    assert.equal(detail.code, 4001);
    assert.equal(detail.reason, "auth-failed");
    assert.equal(ws.sockets.length, 1);
  });

  test("too many connections for a user (4029) stops the newest", async () => {
    const user = unique("many");
    const a = client(gateway.wsUrl, { token: jwt(user), WebSocket: recordingWebSocket().WebSocket });
    const b = client(gateway.wsUrl, { token: jwt(user), WebSocket: recordingWebSocket().WebSocket });
    await Promise.all([reach(a, "open"), reach(b, "open")]);
    const c = client(gateway.wsUrl, { token: jwt(user), WebSocket: recordingWebSocket().WebSocket });
    const detail = await reach(c, "closed");
    assert.equal(detail.code, 4029);
    assert.equal(a.state, "open");
  });

  test("an admin's disconnect (4003) stops the client", async () => {
    const user = unique("kicked");
    const rt = client(gateway.wsUrl, { token: jwt(user), WebSocket: recordingWebSocket().WebSocket });
    await reach(rt, "open");
    const closed = reach(rt, "closed");
    const { status } = await gateway.rest("DELETE", `/websocket/users/${user}/disconnect`);
    assert.equal(status, 200);
    assert.equal((await closed).code, 4003);
  });

  test("4100-4199 reconnect after a backoff of at least a second", async (t) => {
    const proxy = await new TcpProxy(gateway.port).start();
    t.after(() => proxy.stop());
    const ws = recordingWebSocket();
    const rt = client(proxy.wsUrl, { token: jwt("fay"), WebSocket: ws.WebSocket });
    await reach(rt, "open");
    const waiting = reach(rt, "connecting");
    proxy.injectClose(4101, "auth backend unavailable");
    const detail = await waiting;
    assert.equal(detail.code, 4101);
    assert.ok(detail.delay >= 1000 && detail.delay <= 2000, String(detail.delay));
    await reach(rt, "open");
    assert.equal(ws.sockets.length, 2);
  });
});

describe("close()", () => {
  test("closes for good: state closed, pending requests rejected, no reconnect", async () => {
    const ws = recordingWebSocket();
    const rt = client(gateway.wsUrl, { token: jwt("kay"), WebSocket: ws.WebSocket });
    await reach(rt, "open");
    const subscribing = rt.subscribe("public:never-answered-" + unique());
    const closed = reach(rt, "closed");
    rt.close();
    assert.equal((await closed).code, 1000);
    await assert.rejects(subscribing, (e) => e.code === "closed");
    await assert.rejects(rt.publish("public:x", 1), (e) => e.code === "closed");
    assert.equal(rt.state, "closed");
    assert.equal(ws.sockets.length, 1);
  });
});

describe("close() while connecting", () => {
  test("a socket still connecting is closed without an uncaught error", async (t) => {
    // A server that accepts the TCP connection and never answers the handshake.
    const accepted = [];
    const server = net.createServer((socket) => accepted.push(socket));
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    t.after(() => new Promise((resolve) => {
      for (const socket of accepted) socket.destroy();
      server.close(resolve);
    }));
    const uncaught = [];
    const onUncaught = (error) => uncaught.push(error);
    process.on("uncaughtException", onUncaught);
    t.after(() => process.off("uncaughtException", onUncaught));
    const ws = recordingWebSocket();
    const rt = client(`ws://127.0.0.1:${server.address().port}/ws`, { token: jwt("lea"), WebSocket: ws.WebSocket });
    await within(new Promise((resolve) => {
      const poll = () => (accepted.length ? resolve() : setTimeout(poll, 5));
      poll();
    }), T, "the TCP connection");
    // The socket reports its error (if any), then its close: wait for the close.
    const gone = new Promise((resolve) => ws.sockets[0].on("close", resolve));
    rt.close();
    await within(gone, T, "the socket to close");
    assert.deepEqual(uncaught.map(String), []);
    assert.equal(rt.state, "closed");
  });
});

describe("requests and topics", () => {
  test("requests settle with their answers: ping, subscribe, a refusal, unsubscribe", async () => {
    const rt = client(gateway.wsUrl, { token: jwt("gus"), WebSocket: recordingWebSocket().WebSocket });
    await reach(rt, "open");
    const pong = await within(rt.ping(), T, "pong");
    assert.equal(pong.type, "pong");
    const subscribed = await within(rt.subscribe("public:news", () => {}), T, "subscribed");
    assert.deepEqual([subscribed.type, subscribed.topic], ["subscribed", "public:news"]);
    await assert.rejects(within(rt.subscribe("user:somebody-else"), T, "refusal"),
      (e) => e instanceof RealtimeError && e.code === "forbidden" && e.topic === "user:somebody-else");
    const unsubscribed = await within(rt.unsubscribe("public:news"), T, "unsubscribed");
    assert.equal(unsubscribed.type, "unsubscribed");
  });

  test("a publication reaches the topic's handler, from a client and from REST", async () => {
    const topic = `public:${unique("room")}`;
    const rt = client(gateway.wsUrl, { token: jwt("hal"), WebSocket: recordingWebSocket().WebSocket });
    const other = client(gateway.wsUrl, { token: jwt("ivy"), WebSocket: recordingWebSocket().WebSocket });
    const got = [];
    let arrived;
    const second = new Promise((resolve) => { arrived = resolve; });
    await reach(rt, "open");
    await rt.subscribe(topic, (m) => {
      got.push(m);
      if (got.length === 2) arrived();
    });
    await reach(other, "open");
    await other.publish(topic, { text: "hi" });
    assert.equal((await gateway.rest("POST", "/websocket/publish", { topic, data: { text: "from rest" } })).status, 200);
    await within(second, T, "two publications");
    assert.deepEqual(got.map((m) => [m.type, m.from, m.data.text]),
      [["publication", "ivy", "hi"], ["publication", "server", "from rest"]]);
  });
});

describe("reconnection and resume", () => {
  test("a gateway restart (4200): the client reconnects, resumes, re-subscribes", async () => {
    const name = unique("restart");
    await couch.createUser(name, "pw", { roles: [] });
    const ws = recordingWebSocket();
    const rt = client(gateway.wsUrl, { token: jwt(name), WebSocket: ws.WebSocket, jitterMs: 200 });
    await reach(rt, "open");
    const topic = `public:${unique("after-restart")}`;
    const publications = [];
    await rt.subscribe(topic, (m) => publications.push(m));
    // a user-change gives the client a seq to resume from
    // (the user's creation may reach the feed after the connect: wait for this change)
    const change = within(rt.once("user-change", (m) => m.doc && m.doc.colour === "blue"),
      30000, "a user-change");
    await couch.touchUser(name, { colour: "blue" });
    const first = await change;
    assert.equal(first.doc.colour, "blue");
    assert.equal(rt.positions.seqs._users, first.seq);

    const dropped = reach(rt, "connecting", (d) => d.code === 4200);
    const subscribedAgain = within(rt.once("subscribed", (m) => m.topic === topic), 60000, "subscribed again");
    await gateway.restart();
    await dropped;
    await reach(rt, "open");
    const resume = ws.sent.filter((m) => m.type === "resume");
    assert.equal(resume.length, 1);
    assert.equal(resume[0].since._users, first.seq);
    // re-subscribed on the new process: a publication arrives
    await subscribedAgain;
    assert.equal(ws.sent.filter((m) => m.type === "subscribe" && m.topic === topic).length, 2);
    await gateway.rest("POST", "/websocket/publish", { topic, data: { n: 1 } });
    await within(until(() => publications.length === 1), T, "a publication after the restart");
  });

  test("a cut network: the client comes back, resumes from its seqs, and gets what it missed", async (t) => {
    const name = unique("cut");
    await couch.createUser(name, "pw", { roles: [] });
    const proxy = await new TcpProxy(gateway.port).start();
    t.after(() => proxy.stop());
    const ws = recordingWebSocket();
    const rt = client(proxy.wsUrl, { token: jwt(name), WebSocket: ws.WebSocket, jitterMs: 100, minDelayMs: 100 });
    await reach(rt, "open");
    const change = within(rt.once("user-change", (m) => m.doc && m.doc.step === 1),
      30000, "a user-change");
    await couch.touchUser(name, { step: 1 });
    const seen = await change;

    const lost = reach(rt, "connecting", (d) => d.code === 1006);
    await proxy.cut();
    await lost;
    await couch.touchUser(name, { step: 2 }); // while the client is away
    const replayed = [];
    rt.on("user-change", (m) => replayed.push(m));
    await proxy.restore();
    await reach(rt, "open");
    const resume = ws.sent.filter((m) => m.type === "resume");
    assert.equal(resume.length, 1);
    // the user's seq, and where the message history stood (connected.seqs.messages)
    assert.deepEqual(Object.keys(resume[0].since).sort(), ["_users", "messages"]);
    assert.equal(resume[0].since._users, seen.seq);
    assert.equal(typeof resume[0].since.messages, "string");

    const answer = await within(new Promise((resolve) => {
      rt.on("resumed", resolve);
      rt.on("error", (m) => m.code === "unknown_type" && resolve(m));
    }), T, "the answer to resume");
    await within(until(() => replayed.some((m) => m.doc && m.doc.step === 2)), T, "the missed change");
    assert.equal(answer.recovered._users, true);
  });

  test("a dead link (bytes stop, no close) is noticed by the ping watchdog", async (t) => {
    const proxy = await new TcpProxy(gateway.port).start();
    t.after(() => proxy.stop());
    const rt = client(proxy.wsUrl, {
      token: jwt("jay"), WebSocket: recordingWebSocket().WebSocket,
      pingIntervalMs: 300, pongTimeoutMs: 500, jitterMs: 50, minDelayMs: 100,
    });
    await reach(rt, "open");
    const lost = reach(rt, "connecting", (d) => d.code === 1006);
    proxy.freeze();
    const detail = await lost;
    assert.match(detail.reason, /no answer/);
    proxy.frozen = false;
    await reach(rt, "open");
  });
});

function until(check, ms = T) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const poll = () => {
      if (check()) resolve(true);
      else if (Date.now() > deadline) reject(new Error("condition not met"));
      else setTimeout(poll, 20);
    };
    poll();
  });
}
