// The /demo page: log in as a CouchDB user, then show, live, what that user may read.
// Everything shown is written with textContent: no document field is ever parsed as HTML.
import { Realtime } from "/realtime.js";

const $ = (id) => document.getElementById(id);
const state = {
  rt: null,
  info: null,
  docs: new Map(), // db -> Map(id -> doc)
  stale: new Map(), // db -> Set(id): after a reconnect, shown but not yet in the new snapshot
  wasOpen: false,
  editing: null, // {db, id}
};
window.realtimeDemo = state; // for the curious (and the browser tests)

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

function log(text) {
  const list = $("log");
  const time = new Date().toLocaleTimeString();
  list.prepend(el("li", {}, el("time", { textContent: time }), text));
  while (list.children.length > 60) list.lastChild.remove();
}

function flash(node) {
  node.classList.remove("flash");
  void node.offsetWidth; // restart the animation
  node.classList.add("flash");
}

// -- login ----------------------------------------------------------------------------

async function session(method, body) {
  const response = await fetch("/demo/session", {
    method, credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  let answer = {};
  try {
    answer = await response.json();
  } catch {
    // not JSON
  }
  return { status: response.status, answer };
}

function showLogin(message) {
  $("app").hidden = true;
  $("login-panel").hidden = false;
  $("whoami").textContent = "";
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.body.dataset.ready = "login";
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const name = form.elements.name.value.trim();
  const password = form.elements.password.value;
  form.elements.password.value = "";
  const { status, answer } = await session("POST", { name, password });
  if (status === 200) start(answer);
  else showLogin(status === 401 ? "Wrong name or password." : `Login failed: ${answer.message || status}`);
});

$("logout").addEventListener("click", async () => {
  if (state.rt) state.rt.close();
  state.rt = null;
  await session("DELETE");
  showLogin("Logged out.");
});

// -- the live part --------------------------------------------------------------------

function start(info) {
  state.info = info;
  state.docs = new Map();
  $("login-panel").hidden = true;
  $("app").hidden = false;
  $("whoami").textContent = `${info.name}${info.roles.length ? ` (${info.roles.join(", ")})` : ""}`;
  renderProfile(info.profile, false);
  renderDatabases();
  const rt = new Realtime("/ws"); // the AuthSession cookie, set by /demo/session
  state.rt = rt;
  rt.on("state", (s, detail) => {
    const pill = $("conn");
    pill.dataset.state = s;
    pill.textContent = s === "open" ? "live" : s === "connecting" ? "reconnecting…" : "disconnected";
    if (s === "open") {
      log(`connected as ${rt.user.name}`);
      // Back after a drop: the re-subscription's snapshot is the truth; what it does not
      // bring again (deleted, or no longer readable, while away) goes (see "subscribed").
      if (state.wasOpen) for (const [db, docs] of state.docs) state.stale.set(db, new Set(docs.keys()));
      state.wasOpen = true;
    }
    else if (detail.code) log(`connection ${s} (code ${detail.code}${detail.reason ? `, ${detail.reason}` : ""})`);
    if (s === "closed" && detail.code === 4001) showLogin("Your session has ended: log in again.");
  });
  rt.on("user-change", (message) => {
    log(message.deleted ? "your user document was deleted" : "your profile changed");
    renderProfile(message.deleted ? null : message.doc, true);
  });
  rt.on("resumed", (message) => {
    const counts = Object.entries(message.replayed || {}).map(([db, n]) => `${db}: ${n}`).join(", ");
    log(`resumed after a reconnect${counts ? ` (missed: ${counts})` : ""}`);
  });
  rt.on("error", (message) => log(`error ${message.code}: ${message.message || ""}`));
  rt.on("subscribed", (message) => {
    const db = message.topic.startsWith("db:") ? message.topic.slice(3) : null;
    const stale = db && state.stale.get(db);
    if (!stale) return;
    state.stale.delete(db);
    for (const id of stale) {
      state.docs.get(db).delete(id);
      renderRow(db, { id });
      log(`${db}/${id} gone while you were away`);
    }
  });
  rt.on("connected", () => {
    document.body.dataset.ready = "live";
  });
  for (const { db } of info.databases) follow(db);
}

function renderProfile(doc, changed) {
  const list = $("profile");
  list.replaceChildren();
  if (!doc) {
    list.append(el("dt", { textContent: "—" }), el("dd", { textContent: "no profile document" }));
    return;
  }
  for (const [key, value] of Object.entries(doc)) {
    if (key === "_rev" || key === "_id") continue;
    list.append(el("dt", { textContent: key }),
      el("dd", { textContent: typeof value === "string" ? value : JSON.stringify(value), "data-field": key }));
  }
  list.append(el("dt", { textContent: "_rev" }), el("dd", { class: "mono", textContent: doc._rev || "" }));
  if (changed) flash(list);
}

function renderDatabases() {
  const box = $("databases");
  box.replaceChildren();
  const note = $("docs-note");
  if (state.info.databases.length === 0) {
    note.textContent = "No application database is configured on this gateway (REALTIME_CONFIG names the rule file: " +
      "see docs/databases.rst). Your profile above is live all the same.";
    return;
  }
  note.textContent = "Each user sees only the documents the database's rule lets them read. " +
    "Edit one here and watch it change in another browser logged in as another user.";
  for (const { db, fields, writable } of state.info.databases) {
    state.docs.set(db, new Map());
    const table = el("table", { "data-db": db },
      el("thead", {}, el("tr", {}, el("th", { textContent: "id" }), el("th", { textContent: "title" }),
        el("th", { textContent: "document" }), el("th", { textContent: "" }))),
      el("tbody", { id: `rows-${db}` }));
    box.append(el("h3", { textContent: db }),
      el("p", { class: "note", id: `status-${db}`, textContent: "following…" }),
      table);
    table.dataset.fields = JSON.stringify(fields || []);
    table.dataset.writable = writable ? "true" : "false";
  }
}

async function follow(db) {
  const status = $(`status-${db}`);
  try {
    const answer = await state.rt.subscribe(`db:${db}`, (message) => onDocChange(db, message), { snapshot: true });
    status.textContent = `${state.docs.get(db).size} document(s) you may read` +
      (typeof answer.snapshot === "number" ? "" : "");
    status.dataset.state = "subscribed";
  } catch (error) {
    status.textContent = `Cannot follow db:${db}: ${error.code}${error.message ? ` (${error.message})` : ""}. ` +
      (error.code === "forbidden" || error.code === "bad_request"
        ? "This gateway does not offer database topics yet."
        : "");
    status.dataset.state = "error";
  }
}

function onDocChange(db, message) {
  if (message.type !== "doc-change") return;
  const docs = state.docs.get(db);
  if (!docs) return;
  const stale = state.stale.get(db);
  if (stale) stale.delete(message.id);
  if (message.deleted || message.removed) {
    docs.delete(message.id);
    if (!message.snapshot) log(`${db}/${message.id} ${message.deleted ? "deleted" : "no longer readable by you"}`);
    if (state.editing && state.editing.db === db && state.editing.id === message.id) closeEditor();
  } else {
    const known = docs.has(message.id);
    docs.set(message.id, message.doc);
    if (!message.snapshot) log(`${db}/${message.id} ${known ? "changed" : "appeared"}${message.replay ? " (missed while away)" : ""}`);
  }
  renderRow(db, message);
  const status = $(`status-${db}`);
  if (status.dataset.state === "subscribed") status.textContent = `${docs.size} document(s) you may read`;
}

function renderRow(db, message) {
  const body = $(`rows-${db}`);
  const old = body.querySelector(`tr[data-id="${CSS.escape(message.id)}"]`);
  const doc = state.docs.get(db).get(message.id);
  if (!doc) {
    if (old) old.remove();
    return;
  }
  const table = body.parentElement;
  const title = doc.title ?? doc.name ?? "";
  const shown = { ...doc };
  const row = el("tr", { "data-id": message.id, "data-rev": doc._rev || "" },
    el("td", { class: "mono", textContent: message.id }),
    el("td", { textContent: typeof title === "string" ? title : JSON.stringify(title), "data-field": "title" }),
    el("td", {}, el("pre", { textContent: JSON.stringify(shown, null, 1) })),
    el("td", {}));
  if (table.dataset.writable === "true") {
    const button = el("button", { type: "button", class: "secondary", textContent: "Edit" });
    button.addEventListener("click", () => openEditor(db, message.id));
    row.lastChild.append(button);
  }
  if (old) old.replaceWith(row);
  else body.append(row);
  if (!message.snapshot) flash(row);
}

// -- the edit form --------------------------------------------------------------------

function openEditor(db, id) {
  const doc = state.docs.get(db).get(id);
  const table = document.querySelector(`table[data-db="${CSS.escape(db)}"]`);
  const fields = JSON.parse(table.dataset.fields);
  state.editing = { db, id };
  $("editor").hidden = false;
  $("edit-target").textContent = `${db}/${id}`;
  $("edit-result").hidden = true;
  const box = $("edit-fields");
  box.replaceChildren();
  for (const field of fields) {
    const value = doc[field];
    const input = el(typeof value === "string" || value === undefined ? "input" : "textarea",
      { name: field, value: typeof value === "string" ? value : value === undefined ? "" : JSON.stringify(value) });
    input.dataset.json = typeof value === "string" || value === undefined ? "false" : "true";
    box.append(el("label", {}, field, input));
  }
}

function closeEditor() {
  state.editing = null;
  $("editor").hidden = true;
}

$("edit-cancel").addEventListener("click", closeEditor);

$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const { db, id } = state.editing || {};
  if (!db) return;
  const doc = state.docs.get(db).get(id);
  const changes = {};
  const result = $("edit-result");
  try {
    for (const input of $("edit-fields").querySelectorAll("input, textarea")) {
      const value = input.dataset.json === "true" ? JSON.parse(input.value) : input.value;
      if (JSON.stringify(value) !== JSON.stringify(doc[input.name])) changes[input.name] = value;
    }
  } catch {
    result.hidden = false;
    result.textContent = "A field holds JSON that does not parse.";
    return;
  }
  result.hidden = false;
  if (Object.keys(changes).length === 0) {
    result.textContent = "Nothing changed.";
    return;
  }
  result.textContent = "Saving…";
  try {
    const answer = await state.rt.update(db, id, doc._rev, changes);
    result.textContent = `Saved: revision ${answer.rev}. Every reader sees it now.`;
    result.dataset.state = "saved";
  } catch (error) {
    result.dataset.state = "error";
    result.textContent = error.code === "unknown_type"
      ? "This gateway does not take document writes yet."
      : `Refused: ${error.code}${error.message ? ` (${error.message})` : ""}`;
  }
});

// -- start ------------------------------------------------------------------------------

session("GET").then(({ status, answer }) => {
  if (status === 200 && answer.name) start(answer);
  else showLogin("");
});
