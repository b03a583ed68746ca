// The twotower demo page: the public API only, no framework, no build step.
// The token stays in `state` (this page's memory): never written to storage, gone on reload.
"use strict";

const KNOBS = ["diversity", "explore", "calibrate"];
const state = { token: "", user: null, previous: new Set(), answers: 0, touched: new Set(), infos: new Map() };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function errorText(data) {
  if (!data || data.detail === undefined) return "";
  if (typeof data.detail === "string") return data.detail;
  return data.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  if (!res.ok) {
    const hint = res.status === 401 || res.status === 403 ? " (type a token with that scope above)" : "";
    const err = new Error(`${method} ${path}: ${res.status} ${errorText(data)}${hint}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

const enc = encodeURIComponent; // "/" in an id goes as %2F, as the API expects

function info(id) {
  if (!state.infos.has(id)) {
    state.infos.set(id, api("GET", `/items/${enc(id)}`).catch(() => ({ item_id: id, title: null, categories: [] })));
  }
  return state.infos.get(id);
}

const label = (item) => item.title || `item ${item.item_id}`;

async function recommend() {
  const body = { user_id: state.user, k: 10, explain: true };
  for (const knob of KNOBS) if (state.touched.has(knob)) body[knob] = Number($(knob).value);
  const started = performance.now();
  const data = await api("POST", "/recommend", body);
  $("latency").textContent = `${(performance.now() - started).toFixed(1)} ms`;
  await render(data);
}

async function render(data) {
  const ids = data.items.map((x) => x.item_id);
  const because = data.items.flatMap((x) => x.because || []);
  const infos = new Map((await Promise.all([...new Set([...ids, ...because])].map(info))).map((x) => [x.item_id, x]));
  const marking = state.previous.size > 0;
  const mix = new Map();
  const rows = data.items.map((x) => {
    const item = infos.get(x.item_id);
    for (const c of item.categories) mix.set(c, (mix.get(c) || 0) + 1);
    const isNew = marking && !state.previous.has(x.item_id);
    const li = el("li", { class: isNew ? "item new" : "item", "data-item-id": x.item_id,
      "data-categories": JSON.stringify(item.categories), title: "click: post as an event" },
    el("span", { class: "title", textContent: label(item) }),
    el("span", { class: "score", textContent: x.score.toFixed(3) }));
    if (isNew) li.append(el("span", { class: "badge", textContent: "new" }));
    if (x.explore) li.append(el("span", { class: "badge explore", textContent: "explore" }));
    li.append(el("div", { class: "cats" }, ...item.categories.map((c) => el("span", { textContent: c }))));
    if (x.because && x.because.length) {
      li.append(el("div", { class: "because", textContent: `because: ${x.because.map((b) => label(infos.get(b))).join(", ")}` }));
    }
    li.addEventListener("click", () => guarded(() => postEvent(x.item_id)));
    return li;
  });
  $("recs").replaceChildren(...rows);
  state.previous = new Set(ids);
  $("source").textContent = data.source;
  $("source").dataset.source = data.source;
  $("model").textContent = data.model_version;
  const intent = Object.entries(data.intent || {}).sort((a, b) => b[1] - a[1]);
  $("intent").replaceChildren(intent.length ? "session intent: " : "no session intent",
    ...intent.map(([c, lift]) => el("span", { textContent: `${c} ${lift.toFixed(2)}` })));
  const shares = [...mix.entries()].sort((a, b) => b[1] - a[1]);
  $("mix").replaceChildren("list mix: ", ...shares.map(([c, n]) => el("span", { textContent: `${c} ${Math.round((100 * n) / ids.length)}%` })));
  $("recs").dataset.answer = String(++state.answers);
}

async function loadHistory() {
  let events = [];
  try {
    events = (await api("GET", `/users/${enc(state.user)}/history`)).events;
  } catch (err) {
    $("history").replaceChildren(el("li", { textContent: err.message }));
    return;
  }
  const infos = await Promise.all(events.map((e) => info(e.item_id)));
  $("history").replaceChildren(...events.map((e, i) => el("li", { "data-history-id": e.item_id,
    textContent: `${label(infos[i])} (${e.event})` })).reverse());
  $("forget").disabled = events.length === 0;
}

async function refresh() {
  if (!state.user) return;
  document.body.dataset.busy = "1";
  try {
    await recommend();
    await loadHistory();
  } finally {
    delete document.body.dataset.busy;
  }
}

async function openUser(id) {
  state.user = id;
  state.previous = new Set();
  $("user-id").value = id;
  $("who").textContent = `for ${id}`;
  const link = `/?user=${enc(id)}`;
  $("share").href = link;
  $("share").hidden = false;
  window.history.replaceState(null, "", link);
  await refresh();
  setStatus(`showing ${id}`);
}

async function postEvent(itemId) {
  if (!state.user) await openUser(anonymousId());
  const event = { user_id: state.user, item_id: itemId };
  if ($("event-type").value) event.event = $("event-type").value;
  await api("POST", "/events", { events: [event] });
  await refresh();
  setStatus(`posted ${label(await info(itemId))}; new items are marked`);
}

async function forget() {
  const done = await api("DELETE", `/users/${enc(state.user)}`);
  state.previous = new Set();
  await refresh();
  setStatus(`forgot ${state.user}: ${done.deleted} events deleted`);
}

async function search(query) {
  const found = await api("GET", `/items?q=${enc(query)}&limit=10`);
  $("search-results").replaceChildren(...found.items.map((item) => {
    const add = el("button", { type: "button", textContent: "add" });
    add.addEventListener("click", () => guarded(() => postEvent(item.item_id)));
    return el("li", { "data-search-id": item.item_id }, `${label(item)} `,
      el("small", { textContent: item.categories.join(", ") }), add);
  }));
  if (!found.items.length) $("search-results").replaceChildren(el("li", { textContent: "no match" }));
}

function anonymousId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8)); // randomUUID needs a secure context
  return `anon-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

async function guarded(action) {
  try {
    await action();
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function loadEventTypes() {
  const { events } = await api("GET", "/events/types");
  const preferred = ["click", "view", "watch", "play", "rating_5"].find((e) => events.includes(e)) || "";
  $("event-type").replaceChildren(el("option", { value: "", textContent: "<other>" }),
    ...events.filter((e) => e !== "<other>").map((e) => el("option", { value: e, textContent: e })));
  $("event-type").value = preferred;
}

function setUp() {
  $("token").addEventListener("input", (e) => { state.token = e.target.value.trim(); });
  $("user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("user-id").value.trim();
    if (id) guarded(() => openUser(id));
  });
  $("anon").addEventListener("click", () => guarded(() => openUser(anonymousId())));
  $("forget").addEventListener("click", () => guarded(forget));
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const query = $("search").value.trim();
    if (query) guarded(() => search(query));
  });
  for (const knob of KNOBS) {
    $(knob).addEventListener("input", () => {
      state.touched.add(knob);
      $(`${knob}-out`).textContent = Number($(knob).value).toFixed(2);
    });
    $(knob).addEventListener("change", () => guarded(refresh));
  }
  $("reset-knobs").addEventListener("click", () => {
    state.touched.clear();
    for (const knob of KNOBS) $(`${knob}-out`).textContent = "default";
    guarded(refresh);
  });
  guarded(loadEventTypes);
  const user = new URLSearchParams(window.location.search).get("user");
  if (user) guarded(() => openUser(user));
  else setStatus("type a user id, or start as a new anonymous user");
  document.body.dataset.ready = "1";
}

setUp();
