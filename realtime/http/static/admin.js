// The /admin dashboard.  It uses only the public REST API (and /metrics), with the admin
// credential the operator types in; that credential lives in this tab's sessionStorage and
// goes out only as an Authorization header.  Everything is written with textContent.
import { formatNumber, lineChart } from "/static/charts.js";

const STORAGE_ITEM = "realtime-admin-credential"; // the sessionStorage item's name
const WINDOW_SECONDS = 300;
const params = new URLSearchParams(location.search);
const INTERVAL = Math.max(250, Number(params.get("interval")) || 2000);
const MAX_SAMPLES = Math.ceil((WINDOW_SECONDS * 1000) / INTERVAL) + 1;

const $ = (id) => document.getElementById(id);
const samples = []; // {t, total, authenticated, deliveries, sent, received, errors: {code: n}}
let timer = null;
window.realtimeAdmin = { samples };

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function credential() {
  return sessionStorage.getItem(STORAGE_ITEM);
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${credential()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  const text = await response.text();
  let answer = text;
  try {
    answer = JSON.parse(text);
  } catch {
    // /metrics is text
  }
  return { status: response.status, answer };
}

// -- login ------------------------------------------------------------------------------

function showLogin(message) {
  stop();
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login-panel").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  document.body.dataset.ready = "login";
}

function loginProblem(status, answer) {
  if (status === 403 && answer.error === "admin_disabled") {
    return "The admin API is off on this gateway: set REALTIME_ADMIN_KEY.";
  }
  if (status === 401 || status === 403) return "Not accepted: that is not an admin key or admin JWT.";
  return `The gateway answered ${status}${answer.message ? `: ${answer.message}` : ""}.`;
}

async function tryLogin() {
  const { status, answer } = await api("GET", "/websocket/users/connected");
  if (status === 200) {
    $("login-panel").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = false;
    start();
    return;
  }
  sessionStorage.removeItem(STORAGE_ITEM);
  showLogin(loginProblem(status, answer));
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = event.target.elements.credential;
  const value = input.value.trim();
  input.value = "";
  if (!value) return;
  sessionStorage.setItem(STORAGE_ITEM, value);
  tryLogin();
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(STORAGE_ITEM);
  showLogin("Logged out.");
});

// -- polling ----------------------------------------------------------------------------

function start() {
  stop();
  poll();
  timer = setInterval(poll, INTERVAL);
}

function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

/** Prometheus text -> {name: [{labels: {...}, value}]} */
export function parseMetrics(text) {
  const out = {};
  for (const line of String(text).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    if (match[3]) {
      for (const part of match[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[part[1]] = part[2];
    }
    (out[match[1]] ||= []).push({ labels, value: Number(match[4]) });
  }
  return out;
}

const sum = (metrics, name) => (metrics[name] || []).reduce((total, m) => total + m.value, 0);

async function poll() {
  let status, metrics, users, summary;
  try {
    [status, metrics, users, summary] = await Promise.all([
      api("GET", "/websocket/status"), api("GET", "/metrics"),
      api("GET", "/websocket/users/connected"), api("GET", "/websocket/admin/summary"),
    ]);
  } catch (error) {
    $("health").dataset.state = "closed";
    $("health").textContent = "gateway unreachable";
    return;
  }
  if (users.status === 401 || users.status === 403) {
    sessionStorage.removeItem(STORAGE_ITEM);
    showLogin(loginProblem(users.status, users.answer));
    return;
  }
  const m = parseMetrics(metrics.answer);
  const errors = {};
  for (const { labels, value } of m.realtime_errors_total || []) errors[labels.code] = value;
  for (const { labels, value } of m.realtime_messages_sent_total || []) {
    if (labels.type === "auth_failed") errors.auth_failed = value;
  }
  samples.push({
    t: Date.now(),
    total: status.answer.connections?.total ?? null,
    authenticated: status.answer.connections?.authenticated ?? null,
    deliveries: sum(m, "realtime_deliveries_total"),
    sent: sum(m, "realtime_messages_sent_total"),
    received: sum(m, "realtime_messages_received_total"),
    errors,
  });
  while (samples.length > MAX_SAMPLES) samples.shift();
  render(status.answer, m, users.status === 200 ? users.answer : null, summary.status === 200 ? summary.answer : null);
  document.body.dataset.ready = "dashboard";
}

function rate(key) {
  const values = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    const dv = samples[i][key] - samples[i - 1][key];
    values.push(dt > 0 && dv >= 0 ? dv / dt : null);
  }
  return values;
}

function render(status, m, users, summary) {
  const health = $("health");
  health.dataset.state = status.status;
  health.textContent = status.status;
  $("t-total").textContent = formatNumber(status.connections.total);
  $("t-auth").textContent = formatNumber(status.connections.authenticated);
  $("t-topics").textContent = formatNumber(sum(m, "realtime_topics"));
  $("t-redis").textContent = status.redis?.state ?? "–";
  $("t-broker").textContent = (m.realtime_broker_up?.[0]?.value ?? 1) ? "up" : "down";
  $("t-uptime").textContent = status.uptime;
  $("t-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  if (users) {
    $("t-users").textContent = formatNumber(users.totalUsers);
    $("t-users-sub").textContent = `${formatNumber(users.totalConnections)} connections, every process`;
  }

  const span = samples.length > 1 ? Math.round((samples.at(-1).t - samples[0].t) / 1000) : 0;
  const shown = Math.max(1, Math.min(WINDOW_SECONDS, span));
  lineChart($("c-connections"), [
    { label: "open", color: "#2f6fde", values: samples.map((s) => s.total) },
    { label: "authenticated", color: "#18794e", values: samples.map((s) => s.authenticated) },
  ], { seconds: shown });
  lineChart($("c-traffic"), [
    { label: "sent", color: "#2f6fde", values: rate("sent") },
    { label: "received", color: "#b54708", values: rate("received") },
    { label: "deliveries", color: "#7c3aed", values: rate("deliveries"), dashed: true },
  ], { seconds: shown, unit: "/s" });

  renderProcesses(status, summary);
  renderFeeds(status, m);
  renderRefusals();
  if (users) renderUsers(users);
}

function renderProcesses(status, summary) {
  const rows = [];
  if (summary && Array.isArray(summary.processes)) {
    for (const p of summary.processes) {
      rows.push(el("tr", { "data-process": p.id },
        el("td", { class: "mono", textContent: p.id + (p.id === summary.process ? " (this one)" : "") }),
        el("td", { class: "num", textContent: formatNumber(p.authenticated) }),
        el("td", { class: "num", textContent: formatNumber(p.users) })));
    }
    $("proc-note").textContent = `${summary.processes.length} live`;
  } else {
    rows.push(el("tr", {}, el("td", { textContent: "this process" }),
      el("td", { class: "num", textContent: formatNumber(status.connections.authenticated) }),
      el("td", { class: "num", textContent: "–" })));
    $("proc-note").textContent = "";
  }
  $("processes").replaceChildren(...rows);
}

function renderFeeds(status, m) {
  const lag = {};
  for (const { labels, value } of m.realtime_feed_lag_seconds || []) lag[labels.db] = value;
  const feeds = status.couchdb?.feeds || {};
  const rows = Object.entries(status.couchdb?.lastSeq || {}).map(([db, seq]) => {
    const feed = feeds[db] || {};
    const state = feed.state || status.couchdb.state;
    return el("tr", { "data-db": db },
      el("td", { class: "mono", textContent: db }),
      el("td", {}, el("span", { class: "pill", "data-state": state, textContent: state })),
      el("td", { class: "mono", textContent: seq === null || seq === undefined ? "–" : String(seq).slice(0, 24) }),
      el("td", { class: "num", textContent: db in lag ? `${formatNumber(lag[db])} s` : "–" }),
      el("td", { class: "num", textContent: feed.reconnects ?? "–", title: feed.lastError || "" }));
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 5, textContent: "no feed" })));
  $("feeds").replaceChildren(...rows);
}

function renderRefusals() {
  const last = samples[samples.length - 1];
  const first = samples[0];
  const codes = Object.keys(last.errors).sort();
  const rows = codes.map((code) => el("tr", { "data-code": code },
    el("td", { class: "mono", textContent: code }),
    el("td", { class: "num", textContent: formatNumber(last.errors[code] - (first.errors[code] || 0)) }),
    el("td", { class: "num", textContent: formatNumber(last.errors[code]) })));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 3, textContent: "none since the start" })));
  $("refusals").replaceChildren(...rows);
}

function renderUsers(users) {
  $("users-note").textContent = `${users.totalUsers} users, ${users.totalConnections} connections`;
  const rows = users.users.slice(0, 500).map((u) => {
    const message = el("button", { type: "button", class: "secondary", textContent: "Message" });
    message.addEventListener("click", () => {
      $("f-message").elements.userId.value = u.userId;
      $("f-message").elements.data.focus();
    });
    const kick = el("button", { type: "button", class: "danger", textContent: "Disconnect" });
    kick.addEventListener("click", () => disconnect(u.userId));
    return el("tr", { "data-user": u.userId },
      el("td", { class: "mono", textContent: u.userId }),
      el("td", { class: "num", textContent: String(u.connections) }),
      el("td", {}, message, " ", kick));
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: 3, textContent: "nobody is connected" })));
  $("users").replaceChildren(...rows);
}

// -- actions ----------------------------------------------------------------------------

function report(what, { status, answer }) {
  const ok = status >= 200 && status < 300;
  const text = `${what}: ${status} ${typeof answer === "object" ? JSON.stringify(answer) : answer}`;
  $("actions").prepend(el("li", { "data-ok": ok ? "true" : "false" },
    el("time", { textContent: new Date().toLocaleTimeString() }), text));
  poll();
}

function jsonField(form, name) {
  try {
    return { value: JSON.parse(form.elements[name].value || "null") };
  } catch {
    report(`${name}`, { status: 0, answer: "is not valid JSON" });
    return null;
  }
}

async function disconnect(userId) {
  report(`disconnect ${userId}`, await api("DELETE", `/websocket/users/${encodeURIComponent(userId)}/disconnect`));
}

$("f-message").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const data = jsonField(form, "data");
  if (!data) return;
  const userId = form.elements.userId.value.trim();
  report(`message ${userId}`, await api("POST", "/websocket/message/user",
    { userId, type: form.elements.type.value.trim(), data: data.value }));
});

$("f-broadcast").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const data = jsonField(form, "data");
  if (!data) return;
  report("broadcast", await api("POST", "/websocket/message/broadcast",
    { type: form.elements.type.value.trim(), data: data.value }));
});

$("f-disconnect").addEventListener("submit", (event) => {
  event.preventDefault();
  disconnect(event.target.elements.userId.value.trim());
});

$("f-revoke").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const token = form.elements.token.value.trim();
  form.elements.token.value = "";
  const body = token ? { token } : { jti: form.elements.jti.value.trim(), exp: Number(form.elements.exp.value) };
  report("revoke", await api("POST", "/websocket/tokens/revoke", body));
});

// -- start ------------------------------------------------------------------------------

if (credential()) tryLogin();
else showLogin("");
