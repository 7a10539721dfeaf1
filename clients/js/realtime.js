/**
 * realtime.js: the JavaScript client of the realtime gateway (WebSocket protocol v1).
 *
 * One ES module, no dependencies, no build step: the gateway serves it at `GET /realtime.js`
 * and it is the package `clients/js/` of the repository.  It does what the protocol asks of
 * a client, so that an application does not have to:
 *
 * - **Authentication**, four ways: a token string, or an async function returning one
 *   (called at every connect, so a refreshed token is used; a JWT with `exp` is also
 *   refreshed on the live connection before it expires), sent as the first message
 *   (`{"type":"auth"}`) by default so that it appears in no URL, or as `?token=` with
 *   `tokenIn: "query"`; with no token, the browser's CouchDB `AuthSession` cookie (a page
 *   of another origin than the gateway's must be listed in the gateway's `CORS_ORIGINS`,
 *   or the handshake is refused: the guard against cross-site WebSocket hijacking).  With
 *   no cookie either, the server asks for a token: the client stops at once with reason
 *   `no-credentials` rather than wait for the auth timeout.
 * - **Reconnection by close-code class**: 4000-4099 (unauthorized, forbidden, replaced,
 *   policy, too many connections) stop and report; 4100-4199 (too slow, auth backend
 *   unavailable) reconnect with exponential backoff and "equal jitter" (1-2 s, 2-4 s, ...,
 *   15-30 s); 4200-4299 (server restarting) and network loss reconnect at once, with up to
 *   `jitterMs` of jitter, then back off like 4100 if the new attempts fail too.  A silent
 *   connection (no byte from the server for `pingIntervalMs`, then none for `pongTimeoutMs`
 *   after a `ping`) counts as network loss, and so does the browser's `offline` event
 *   ending (`online` reconnects a waiting client at once).
 * - **Resume**: the client remembers the last `seq` it received per database (`_users` for
 *   `user-change`; `connected.seqs` gives the starting point of a database it has heard
 *   nothing from) and the last message `offset` (per topic for publications), and after
 *   every reconnect sends `{"type":"resume","since":{db: seq, ..., "messages": offset}}`
 *   (and `since` in the re-subscription of each topic with an offset).  Positions come only
 *   from live messages and from `resumed.until` / `subscribed.until`, never from snapshot or
 *   replayed messages, nor from live ones while the resume has not answered (a replay cut
 *   short is simply asked for again).  A database the resume could not read (`unavailable`)
 *   is resumed again, with backoff; one the gateway does not follow is dropped.
 *   `rt.positions` exports them and the `since` option imports them (a page reload may keep
 *   them in `sessionStorage`: they are not secrets).
 * - **Re-subscription** of every topic after a reconnect, with its options.
 * - **Request/answer matching by `ref`**: every request carries a fresh `ref`, and its
 *   promise settles with the answer that carries it.  A `ref` is a random part drawn once
 *   per client instance (64 bits from `crypto.getRandomValues`) and a counter, so two page
 *   loads never send the same one: the gateway makes a create idempotent by (db, user,
 *   ref, document), and a reused `ref` would answer a new create with an old document.  A server that does not echo `ref` for
 *   `subscribe`/`unsubscribe` is matched by topic.  Document writes still unanswered when the
 *   connection drops are sent again, with the same `ref`, after the reconnect.
 * - **Signed messages**: when `connected` carries `sessionSecret`, every later message is an
 *   HMAC-SHA256 envelope made with WebCrypto (sent in order, as they were asked for).
 * - **State and events**: `rt.state` is `"connecting"`, `"open"` (authenticated) or
 *   `"closed"`; `rt.on("state", fn)` tells each change with its reason.
 *
 * ```js
 * import { Realtime } from "/realtime.js";
 * const rt = new Realtime("/ws", { token: async () => (await fetch("/my-token")).text() });
 * rt.on("state", (state, detail) => console.log(state, detail));
 * rt.on("user-change", (m) => showProfile(m.doc));
 * await rt.subscribe("db:notes", (m) => render(m), { snapshot: true });
 * const { rev } = await rt.update("notes", id, rev0, { title: "new" });
 * rt.close();
 * ```
 *
 * In Node (20) pass a WebSocket implementation, e.g. the `ws` package:
 * `new Realtime(url, { token, WebSocket: (await import("ws")).WebSocket })`.
 *
 * @module realtime
 */

export const VERSION = "1.0.0";

/** What the client does after a close, by close code (see {@link closeAction}). */
export const STOP = "stop";
export const BACKOFF = "backoff";
export const NOW = "now";

const OPEN = 1; // WebSocket.OPEN
const MAX_REF = 2 ** 31;

/**
 * @typedef {"connecting" | "open" | "closed"} State
 *
 * @typedef {object} StateDetail
 * @property {number} [code]     the close code that caused the change
 * @property {string} [reason]   the close reason, or the `auth_failed` reason
 * @property {number} [delay]    ms until the next attempt (state "connecting" after a drop)
 * @property {number} [attempt]  consecutive failed attempts so far
 *
 * @typedef {object} Positions  where the client stands, for `resume`
 * @property {Object<string, (string|number)>} seqs   last seq per database (opaque)
 * @property {(string|number)} [messages]              last offset of messages to the user
 * @property {Object<string, (string|number)>} topics last offset per topic
 *
 * @typedef {object} RealtimeOptions
 * @property {string | (() => (string | null | Promise<string | null>))} [token]
 *     a JWT, or a function returning one (called at every connect); none: cookie auth
 * @property {"message" | "query"} [tokenIn]  how the token is sent: the first message
 *     (default: it never appears in a URL) or the `token` query parameter
 * @property {Function} [WebSocket]   the WebSocket constructor (default: the global one)
 * @property {Positions} [since]       positions to resume from on the first connect
 * @property {number} [minDelayMs]     backoff floor (1000)
 * @property {number} [maxDelayMs]     backoff ceiling (30000)
 * @property {number} [jitterMs]       jitter of an immediate reconnect (1000)
 * @property {number} [pingIntervalMs] silence after which the client pings (30000)
 * @property {number} [pongTimeoutMs]  silence after that ping that means a dead link (10000)
 * @property {number} [requestTimeoutMs] how long a request waits for its answer (30000)
 * @property {boolean} [autoConnect]   connect right after the constructor returns (default
 *                                     true: listeners attached at once see "connecting");
 *                                     false: call connect()
 * @property {() => number} [random]   source of randomness for jitter (tests)
 */

/**
 * The action for a close code: {@link STOP}, {@link BACKOFF} or {@link NOW}.
 *
 * 4000-4099: stop (do not reconnect with the same credentials).  4100-4199: back off.
 * 4200-4299: reconnect now.  1000 from the server: back off (it did not say why).
 * 1002/1003/1007/1008/1009/1010 (protocol errors, too big): stop, they would recur.
 * Anything else (1001, 1005, 1006, 1011-1015, other 3xxx/4xxx): network loss, now.
 *
 * @param {number} code
 * @returns {"stop" | "backoff" | "now"}
 */
export function closeAction(code) {
  if (code >= 4000 && code <= 4099) return STOP;
  if (code >= 4100 && code <= 4199) return BACKOFF;
  if (code >= 4200 && code <= 4299) return NOW;
  if (code === 1000) return BACKOFF;
  if ([1002, 1003, 1007, 1008, 1009, 1010].includes(code)) return STOP;
  return NOW;
}

/**
 * Milliseconds to wait before reconnect attempt number `attempt` (0 = the first after a
 * drop).  NOW: a first attempt waits `random() * jitterMs`; later ones back off.  BACKOFF:
 * "equal jitter": with d = min(maxDelayMs, 2 * minDelayMs * 2^attempt), a delay in [d/2, d].
 *
 * @param {"backoff" | "now"} action
 * @param {number} attempt
 * @param {{minDelayMs?: number, maxDelayMs?: number, jitterMs?: number, random?: () => number}} [o]
 * @returns {number}
 */
export function reconnectDelay(action, attempt, o = {}) {
  const random = o.random || Math.random;
  const min = o.minDelayMs ?? 1000;
  const max = o.maxDelayMs ?? 30000;
  if (action === NOW && attempt === 0) return Math.floor(random() * (o.jitterMs ?? 1000));
  const n = action === NOW ? attempt - 1 : attempt;
  const d = Math.min(max, 2 * min * 2 ** Math.min(n, 30));
  return Math.floor(d / 2 + random() * (d / 2));
}

/**
 * A refusal from the server (an `error` message), or a request that could not complete
 * (code `timeout`, `closed`, `disconnected`).  It carries every field of the `error`
 * message (`code`, `message`, `topic`, `rev`, `ref`, ...).
 */
export class RealtimeError extends Error {
  /** @param {{code: string, message?: string, [k: string]: any}} fields */
  constructor(fields) {
    super(fields.message || fields.code);
    this.name = "RealtimeError";
    for (const [key, value] of Object.entries(fields)) {
      if (key !== "message" && key !== "type") this[key] = value;
    }
    /** @type {string} */
    this.code = fields.code;
  }
}

/** The `exp` (ms since epoch) of a JWT, or null if it is not a JWT with one. */
export function jwtExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(new TextDecoder().decode(
      Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0))));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

function reportError(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}

function resolveUrl(url) {
  const location = globalThis.location;
  if (url === undefined || url === null || url.startsWith("/")) {
    if (!location) throw new TypeError("a relative gateway URL needs a page location");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${url || "/ws"}`;
  }
  return url.replace(/^http(s?):/, "ws$1:");
}

/** Refusals that say "not now" rather than "no": a topic refused so is kept (asked again at the next connect). */
const TRANSIENT = new Set(["rate_limited", "unavailable", "internal", "timeout"]);

const DOC_TYPES = { create: "doc.create", update: "doc.update", remove: "doc.delete" };

/**
 * A connection to the gateway that stays connected.
 *
 * Events (`on(type, fn)`): every server message type (`connected`, `user-change`,
 * `doc-change`, `publication`, `notification`, `resumed`, `error`, `auth_failed`, your own
 * REST message types, ...) with the message; `"*"` for every message; `"state"` with
 * `(state, detail)`.
 */
export class Realtime {
  /**
   * @param {string} [url] `ws(s)://host/ws`; a path (`"/ws"`) or nothing: the page's host
   * @param {RealtimeOptions} [options]
   */
  constructor(url, options = {}) {
    this.url = resolveUrl(url);
    this._o = {
      tokenIn: "message", minDelayMs: 1000, maxDelayMs: 30000, jitterMs: 1000,
      pingIntervalMs: 30000, pongTimeoutMs: 10000, requestTimeoutMs: 30000,
      random: Math.random, ...options,
    };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    }
    /** @type {State} */
    this._state = "closed";
    this._listeners = new Map();
    this._ws = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._generation = 0; // counts _open and _stop: an _open overtaken while it awaits its token gives up
    this._stopped = true;
    this._everConnected = false;
    this._refCount = 0;
    this._refPrefix = `r${randomHex(8)}-`; // unique per instance: see _nextRef
    /** ref -> pending request */
    this._pending = new Map();
    /** topic -> subscription */
    this._subs = new Map();
    this._outbox = []; // publishes waiting for an open connection
    const since = options.since || {};
    this._seqs = { ...(since.seqs || {}) };
    this._messagesOffset = since.messages;
    this._topicOffsets = { ...(since.topics || {}) };
    this._resumeOnConnect = Object.keys(this._seqs).length > 0 || since.messages !== undefined;
    /** keys (db names, "messages") of the resume running on this connection, or to retry */
    this._resumeKeys = null;
    this._resumeTimer = null;
    this._resumeAttempt = 0;
    /** @type {{id: string, name: string, roles: string[]} | null} */
    this.user = null;
    /** @type {string | null} */
    this.connectionId = null;
    /** the last close that caused a change of state, if any */
    this.lastClose = null;
    this._onOnline = () => {
      if (this._retryTimer !== null) {
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
        this._open();
      }
    };
    if (this._o.autoConnect !== false) this._start(true);
  }

  /** @returns {State} */
  get state() {
    return this._state;
  }

  /** Where the client stands (for `resume`): a copy, safe to store and pass as `since`. */
  get positions() {
    const positions = { seqs: { ...this._seqs }, topics: { ...this._topicOffsets } };
    if (this._messagesOffset !== undefined) positions.messages = this._messagesOffset;
    return positions;
  }

  // -- events ------------------------------------------------------------------------

  /**
   * Listen to a server message type, `"*"` (every message) or `"state"`.
   * @param {string} type
   * @param {Function} fn
   * @returns {() => void} a function that removes the listener
   */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  /** Remove a listener added with {@link on}. */
  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }

  /**
   * The next event of `type` (that `filter` accepts), as a promise.
   * @param {string} type
   * @param {(...args: any[]) => boolean} [filter]
   * @returns {Promise<any>}
   */
  once(type, filter) {
    return new Promise((resolve) => {
      const off = this.on(type, (...args) => {
        if (filter && !filter(...args)) return;
        off();
        resolve(args.length > 1 ? args : args[0]);
      });
    });
  }

  _emit(type, ...args) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (error) {
        reportError(error);
      }
    }
  }

  _setState(state, detail = {}) {
    if (state === this._state && state !== "connecting") return;
    this._state = state;
    this._emit("state", state, detail);
  }

  // -- connection --------------------------------------------------------------------

  /** Connect (again, after `close()` or a stop); does nothing if already connecting. */
  connect() {
    if (this._stopped) this._start(false);
  }

  /**
   * Started: requests and subscriptions are queued from now on.  The constructor's start
   * (`deferred`) opens the socket right after the constructor returns, so that listeners
   * attached on the next lines see every state, "connecting" included; `rt.state` says
   * "connecting" at once.
   */
  _start(deferred) {
    this._stopped = false;
    this._attempt = 0;
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("online", this._onOnline);
    }
    if (!deferred) {
      this._open();
      return;
    }
    this._state = "connecting";
    const generation = this._generation;
    queueMicrotask(() => {
      if (this._stopped || generation !== this._generation) return; // closed meanwhile
      this._setState("connecting", { attempt: 0 });
      this._open();
    });
  }

  /** Close the connection for good (until {@link connect}); pending requests fail `closed`. */
  close() {
    this._stop({ code: 1000, reason: "closed by the client" });
    this._closeSocket(1000, "client closed");
  }

  async _open() {
    if (this._stopped) return; // closed meanwhile (e.g. by a listener of "connecting")
    const generation = ++this._generation;
    if (this._state !== "connecting") this._setState("connecting", { attempt: this._attempt });
    let token = this._o.token;
    if (typeof token === "function") {
      try {
        token = await token();
        if (token !== null && token !== undefined && typeof token !== "string") {
          throw new TypeError(`the token function gave a ${typeof token}, not a string`);
        }
      } catch (error) {
        if (generation !== this._generation || this._stopped) return;
        reportError(error);
        this._retry(BACKOFF, { code: 0, reason: "the token function failed" });
        return;
      }
    }
    if (this._stopped || generation !== this._generation) return;
    this._token = token || null;
    let url = this.url;
    if (this._token && this._o.tokenIn === "query") {
      url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this._token);
    }
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (error) {
      // the error's text may quote the URL, and with tokenIn "query" the token in it
      reportError(url === this.url ? error
        : new SyntaxError(`the gateway URL was refused: ${this.url} (${error && error.name})`));
      this._stop({ code: 0, reason: "bad gateway URL" });
      return;
    }
    this._ws = ws;
    this._authenticated = false;
    this._authFailure = null;
    this._sessionKey = null;
    this._sendChain = Promise.resolve();
    ws.onmessage = (event) => {
      if (ws === this._ws) this._onRaw(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this._ws) this._onClose(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event follows
    this._heard();
  }

  _closeSocket(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._clearWatchdog();
    if (ws) {
      ws.onmessage = ws.onclose = null;
      // Not null: closing a socket still connecting makes it report an error, which a
      // WebSocket without an error handler (Node's ws) throws as an uncaught exception.
      ws.onerror = ignore;
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
  }

  _onClose(code, reason) {
    this._ws = null;
    this._clearWatchdog();
    this._clearRefresh();
    this._endResume();
    const authFailure = this._authFailure;
    const detail = { code, reason: authFailure || reason || "" };
    this._dropRequests();
    if (this._stopped) return;
    let action = closeAction(code);
    if (action === STOP && authFailure === "token-expired" && typeof this._o.token === "function"
        && !this._expiredRetry) {
      // The token function gives a new token: one more try (a second expiry stops).
      this._expiredRetry = true;
      action = NOW;
    }
    if (action === STOP) {
      this._stop(detail);
      return;
    }
    this._retry(action, detail);
  }

  _retry(action, detail) {
    const delay = reconnectDelay(action, this._attempt, this._o);
    this._attempt += 1;
    this.lastClose = detail;
    this._setState("connecting", { ...detail, delay, attempt: this._attempt });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (!this._stopped) this._open();
    }, delay);
  }

  _stop(detail) {
    const wasStopped = this._stopped;
    this._stopped = true;
    this._generation += 1;
    if (this._retryTimer !== null) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._clearRefresh();
    this._endResume();
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("online", this._onOnline);
    }
    for (const [ref, request] of this._pending) {
      this._pending.delete(ref);
      request.fail({ code: "closed", message: "the connection was closed" });
    }
    for (const sub of this._subs.values()) sub.fail({ code: "closed", message: "the connection was closed" });
    for (const item of this._outbox.splice(0)) item.reject(new RealtimeError({ code: "closed", message: "the connection was closed" }));
    this.lastClose = detail;
    if (!wasStopped || this._state !== "closed") this._setState("closed", detail);
  }

  // -- liveness ----------------------------------------------------------------------

  _heard() {
    this._clearWatchdog();
    this._idleTimer = setTimeout(() => {
      this._idleTimer = null;
      if (this._ws && this._ws.readyState === OPEN) {
        this._rawSend({ type: "ping", ref: this._nextRef() }, this._authenticated);
      }
      this._deadTimer = setTimeout(() => {
        this._deadTimer = null;
        if (this._ws) {
          this._closeSocket(1000, "no answer");
          this._onClose(1006, "no answer from the server");
        }
      }, this._o.pongTimeoutMs);
    }, this._o.pingIntervalMs);
  }

  _clearWatchdog() {
    if (this._idleTimer) clearTimeout(this._idleTimer);
    if (this._deadTimer) clearTimeout(this._deadTimer);
    this._idleTimer = this._deadTimer = null;
  }

  _scheduleRefresh() {
    this._clearRefresh();
    if (typeof this._o.token !== "function" || !this._token) return;
    const expiry = jwtExpiry(this._token);
    if (expiry === null) return;
    const remaining = expiry - Date.now();
    const delay = Math.max(500, remaining - Math.min(60000, remaining / 3));
    this._refreshTimer = setTimeout(async () => {
      this._refreshTimer = null;
      try {
        const token = await this._o.token();
        if (typeof token === "string" && token && this._authenticated && this._ws) {
          this._token = token;
          this._send({ type: "auth", token });
        }
      } catch (error) {
        reportError(error);
      }
    }, delay);
  }

  _clearRefresh() {
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
  }

  // -- receiving ---------------------------------------------------------------------

  _onRaw(data) {
    this._heard();
    let message;
    try {
      message = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      return;
    }
    if (message === null || typeof message !== "object" || typeof message.type !== "string") return;
    this._onMessage(message);
  }

  _onMessage(message) {
    const type = message.type;
    switch (type) {
      case "connection_established":
        if (this._token && this._o.tokenIn !== "query") {
          this._rawSend({ type: "auth", token: this._token }, false);
        } else if (!this._token) {
          // Cookie auth, and the server found no session: waiting would only time out.
          this._emitMessage(message);
          this._closeSocket(1000, "no credentials");
          this._stop({ code: 1000, reason: "no-credentials" });
          return;
        }
        break;
      case "connected":
        this._onConnected(message);
        if (this._stopped) return; // refused (no WebCrypto): the app is not told "connected"
        break;
      case "auth_failed":
        this._authFailure = message.reason;
        break;
      case "user-change":
        this._track("_users", message);
        break;
      case "doc-change":
        this._track(message.db, message);
        this._dispatchTopic(`doc:${message.db}/${message.id}`, message);
        this._dispatchTopic(`db:${message.db}`, message);
        break;
      case "publication":
        if (message.offset !== undefined && !message.replay) this._topicOffsets[message.topic] = message.offset;
        this._dispatchTopic(message.topic, message);
        break;
      case "resumed":
        this._onResumed(message);
        break;
      case "subscribed":
      case "unsubscribed":
        this._onSubscriptionAnswer(message);
        break;
      case "error":
        this._onError(message);
        break;
      default:
        if (message.offset !== undefined && !message.replay && type !== "ping" && type !== "pong"
            && !this._holding("messages")) {
          this._messagesOffset = message.offset;
        }
    }
    if (type !== "error") {
      let ref = message.ref;
      // (a pong with a ref nobody waits for answers the watchdog's ping, not the app's)
      if (type === "pong" && ref === undefined) ref = this._oldestPending("ping");
      if (typeof ref === "string" && this._pending.has(ref)) {
        const request = this._pending.get(ref);
        this._pending.delete(ref);
        request.done(message);
      }
    }
    this._emitMessage(message);
  }

  /** A server that does not echo `ref` answers in order: the oldest request of a type. */
  _oldestPending(type) {
    for (const [ref, request] of this._pending) {
      if (request.message.type === type && request.sent) return ref;
    }
    return undefined;
  }

  _emitMessage(message) {
    this._emit(message.type, message);
    this._emit("*", message);
  }

  _track(db, message) {
    if (typeof db === "string" && message.seq !== undefined && !message.snapshot && !message.replay
        && !this._holding(db)) {
      this._seqs[db] = message.seq;
    }
  }

  /**
   * Whether the position of `key` waits for a resume (sent, or to be sent again): a live
   * message that comes before the replay is done must not move it past what the replay
   * has not given yet (a drop would lose those changes); `resumed.until` moves it.
   */
  _holding(key) {
    return this._resumeKeys !== null && this._resumeKeys.has(key);
  }

  _endResume() {
    if (this._resumeTimer !== null) clearTimeout(this._resumeTimer);
    this._resumeTimer = null;
    this._resumeKeys = null; // the next connection resumes from the positions held
  }

  _dispatchTopic(topic, message) {
    const sub = this._subs.get(topic);
    if (!sub) return;
    for (const fn of [...sub.handlers]) {
      try {
        fn(message);
      } catch (error) {
        reportError(error);
      }
    }
  }

  _onConnected(message) {
    this.user = message.user || null;
    this.connectionId = message.connectionId || null;
    if (this._authenticated) {
      this._scheduleRefresh(); // a refreshed token was accepted
      return;
    }
    this._authenticated = true;
    this._expiredRetry = false;
    this._attempt = 0;
    if (message.sessionSecret) {
      const subtle = globalThis.crypto && globalThis.crypto.subtle;
      if (!subtle) {
        // only secure contexts (https://, localhost) have it: without it nothing can be sent
        reportError(new Error("the gateway signs messages (sessionSecret) and this page has no WebCrypto "
          + "(crypto.subtle: https:// or localhost only)"));
        this._closeSocket(1000, "no WebCrypto");
        this._stop({ code: 0, reason: "no-webcrypto" });
        return;
      }
      this._sessionKey = importKey(message.sessionSecret);
      this._sessionKey.catch(reportError); // a bad secret: said once (sends then fail too)
    }
    const reconnect = this._everConnected;
    this._everConnected = true;
    this._endResume();
    this._resumeAttempt = 0;
    const seqs = message.seqs && typeof message.seqs === "object" ? message.seqs : {};
    for (const [db, seq] of Object.entries(seqs)) {
      // "messages": where the message history stands (an offset), not a database
      if (db === "messages") {
        if (this._messagesOffset === undefined) this._messagesOffset = seq;
      } else if (!(db in this._seqs)) this._seqs[db] = seq;
    }
    this._setState("open", { user: this.user, connectionId: this.connectionId });
    this._scheduleRefresh();
    if (reconnect || this._resumeOnConnect) this._sendResume();
    this._resumeOnConnect = false;
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const request of this._pending.values()) request.sent = this._send(request.message);
    for (const item of this._outbox.splice(0)) {
      this._send(item.message);
      item.resolve();
    }
  }

  /** Send `resume` for every position (or only those of `keys`). */
  _sendResume(keys) {
    const since = { ...this._seqs };
    if (this._messagesOffset !== undefined) since.messages = this._messagesOffset;
    if (keys) for (const key of Object.keys(since)) if (!keys.has(key)) delete since[key];
    if (Object.keys(since).length === 0) return;
    const ref = this._nextRef();
    this._resumeRef = ref;
    this._resumeKeys = new Set(Object.keys(since));
    this._send({ type: "resume", since, ref });
  }

  _onResumed(message) {
    const until = message.until && typeof message.until === "object" ? message.until : {};
    const recovered = message.recovered && typeof message.recovered === "object" ? message.recovered : {};
    const reasons = message.reason && typeof message.reason === "object" ? message.reason : {};
    if (message.ref !== undefined && message.ref !== this._resumeRef) return; // not ours
    const again = new Set();
    for (const [key, seq] of Object.entries(until)) {
      if (recovered[key] === false && reasons[key] === "unavailable") {
        again.add(key); // CouchDB did not answer: ask again from the same position
      } else if (recovered[key] === false && reasons[key] === "unknown_database") {
        if (key !== "messages") delete this._seqs[key]; // not followed: stop sending it
      } else if (key === "messages") this._messagesOffset = seq;
      else this._seqs[key] = seq;
    }
    if (again.size) {
      this._retryResume(again);
    } else {
      this._resumeKeys = null;
      this._resumeAttempt = 0;
    }
  }

  /** Hold the positions of `keys` and send `resume` for them again, with backoff. */
  _retryResume(keys) {
    this._resumeKeys = keys;
    if (this._resumeTimer !== null) return;
    const delay = reconnectDelay(BACKOFF, this._resumeAttempt++, this._o);
    this._resumeTimer = setTimeout(() => {
      this._resumeTimer = null;
      if (this._authenticated && this._ws) this._sendResume(keys);
    }, delay);
  }

  _onSubscriptionAnswer(message) {
    let topic = message.topic;
    if (typeof message.ref === "string" && this._subRefs && this._subRefs.has(message.ref)) {
      topic = this._subRefs.get(message.ref);
      this._subRefs.delete(message.ref);
    }
    const sub = this._subs.get(topic);
    if (message.type === "subscribed") {
      if (sub) {
        // where the topic stands now (after since: its replayed publications moved nothing)
        if (message.until !== undefined && message.until !== null) this._topicOffsets[topic] = message.until;
        sub.done(message);
      }
      return;
    }
    // unsubscribed: the answer to ours, or the server's own (access lost, forbidden)
    const waiters = this._unsubWaiters && this._unsubWaiters.get(topic);
    if (waiters) {
      this._unsubWaiters.delete(topic);
      for (const w of waiters) w.resolve(message);
    } else if (sub) {
      this._dispatchTopic(topic, message); // its handlers learn why, then it is gone
      this._subs.delete(topic);
      delete this._topicOffsets[topic];
      sub.fail({ code: message.reason || "unsubscribed", message: `unsubscribed from ${topic}`, topic });
    }
  }

  _onError(message) {
    const ref = message.ref;
    if (typeof ref === "string" && ref === this._resumeRef && this._resumeTimer === null) {
      // the resume failed as a whole ("internal": the history could not be read): what it
      // did not give is still missing, so its positions stay held and it is asked again
      if (this._resumeKeys && TRANSIENT.has(message.code)) this._retryResume(this._resumeKeys);
      else this._resumeKeys = null;
      return;
    }
    if (typeof ref === "string" && this._pending.has(ref)) {
      const request = this._pending.get(ref);
      this._pending.delete(ref);
      request.fail(message);
      return;
    }
    let topic = typeof message.topic === "string" ? message.topic : undefined;
    let answersSubscription = false;
    if (typeof ref === "string" && this._subRefs && this._subRefs.has(ref)) {
      topic = this._subRefs.get(ref);
      this._subRefs.delete(ref);
      answersSubscription = true;
    }
    if (topic !== undefined) {
      const sub = this._subs.get(topic);
      if (sub && sub.waiting()) {
        this._subs.delete(topic);
        sub.fail(message);
        return;
      }
      if (sub && answersSubscription && !sub.active && !TRANSIENT.has(message.code)) {
        // a re-subscription (after a reconnect) refused: the server ended it, as with
        // `unsubscribed`; it is forgotten and its handlers learn why
        this._dispatchTopic(topic, { type: "unsubscribed", topic, reason: message.code, error: message });
        this._subs.delete(topic);
        delete this._topicOffsets[topic];
        return;
      }
      const waiters = this._unsubWaiters && this._unsubWaiters.get(topic);
      if (waiters) {
        this._unsubWaiters.delete(topic);
        for (const w of waiters) w.reject(new RealtimeError(message));
      }
    }
  }

  // -- sending -----------------------------------------------------------------------

  _nextRef() {
    this._refCount = (this._refCount % MAX_REF) + 1;
    return this._refPrefix + this._refCount;
  }

  /** Send now (signed once the session has a secret), in order; false if not open. */
  _send(message) {
    if (!this._ws || !this._authenticated) return false;
    return this._rawSend(message, true);
  }

  _rawSend(message, maySign) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return false;
    const key = maySign ? this._sessionKey : null;
    if (!key) {
      ws.send(JSON.stringify(message));
      return true;
    }
    this._sendChain = this._sendChain.then(async () => {
      const text = await signEnvelope(await key, message);
      if (ws === this._ws && ws.readyState === OPEN) ws.send(text);
    }).catch(reportError);
    return true;
  }

  /**
   * Send a request and wait for the answer carrying its `ref`.
   * @param {object} message  a client message (its `ref` is set here)
   * @param {{resend?: boolean, timeoutMs?: number}} [o]  resend: send again (same ref)
   *     after a reconnect if still unanswered
   * @returns {Promise<object>}
   */
  request(message, o = {}) {
    if (this._stopped) return Promise.reject(new RealtimeError({ code: "closed", message: "the client is closed" }));
    const ref = this._nextRef();
    const full = { ...message, ref };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new RealtimeError({ code: "timeout", message: `no answer to ${message.type}`, ref }));
      }, o.timeoutMs ?? this._o.requestTimeoutMs);
      this._pending.set(ref, {
        message: full,
        resend: !!o.resend,
        done: (answer) => { clearTimeout(timer); resolve(answer); },
        fail: (error) => { clearTimeout(timer); reject(new RealtimeError(error)); },
      });
      this._pending.get(ref).sent = this._send(full);
    });
  }

  _dropRequests() {
    for (const [ref, request] of this._pending) {
      if (request.resend) continue;
      this._pending.delete(ref);
      request.fail({ code: "disconnected", message: "the connection was lost before the answer", ref });
    }
    if (this._unsubWaiters) {
      // nothing is subscribed on the next connection: done
      for (const waiters of this._unsubWaiters.values()) for (const w of waiters) w.resolve({ type: "unsubscribed" });
      this._unsubWaiters.clear();
    }
    if (this._subRefs) this._subRefs.clear();
    // a subscribe not answered yet is sent again on the next connection, and timed from then
    for (const sub of this._subs.values()) sub.disarm();
  }

  /** Round trip to the server: resolves with the `pong`. */
  ping() {
    return this.request({ type: "ping" });
  }

  /**
   * Subscribe to a topic (`public:…`, `user:…`, `doc:<db>/<id>`, `db:<db>`, ...).  `fn` gets
   * each publication or `doc-change` of it.  Kept across reconnects until
   * {@link unsubscribe} or until the server ends it (`unsubscribed` with a reason).
   * @param {string} topic
   * @param {(message: object) => void} [fn]
   * @param {{snapshot?: boolean, selector?: object, since?: (string|number)}} [options]
   * @returns {Promise<object>} the `subscribed` answer
   */
  subscribe(topic, fn, options = {}) {
    if (this._stopped) return Promise.reject(new RealtimeError({ code: "closed", message: "the client is closed" }));
    let sub = this._subs.get(topic);
    if (!sub) {
      sub = new Subscription(topic);
      this._subs.set(topic, sub);
    }
    if (fn) sub.handlers.add(fn);
    sub.options = { ...sub.options, ...options };
    if (options.since !== undefined) this._topicOffsets[topic] = options.since;
    // made while disconnected: sent, and timed, once the connection is back
    const answer = sub.wait();
    this._sendSubscribe(sub);
    return answer;
  }

  _sendSubscribe(sub) {
    if (!this._authenticated) return;
    const message = { type: "subscribe", topic: sub.topic };
    if (sub.options.snapshot) message.snapshot = true;
    if (sub.options.selector !== undefined) message.selector = sub.options.selector;
    const offset = this._topicOffsets[sub.topic];
    if (offset !== undefined) message.since = offset;
    message.ref = this._nextRef();
    if (!this._subRefs) this._subRefs = new Map();
    this._subRefs.set(message.ref, sub.topic);
    sub.active = false;
    if (!this._send(message)) return; // the socket is closing: sent again on the next one
    sub.arm(this._o.requestTimeoutMs, () => {
      if (this._subs.get(sub.topic) === sub && !sub.active) this._subs.delete(sub.topic);
    });
  }

  /**
   * Leave a topic (or, with `fn`, remove only that handler: the topic is left when no
   * handler remains).
   * @param {string} topic
   * @param {Function} [fn]
   * @returns {Promise<object | void>}
   */
  unsubscribe(topic, fn) {
    const sub = this._subs.get(topic);
    if (sub && fn) {
      sub.handlers.delete(fn);
      if (sub.handlers.size > 0) return Promise.resolve();
    }
    this._subs.delete(topic);
    delete this._topicOffsets[topic];
    if (sub) sub.fail({ code: "unsubscribed", message: `unsubscribed from ${topic}`, topic });
    if (!this._authenticated || !this._ws) return Promise.resolve({ type: "unsubscribed", topic });
    if (!this._unsubWaiters) this._unsubWaiters = new Map();
    return new Promise((resolve, reject) => {
      if (!this._unsubWaiters.has(topic)) this._unsubWaiters.set(topic, []);
      this._unsubWaiters.get(topic).push({ resolve, reject });
      const ref = this._nextRef();
      if (!this._subRefs) this._subRefs = new Map();
      this._subRefs.set(ref, topic);
      this._send({ type: "unsubscribe", topic, ref });
    });
  }

  /**
   * Publish to a topic.  Resolves once sent (the server does not acknowledge a
   * publication; a refusal arrives as an `error` event with the topic); while
   * disconnected, waits for the next connection.
   * @param {string} topic
   * @param {any} data
   * @returns {Promise<void>}
   */
  publish(topic, data) {
    if (this._stopped) return Promise.reject(new RealtimeError({ code: "closed", message: "the client is closed" }));
    const message = { type: "publish", topic, data };
    if (this._send(message)) return Promise.resolve();
    return new Promise((resolve, reject) => this._outbox.push({ message, resolve, reject }));
  }

  /**
   * Create a document through the gateway (`doc.create`): resolves with `doc.created`
   * `{db, id, rev}`.
   * @param {string} db
   * @param {object} doc
   */
  create(db, doc) {
    return this.request({ type: DOC_TYPES.create, db, doc }, { resend: true });
  }

  /**
   * Change fields of a document (`doc.update`): resolves with `doc.updated` `{db, id, rev}`;
   * rejects with the `error` (`conflict` carries the current `rev`).
   * @param {string} db
   * @param {string} id
   * @param {string} rev
   * @param {object} changes  field -> new value
   */
  update(db, id, rev, changes) {
    return this.request({ type: DOC_TYPES.update, db, id, rev, changes }, { resend: true });
  }

  /**
   * Delete a document (`doc.delete`): resolves with `doc.deleted` `{db, id, rev}`.
   * @param {string} db
   * @param {string} id
   * @param {string} rev
   */
  remove(db, id, rev) {
    return this.request({ type: DOC_TYPES.remove, db, id, rev }, { resend: true });
  }
}

/** One topic the client is subscribed to (or subscribing to). */
class Subscription {
  constructor(topic) {
    this.topic = topic;
    this.handlers = new Set();
    this.options = {};
    this.active = false;
    this.last = null;
    this._waiters = [];
  }

  waiting() {
    return this._waiters.length > 0;
  }

  /** A promise of the answer; its timeout starts when the subscribe is sent ({@link arm}). */
  wait() {
    return new Promise((resolve, reject) => {
      this._waiters.push({ resolve, reject, timer: null });
    });
  }

  /** The subscribe was just sent: each waiter gets `timeoutMs` from now for its answer. */
  arm(timeoutMs, onTimeout) {
    for (const waiter of this._waiters) {
      clearTimeout(waiter.timer);
      waiter.timer = setTimeout(() => {
        this._waiters = this._waiters.filter((w) => w !== waiter);
        if (!this._waiters.length) onTimeout();
        waiter.reject(new RealtimeError({ code: "timeout", message: `no answer to subscribe ${this.topic}`, topic: this.topic }));
      }, timeoutMs);
    }
  }

  disarm() {
    for (const waiter of this._waiters) clearTimeout(waiter.timer);
  }

  done(message) {
    this.active = true;
    this.last = message;
    for (const w of this._waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(message);
    }
  }

  fail(error) {
    for (const w of this._waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new RealtimeError(error));
    }
  }
}

// -- signed messages (WebCrypto) -----------------------------------------------------

function importKey(secret) {
  return globalThis.crypto.subtle.importKey(
    "raw", new TextEncoder().encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
}

function ignore() {}

/** `bytes` random bytes as hex (`getRandomValues` works on plain http:// pages too). */
function randomHex(bytes) {
  const values = globalThis.crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (b) => b.toString(16).padStart(2, "0")).join("");
}

function randomNonce() {
  if (typeof globalThis.crypto.randomUUID === "function") return globalThis.crypto.randomUUID();
  return randomHex(16);
}

/**
 * The envelope text of a signed message: HMAC-SHA256 over the UTF-8 bytes of
 * `JSON.stringify({payload, timestamp, nonce})`, standard base64.
 * @param {CryptoKey} key
 * @param {object} payload
 * @returns {Promise<string>}
 */
export async function signEnvelope(key, payload) {
  const timestamp = Date.now();
  const nonce = randomNonce();
  const body = JSON.stringify({ payload, timestamp, nonce });
  const mac = new Uint8Array(await globalThis.crypto.subtle.sign("HMAC", key, new TextEncoder().encode(body)));
  let binary = "";
  for (const byte of mac) binary += String.fromCharCode(byte);
  return JSON.stringify({ payload, signature: btoa(binary), timestamp, nonce });
}

export default Realtime;
