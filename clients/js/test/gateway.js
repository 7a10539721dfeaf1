/**
 * Test harness for the client (and the browser tests): real servers on loopback.
 *
 * - `CouchDB`: an in-memory pouchdb-server (the repository's `node_modules`) on a free
 *   port, given an admin; stopped by PID.
 * - `Gateway`: `python -m realtime` from the repository root (the tree under test), with
 *   JWT_SECRET and REALTIME_ADMIN_KEY, on a free loopback port; ready once
 *   `/websocket/status` answers; stopped by PID (SIGTERM: clients get 4200), restartable on
 *   the same port.
 * - `TcpProxy`: a loopback TCP proxy in front of the gateway, to cut the network (`cut`:
 *   connections reset and new ones refused) or freeze it (`freeze`: bytes no longer pass,
 *   connections stay open, as on a dead link).
 * - `jwt()`: HS256 tokens for the gateway's secret.
 *
 * Waits are on events, each with a bound (`within`); nothing sleeps to wait.
 */

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocket as NodeWebSocket } from "ws";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const JWT_SECRET = "client-test-secret-0123456789-abcdefghijkl";
export const ADMIN_KEY = "client-test-admin-key-0123456789";
const PYTHON = process.env.PYTHON || "python3";

/** Reject with a clear error if `promise` has not settled within `ms`. */
export function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Poll `check` (sync or async, truthy = done) every `every` ms, at most `ms` in all. */
export async function until(check, ms, what, every = 50) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function stopChild(child, graceMs = 10000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

export function jwt(sub, { roles = [], expIn = 3600, secret = JWT_SECRET, ...claims } = {}) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, roles, iat: now, exp: now + expIn, jti: randomBytes(8).toString("hex"), ...claims });
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

let counter = 0;
/** A user name no other test uses. */
export function unique(prefix = "u") {
  counter += 1;
  return `${prefix}${counter}-${randomBytes(4).toString("hex")}`;
}

export class CouchDB {
  constructor() {
    this.admin = "admin";
    this.password = randomBytes(12).toString("hex");
    this.child = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get adminAuth() {
    return Buffer.from(`${this.admin}:${this.password}`).toString("base64");
  }

  async start() {
    this.port = await freePort();
    this.dir = mkdtempSync(path.join(tmpdir(), "realtime-js-pouchdb-"));
    const executable = path.join(ROOT, "node_modules", ".bin", "pouchdb-server");
    this.child = spawn(executable, ["--in-memory", "--port", String(this.port), "--host", "127.0.0.1",
      "--config", path.join(this.dir, "config.json"), "--no-stdout-logs"],
    { cwd: this.dir, stdio: ["ignore", "ignore", "ignore"] });
    children.add(this.child);
    await until(async () => {
      if (this.child.exitCode !== null) throw new Error("pouchdb-server exited");
      try {
        return (await fetch(this.url + "/")).ok;
      } catch {
        return false;
      }
    }, 60000, "pouchdb-server", 100);
    await fetch(`${this.url}/_config/admins/${this.admin}`, { method: "PUT", body: JSON.stringify(this.password) });
    await this.request("GET", "/_users");
    return this;
  }

  /** A request as the admin: `{status, body}` (body parsed when JSON). */
  async request(method, urlPath, body) {
    const response = await fetch(this.url + urlPath, {
      method,
      headers: { Authorization: `Basic ${this.adminAuth}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let parsed = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: response.status, body: parsed };
  }

  async createUser(name, password, { roles = [], ...fields } = {}) {
    const id = `org.couchdb.user:${name}`;
    const { status, body } = await this.request("PUT", `/_users/${encodeURIComponent(id)}`,
      { _id: id, name, password, roles, type: "user", ...fields });
    if (status !== 201 && status !== 202) throw new Error(`creating ${name}: ${status} ${JSON.stringify(body)}`);
    return body;
  }

  /** Change a user's own document (a field of it): the user gets a `user-change`. */
  async touchUser(name, fields) {
    const id = `org.couchdb.user:${name}`;
    const { body: doc } = await this.request("GET", `/_users/${encodeURIComponent(id)}`);
    const { status, body } = await this.request("PUT", `/_users/${encodeURIComponent(id)}`, { ...doc, ...fields });
    if (status !== 201 && status !== 202) throw new Error(`updating ${name}: ${status}`);
    return body;
  }

  /** The `AuthSession` cookie value of a new session. */
  async login(name, password) {
    const response = await fetch(this.url + "/_session", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name, password }),
    });
    const match = /AuthSession=([^;]+)/.exec(response.headers.get("set-cookie") || "");
    if (!match) throw new Error(`no AuthSession cookie for ${name} (${response.status})`);
    return match[1];
  }

  async stop() {
    await stopChild(this.child);
    children.delete(this.child);
    this.child = null;
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

export class Gateway {
  /**
   * @param {CouchDB} couch
   * @param {object} env  extra environment (strings)
   */
  constructor(couch, env = {}) {
    this.couch = couch;
    this.extraEnv = env;
    this.child = null;
    this.port = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async start() {
    if (this.port === null) this.port = await freePort();
    this.dir = this.dir || mkdtempSync(path.join(tmpdir(), "realtime-js-gw-"));
    this.logPath = path.join(this.dir, "gateway.log");
    const env = {
      ...process.env,
      REALTIME_LISTEN: `tcp:${this.port}:interface=127.0.0.1`,
      REALTIME_EMBEDDED_COUCHDB: "no",
      COUCHDB_URL: this.couch.url,
      COUCHDB_ADMIN_AUTH: this.couch.adminAuth,
      JWT_SECRET,
      REALTIME_ADMIN_KEY: ADMIN_KEY,
      PYTHONUNBUFFERED: "1",
      ...this.extraEnv,
    };
    const log = openSync(this.logPath, "a");
    this.child = spawn(PYTHON, ["-m", "realtime"], { cwd: ROOT, env, stdio: ["ignore", log, log] });
    children.add(this.child);
    const child = this.child;
    await until(async () => {
      if (child.exitCode !== null) throw new Error(`the gateway exited:\n${this.logTail()}`);
      try {
        return (await fetch(this.url + "/websocket/status")).status === 200;
      } catch {
        return false;
      }
    }, 60000, "the gateway to answer", 100);
    return this;
  }

  /** The gateway's status once its `_changes` feeds are connected. */
  async feedsConnected(ms = 30000) {
    return until(async () => {
      const status = await (await fetch(this.url + "/websocket/status")).json();
      return status.couchdb && status.couchdb.state === "connected" ? status : null;
    }, ms, "the gateway's feeds to connect", 100);
  }

  logTail(lines = 30) {
    try {
      return readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }

  /** Stop by PID (SIGTERM: every WebSocket is closed 4200 first). */
  async stop() {
    await stopChild(this.child, 15000);
    children.delete(this.child);
    this.child = null;
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  async cleanup() {
    await this.stop();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }

  /** A REST call with the admin key: `{status, body}`. */
  async rest(method, urlPath, body, { auth = `Bearer ${ADMIN_KEY}` } = {}) {
    const headers = { "Content-Type": "application/json" };
    if (auth) headers.Authorization = auth;
    const response = await fetch(this.url + urlPath, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  }
}

/**
 * A WebSocket constructor for the client (Node's `ws`) that sends `headers` with the
 * handshake and records every text the client sends (`sent`, parsed; signed envelopes
 * are unwrapped to their payload).
 */
export function recordingWebSocket({ headers } = {}) {
  const sent = [];
  const sockets = [];
  class RecordingWebSocket extends NodeWebSocket {
    constructor(url) {
      super(url, headers ? { headers } : undefined);
      sockets.push(this);
    }

    send(text) {
      const message = JSON.parse(text);
      sent.push(message.payload && message.signature ? { ...message.payload, signed: true } : message);
      super.send(text);
    }
  }
  return { WebSocket: RecordingWebSocket, sent, sockets };
}

export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.sockets = new Set();
    this.frozen = false;
    this.connections = 0;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async start() {
    if (!this.port) this.port = await freePort();
    this.server = net.createServer((client) => {
      this.connections += 1;
      const upstream = net.connect(this.targetPort, "127.0.0.1");
      const pair = { client, upstream };
      this.sockets.add(pair);
      const forward = (from, to) => from.on("data", (data) => {
        if (!this.frozen) to.write(data);
      });
      forward(client, upstream);
      forward(upstream, client);
      const end = () => {
        this.sockets.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("error", end);
      upstream.on("error", end);
      client.on("close", end);
      upstream.on("close", end);
    });
    await new Promise((resolve) => this.server.listen(this.port, "127.0.0.1", resolve));
    return this;
  }

  /** The network goes away: connections reset, new ones refused (until `restore`). */
  async cut() {
    await new Promise((resolve) => {
      this.server.close(resolve);
      for (const { client, upstream } of this.sockets) {
        client.resetAndDestroy();
        upstream.destroy();
      }
    });
  }

  async restore() {
    this.frozen = false;
    await this.start();
  }

  /**
   * Fault injection: every client gets a WebSocket close frame with `code`, as if from the
   * server, and its connection ends.
   */
  injectClose(code, reason = "injected") {
    const text = Buffer.from(reason);
    const frame = Buffer.alloc(4 + text.length);
    frame[0] = 0x88; // FIN + close
    frame[1] = 2 + text.length;
    frame.writeUInt16BE(code, 2);
    text.copy(frame, 4);
    for (const { client, upstream } of this.sockets) {
      upstream.destroy();
      client.end(frame);
    }
  }

  /** Bytes stop passing both ways; the connections stay open (a dead link). */
  freeze() {
    this.frozen = true;
  }

  async stop() {
    if (this.server.listening) await this.cut();
  }
}
