// ltrr web page: search with suggest-as-you-type, feedback buttons that never lose a click, a debug
// drawer, and the learning view. Vanilla JS, no build step; talks only to this origin's API.
"use strict";

const MAX_QUERY_CHARS = 512;   // services/api_models.py MAX_QUERY_CHARS
const RESULT_LIMIT = 20;
const SUGGEST_LIMIT = 8;
const SUGGEST_MAX_PREFIX = 100;
const STAGE_ORDER = ["context", "bandit", "retrieve", "rank", "record", "log", "total"];
const RETRIEVER_LABELS = { lexical: "BM25", dense: "dense", xr: "XR-Linear", q2e: "Q2E" };
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// identity and the API key (both per browser tab: sessionStorage)
function uuid() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const SESSION_ID = (() => {
  let s = sessionStorage.getItem("ltrr.session_id");
  if (!s) { s = `tab-${uuid()}`; sessionStorage.setItem("ltrr.session_id", s); }
  return s;
})();

const Key = {
  get() { return sessionStorage.getItem("ltrr.api_key") || ""; },
  set(v) { if (v) sessionStorage.setItem("ltrr.api_key", v); else sessionStorage.removeItem("ltrr.api_key"); },
};

// ---------------------------------------------------------------------------------------------
// HTTP
class ApiError extends Error {
  constructor(status, code, message, details, retryAfter) {
    super(message);
    this.status = status; this.code = code; this.details = details || []; this.retryAfter = retryAfter;
  }
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  const key = Key.get();
  if (key) headers["X-API-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, signal, cache: "no-store",
                              body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network", "cannot reach the API");
  }
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    const err = (data && data.error) || {};
    const ra = parseFloat(res.headers.get("Retry-After") || "");
    throw new ApiError(res.status, err.code || "http_error", err.message || res.statusText || `HTTP ${res.status}`,
                       err.details, isFinite(ra) ? ra : undefined);
  }
  return data;
}

function explain(e, what) {
  if (e.status === 0) return `Cannot reach the API: ${what} did not happen. Check that the server is running, then try again.`;
  if (e.status === 401) return `This server needs an API key for ${what}: enter it at the top right.`;
  if (e.status === 403) return `The API key was refused for ${what}: check it at the top right.`;
  if (e.status === 503) return `The service is temporarily unavailable (${e.message}). Try again in a moment.`;
  if (e.status === 422 || e.status === 413 || e.status === 414) return `The server refused ${what}: ${e.message}`;
  return `${what[0].toUpperCase()}${what.slice(1)} failed (HTTP ${e.status}): ${e.message}`;
}

// ---------------------------------------------------------------------------------------------
// small DOM helpers (text only: nothing from the API is ever parsed as HTML)
function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") n.className = v;
    else if (k === "text") n.textContent = v;
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) n.append(c);
  return n;
}

function showMessage(kind, text) {
  const m = $("message");
  m.hidden = !text;
  m.className = `message ${kind}`;
  m.textContent = text || "";
}

function showBanner(kind, text) {
  const b = $("banner");
  b.hidden = !text;
  b.className = `banner ${kind}`;
  b.textContent = text || "";
}

const fmtMs = (v) => (v === null || v === undefined ? "–" : v === 0 ? "0" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const fmtPct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(v < 0.1 ? 1 : 0)}%`);
const fmtNum = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
function fmtSecs(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1) return `${(v * 1000).toFixed(0)} ms`;
  if (v < 120) return `${v.toFixed(v < 10 ? 1 : 0)} s`;
  return `${(v / 60).toFixed(1)} min`;
}

// ---------------------------------------------------------------------------------------------
// Feedback outbox: every click becomes an event with a client-generated event_id, kept in
// sessionStorage until the API answers 202. Failures are retried with the SAME event_id (the
// worker applies each id once), with exponential backoff; a reload of the tab keeps the queue.
const Outbox = (() => {
  const STORE = "ltrr.outbox";
  let items = [];
  try { items = JSON.parse(sessionStorage.getItem(STORE) || "[]"); } catch (_) { items = []; }
  const buttons = new Map();   // event_id -> button, for the click's visible state
  const sent = [];             // event ids accepted by the API, newest last (tests read this)
  let busy = false, timer = null, waitingForKey = false, lastError = "";

  const save = () => sessionStorage.setItem(STORE, JSON.stringify(items));

  function mark(eventId, state, title) {
    const b = buttons.get(eventId);
    if (!b) return;
    b.dataset.state = state;
    if (title) b.title = title;
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(flush, Math.max(0, ms));
  }

  function render() {
    const box = $("outbox");
    if (!items.length) { box.hidden = true; box.replaceChildren(); return; }
    const head = items[0];
    const wait = Math.max(0, Math.ceil((head.next_at - Date.now()) / 1000));
    const n = items.length;
    const what = `${n} feedback event${n > 1 ? "s" : ""} not yet delivered`;
    let why;
    if (waitingForKey) why = `${lastError} Enter the key at the top right; the click${n > 1 ? "s are" : " is"} kept and will be sent then.`;
    else if (head.attempts === 0 || busy) why = "sending…";
    else why = `${lastError} Retrying in ${wait} s with the same event id; nothing is lost.`;
    box.hidden = false;
    box.replaceChildren(el("span", { class: "spinner", "aria-hidden": "true" }),
                        el("b", { text: what }), document.createTextNode(` — ${why} `),
                        el("button", { class: "btn small", type: "button", text: "Retry now",
                                       onclick: () => { items.forEach((i) => (i.next_at = 0)); waitingForKey = false; flush(); } }));
  }

  async function flush() {
    if (busy) return;
    busy = true;
    try {
      while (items.length) {
        const it = items[0];
        const now = Date.now();
        if (it.next_at > now) { schedule(it.next_at - now); break; }
        if (waitingForKey) break;
        try {
          it.attempts += 1;
          await api("/feedback", { method: "POST", body: it.event });
          items.shift(); save();
          sent.push(it.event.event_id);
          mark(it.event.event_id, "sent", "delivered");
          lastError = "";
        } catch (e) {
          if (e.status === 422) {
            // The API will never take this event (e.g. its search expired): drop it, say so.
            items.shift(); save();
            mark(it.event.event_id, "rejected", e.message);
            showBanner("warn", `A ${it.event.type} was refused by the server and dropped: ${e.message}`);
            continue;
          }
          if (e.status === 401 || e.status === 403) {
            waitingForKey = true;
            lastError = e.status === 401 ? "This server needs an API key for feedback." : "The API key was refused.";
          } else {
            lastError = e.status === 0 ? "The API cannot be reached."
              : e.status === 503 ? "The feedback store is unavailable (503)."
              : `The server answered ${e.status}.`;
            const backoff = Math.min(30000, 500 * 2 ** Math.min(it.attempts, 6)) * (0.85 + 0.3 * Math.random());
            it.next_at = Date.now() + Math.max(backoff, (e.retryAfter || 0) * 1000);
            schedule(it.next_at - Date.now());
          }
          save();
          mark(it.event.event_id, "queued", lastError);
          break;
        }
      }
    } finally {
      busy = false;
      render();
    }
  }

  function add(event, button) {
    items.push({ event, attempts: 0, next_at: 0 });
    save();
    if (button) { buttons.set(event.event_id, button); mark(event.event_id, "pending", "sending"); }
    render();
    flush();
  }

  function keyChanged() { waitingForKey = false; items.forEach((i) => (i.next_at = 0)); flush(); }

  setInterval(() => { if (items.length) render(); }, 1000);   // the countdown
  window.addEventListener("online", () => { items.forEach((i) => (i.next_at = 0)); flush(); });
  if (items.length) { setTimeout(render, 0); setTimeout(flush, 300); }   // a reload resumes the queue
  return { add, flush, keyChanged, pending: () => items.map((i) => ({ ...i.event, attempts: i.attempts })), sent };
})();

// ---------------------------------------------------------------------------------------------
// search
const state = { search: null, lastQuery: "" };

async function runSearch(raw) {
  Suggest.hide();
  const q = (raw === undefined ? $("q").value : raw).trim();
  if (!q) { showMessage("warn", "Type something to search for: a title, an artist, an album or a mood."); $("q").focus(); return; }
  if (q.length > MAX_QUERY_CHARS) {
    showMessage("warn", `That query is ${q.length.toLocaleString()} characters long; at most ${MAX_QUERY_CHARS} are allowed. Shorten it and search again.`);
    return;
  }
  const debug = $("debug").checked;
  showMessage("info", "Searching…");
  $("go").disabled = true;
  const t0 = performance.now();
  let data;
  try {
    data = await api("/search", { method: "POST",
                                  body: { q, limit: RESULT_LIMIT, session_id: SESSION_ID, debug } });
  } catch (e) {
    showMessage("error", explain(e, "the search"));
    return;
  } finally {
    $("go").disabled = false;
  }
  const ms = performance.now() - t0;
  state.search = data;
  state.lastQuery = q;
  try { sessionStorage.setItem("ltrr.last_search", JSON.stringify(data)); } catch (_) { /* full: not needed */ }
  showMessage("", "");
  renderResults(data, ms);
  renderDrawer(data);
}

function renderResults(data, ms) {
  const list = $("results");
  list.replaceChildren();
  $("empty").hidden = data.results.length > 0;
  if (!data.results.length) {
    $("empty").replaceChildren(el("p", { text: `No results for “${data.query}”.` }),
                               el("p", { class: "hint", text: "Try fewer words or another spelling." }));
  }
  $("result-meta").replaceChildren(
    el("span", { text: `${data.results.length} result${data.results.length === 1 ? "" : "s"} for “${data.query}”` }),
    el("span", { class: "hint", text: `${ms === null ? " · restored" : ` · ${ms.toFixed(0)} ms round trip`} · search ${data.search_id.slice(0, 8)}` }));
  data.results.forEach((hit, i) => list.append(resultRow(data, hit, hit.position || i + 1)));
  renderMore(data);
}

// Later pages of the same search: cut from the ranking the first page came from, same search_id,
// absolute positions (feedback on the 14th result says 14).
function renderMore(data) {
  const more = $("more");
  const shown = data.results.length;
  more.hidden = !(data.total > shown && shown > 0);
  more.onclick = async () => {
    more.disabled = true;
    let page;
    try {
      page = await api(`/search/${encodeURIComponent(data.search_id)}?offset=${shown}&limit=${RESULT_LIMIT}`);
    } catch (e) {
      showMessage("error", explain(e, "the next page"));
      return;
    } finally {
      more.disabled = false;
    }
    data.results = data.results.concat(page.results);
    try { sessionStorage.setItem("ltrr.last_search", JSON.stringify(data)); } catch (_) { /* full: not needed */ }
    page.results.forEach((hit) => $("results").append(resultRow(data, hit, hit.position)));
    $("result-meta").firstChild.textContent = `${data.results.length} results for “${data.query}”`;
    more.hidden = !(page.results.length > 0 && data.total > data.results.length);
  };
}

// Inline SVG icons (fonts differ in which symbols they have).
const ICONS = {
  play: "M4 2.5v11l9-5.5z",
  like: "M8 14s-5.5-3.4-5.5-7.2A3 3 0 0 1 8 4.9a3 3 0 0 1 5.5 1.9C13.5 10.6 8 14 8 14z",
  skip: "M3 3v10l7.5-5zM11 3h2v10h-2z",
};
function icon(name) {
  const NS = "http://www.w3.org/2000/svg";
  const s = document.createElementNS(NS, "svg");
  s.setAttribute("viewBox", "0 0 16 16"); s.setAttribute("class", "ico"); s.setAttribute("aria-hidden", "true");
  const p = document.createElementNS(NS, "path");
  p.setAttribute("d", ICONS[name]); p.setAttribute("fill", "currentColor");
  s.append(p);
  return s;
}

// Feedback buttons of one hit: each click is an event with its own event_id, at the hit's position.
// `target` names what was acted on: {track_id} for a track, {entity_id[, track_id]} for an artist
// or album (without a track_id the server takes the entity's first top track: what its Play plays).
function feedbackButtons(data, target, position, label, kinds) {
  return kinds.map(([type, text]) => {
    const b = el("button", { type: "button", class: `fb fb-${type}`, "data-type": type, "aria-label": `${text} ${label}` },
                 icon(type), el("span", { text }));
    b.addEventListener("click", () => {
      Outbox.add({ event_id: uuid(), search_id: data.search_id, ...target, type, position,
                   timestamp: Date.now() / 1000, session_id: SESSION_ID }, b);
    });
    return b;
  });
}
const FEEDBACK = [["play", "Play"], ["like", "Like"], ["skip", "Skip"]];

// An artist or album hit: its name, what it is, and its top tracks (most popular first), each
// playable; Play / Like / Skip act on the entity itself.
function entityRow(data, hit, position) {
  const kind = hit.type === "artist" ? "Artist" : "Album";
  const meta = hit.type === "artist"
    ? [`${hit.recordings} song${hit.recordings === 1 ? "" : "s"}`]
    : [hit.artist, hit.year].filter((x) => x !== undefined && x !== null && x !== "");
  if (hit.match === "typo") meta.push("matched despite a typo");
  const tracks = el("ol", { class: "top-tracks" }, (hit.top_tracks || []).map((t) => el("li", { "data-track": t.track_id },
    feedbackButtons(data, { entity_id: hit.entity_id, track_id: t.track_id }, position, t.title, [["play", ""]])[0],
    el("span", { class: "tt-title", text: t.title }),
    hit.type === "album" ? null : el("span", { class: "hint", text: ` · ${t.album}` }))));
  const genres = el("div", { class: "genres" }, ...(hit.genres || []).slice(0, 4).map((g) => el("span", { class: "chip", text: g })));
  return el("li", { class: `hit entity e-${hit.type}`, "data-entity": hit.entity_id, "data-position": String(position) },
    el("div", { class: "pos", text: String(position) }),
    el("div", { class: "main" },
      el("div", { class: "title" }, el("span", { class: `kind k-${hit.type}`, text: kind }), document.createTextNode(` ${hit.name}`)),
      el("div", { class: "sub", text: meta.join(" · ") }),
      el("div", { class: "tags" }, genres),
      tracks),
    el("div", { class: "score", title: hit.match === "tracks" ? "its best track's ranker score" : "name match", text: fmtNum(hit.score, 3) }),
    el("div", { class: "actions" }, feedbackButtons(data, { entity_id: hit.entity_id }, position, hit.name, FEEDBACK)));
}

function resultRow(data, hit, position) {
  if (hit.type === "artist" || hit.type === "album") return entityRow(data, hit, position);
  const meta = [hit.artist, hit.album, hit.year].filter((x) => x !== undefined && x !== null && x !== "");
  const buttons = feedbackButtons(data, { track_id: hit.track_id }, position, hit.title, FEEDBACK);
  const found = el("div", { class: "found" }, el("span", { class: "hint", text: "found by" }),
                   ...(hit.retrievers || []).map((r) => el("span", { class: `badge r-${r}`, text: RETRIEVER_LABELS[r] || r })));
  const genres = el("div", { class: "genres" }, ...(hit.genres || []).slice(0, 4).map((g) => el("span", { class: "chip", text: g })));
  const li = el("li", { class: "hit", "data-track": hit.track_id, "data-position": String(position) },
    el("div", { class: "pos", text: String(position) }),
    el("div", { class: "main" },
      el("div", { class: "title", text: hit.title }),
      el("div", { class: "sub", text: meta.join(" · ") }),
      el("div", { class: "tags" }, genres, found)),
    el("div", { class: "score", title: "ranker score", text: fmtNum(hit.score, 3) }),
    el("div", { class: "actions" }, buttons));
  if (hit.features) {
    const rows = Object.entries(hit.features).map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: v === null ? "missing" : fmtNum(v, 4) })));
    li.append(el("details", { class: "features" }, el("summary", { text: `ranker features (${rows.length})` }),
                 el("table", { class: "kv" }, el("tbody", {}, rows))));
  }
  return li;
}

function renderDrawer(data) {
  const body = $("drawer-body");
  const d = data && data.debug;
  if (!d) {
    body.replaceChildren(el("p", { class: "hint", text: $("debug").checked ? "Press Search to see this query's debug information." : "Run a search with Debug on." }));
    return;
  }
  const probs = Object.entries(d.probabilities).sort((a, b) => b[1] - a[1]);
  const chosenKey = `${d.action.join("+")}@${d.budget}`;
  const maxP = probs.length ? probs[0][1] : 1;
  const explored = probs.length && d.propensity < maxP - 1e-12;
  const bar = (frac, cls) => { const s = el("span", { class: `bar ${cls || ""}` }); s.style.width = `${Math.max(1, 100 * frac)}%`; return s; };
  const maxT = Math.max(...Object.values(d.timings_ms), 0.001);
  body.replaceChildren(
    el("dl", { class: "facts" },
      el("dt", { text: "action" }), el("dd", {}, ...d.action.map((a) => el("span", { class: `badge r-${a}`, text: RETRIEVER_LABELS[a] || a })),
                                        el("span", { class: "hint", text: ` × ${d.budget} candidates` })),
      el("dt", { text: "propensity" }), el("dd", { text: `${fmtNum(d.propensity, 4)}${explored ? "  (exploring)" : "  (policy's top choice)"}` }),
      el("dt", { text: "policy" }), el("dd", { text: d.policy }),
      el("dt", { text: "models" }), el("dd", { text: `bandit ${d.bandit_version || "–"} · ranker ${d.ranker_version || "–"}` }),
      el("dt", { text: "candidates" }), el("dd", { text: Object.entries(d.candidates_per_retriever).map(([k, v]) => `${RETRIEVER_LABELS[k] || k} ${v}`).join(" · ") || "–" }),
      ...(d.failed_retrievers.length ? [el("dt", { text: "failed" }), el("dd", { class: "bad", text: d.failed_retrievers.join(", ") })] : [])),
    el("h3", { text: "Timings (ms)" }),
    el("div", { class: "bars" }, Object.entries(d.timings_ms)
      .sort((a, b) => STAGE_ORDER.indexOf(a[0]) - STAGE_ORDER.indexOf(b[0]))
      .map(([k, v]) => el("div", { class: "barrow" }, el("span", { class: "k", text: k }),
                          el("span", { class: "barbox" }, bar(v / maxT, k === "total" ? "total" : "")), el("span", { class: "v", text: fmtMs(v) })))),
    el("h3", { text: `Action probabilities (${probs.length} actions)` }),
    el("div", { class: "bars" }, probs.slice(0, 10).map(([k, p]) => el("div", { class: `barrow${k === chosenKey ? " chosen" : ""}` },
      el("span", { class: "k", text: k }), el("span", { class: "barbox" }, bar(p / maxP, k === chosenKey ? "chosen" : "")),
      el("span", { class: "v", text: fmtNum(p, 3) })))),
    el("h3", { text: "Context features" }),
    el("table", { class: "kv" }, el("tbody", {}, Object.entries(d.context).map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: fmtNum(v, 3) }))))));
}

// ---------------------------------------------------------------------------------------------
// suggest-as-you-type: session-aware; if the API has no /suggest (404) the box quietly stays a
// plain search box.
const Suggest = (() => {
  let available = true, timer = null, ctrl = null, items = [], active = -1;
  const box = () => $("suggestions");

  function hide() {
    clearTimeout(timer);
    if (ctrl) ctrl.abort();
    items = []; active = -1;
    box().hidden = true; box().replaceChildren();
    $("q").setAttribute("aria-expanded", "false");
  }

  function render(prefix) {
    const ul = box();
    ul.replaceChildren();
    if (!items.length) { hide(); return; }
    items.forEach((s, i) => {
      const text = s.text || "";
      const n = text.toLowerCase().startsWith(prefix.toLowerCase()) ? prefix.length : 0;
      const li = el("li", { role: "option", id: `sugg-${i}`, class: i === active ? "active" : "", "aria-selected": i === active ? "true" : "false" },
        el("span", { class: "s-text" }, el("b", { text: text.slice(0, n) }), text.slice(n)),
        s.kind ? el("span", { class: `s-kind k-${s.kind}`, text: s.kind }) : null);
      li.addEventListener("mousedown", (ev) => { ev.preventDefault(); choose(i); });
      ul.append(li);
    });
    ul.hidden = false;
    $("q").setAttribute("aria-expanded", "true");
  }

  function choose(i) {
    const s = items[i];
    if (!s) return;
    $("q").value = s.text;
    hide();
    runSearch(s.text);
  }

  async function fetch_(prefix) {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    const params = new URLSearchParams({ prefix, session_id: SESSION_ID, limit: String(SUGGEST_LIMIT) });
    let data;
    try {
      data = await api(`/suggest?${params}`, { signal: ctrl.signal });
    } catch (e) {
      if (e.name === "AbortError") return;
      if (e.status === 404 || e.status === 405) available = false;   // this API has no suggest
      hide();
      return;
    }
    if (typed() !== prefix) return;
    items = (data && Array.isArray(data.suggestions) ? data.suggestions : []).filter((s) => s && typeof s.text === "string");
    active = -1;
    render(prefix);
  }

  // What was typed, leading blanks dropped. A trailing space is kept: /suggest reads it as
  // "the last word is complete" ("taylor " completes to titles, not to "taylors").
  function typed() {
    return $("q").value.replace(/^\s+/, "");
  }

  function onInput() {
    clearTimeout(timer);
    const prefix = typed();
    if (!available || !prefix.trim() || prefix.length > SUGGEST_MAX_PREFIX) { hide(); return; }
    timer = setTimeout(() => fetch_(prefix), 80);
  }

  function onKey(ev) {
    if (box().hidden || !items.length) return;
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      active = (active + (ev.key === "ArrowDown" ? 1 : -1) + items.length + 1) % (items.length + 1);
      if (active === items.length) active = -1;
      render($("q").value.trim());
      $("q").setAttribute("aria-activedescendant", active >= 0 ? `sugg-${active}` : "");
    } else if (ev.key === "Enter" && active >= 0) {
      ev.preventDefault();
      choose(active);
    } else if (ev.key === "Escape") {
      hide();
    }
  }

  return { hide, onInput, onKey, isAvailable: () => available };
})();

// ---------------------------------------------------------------------------------------------
// learning view
const Learning = (() => {
  let timer = null, loading = false;
  const actionNames = [];   // stable colour per action across refreshes

  function colour(name) {
    if (!actionNames.includes(name)) actionNames.push(name);
    return Charts.colorFor(name, actionNames);
  }

  async function load() {
    if (loading) return;
    loading = true;
    const minutes = $("window").value;
    try {
      const data = await api(`/stats/learning?minutes=${minutes}&bins=60`);
      render(data);
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("updated").className = "hint";
    } catch (e) {
      $("updated").textContent = explain(e, "loading the learning stats");
      $("updated").className = "hint bad";
    } finally {
      loading = false;
    }
  }

  function kpi(label, value, note) {
    return el("div", { class: "kpi" }, el("div", { class: "kpi-label", text: label }),
              el("div", { class: "kpi-value", text: value }), el("div", { class: "kpi-note", text: note || "" }));
  }

  function render(data) {
    const a = data.activity, t = a.totals, binS = a.bin_minutes * 60;
    const x = a.bins.map((b) => b.start);
    const total = t.latency_ms.total;
    $("kpis").replaceChildren(
      kpi("Searches", t.searches.toLocaleString(), `in the last ${humanWindow(a.minutes)}`),
      kpi("Exploration rate", fmtPct(t.exploration_rate), `${t.explored.toLocaleString()} explored`),
      kpi("Reward rate", fmtNum(t.reward_rate, 3), `${t.rewarded.toLocaleString()} searches rewarded`),
      kpi("Feedback lag p50", fmtSecs(t.lag_p50_s), `p95 ${fmtSecs(t.lag_p95_s)} · n=${t.lag_n}`),
      kpi("Search latency p50", total ? `${fmtMs(total.p50)} ms` : "–", total ? `p99 ${fmtMs(total.p99)} ms` : ""),
      kpi("Serving", data.models.current.bandit || "–", `ranker ${data.models.current.ranker || "–"} · xr ${data.models.current.xr || "–"}`));

    // action share
    const acts = Object.entries(t.actions).filter(([, v]) => v.chosen > 0).sort((p, q) => q[1].chosen - p[1].chosen);
    const top = acts.slice(0, 9).map(([k]) => k);
    const stacks = top.map((k) => ({ name: k, color: colour(k), total: fmtPct(t.actions[k].share),
                                     values: a.bins.map((b) => (b.actions[k] ? b.actions[k].chosen : 0)) }));
    if (acts.length > top.length) {
      stacks.push({ name: "other", color: "#94a3b8", total: fmtPct(acts.slice(top.length).reduce((s, [, v]) => s + v.chosen, 0) / t.searches),
                    values: a.bins.map((b) => Object.entries(b.actions).filter(([k]) => !top.includes(k)).reduce((s, [, v]) => s + v.chosen, 0)) });
    }
    Charts.stacked($("chart-actions"), { x, binSeconds: binS, stacks });

    // reward rate per action
    const rewarded = Object.entries(t.actions).filter(([, v]) => v.rewarded > 0).sort((p, q) => q[1].rewarded - p[1].rewarded);
    const vals = rewarded.map(([, v]) => v.reward_rate);
    Charts.hbars($("chart-reward"), {
      rows: rewarded.slice(0, 10).map(([k, v]) => ({ label: k, value: Math.max(0, v.reward_rate), color: colour(k),
                                                     note: `${fmtNum(v.reward_rate, 3)} · n=${v.rewarded}` })),
      vmax: Math.max(1, ...vals), vfmt: (v) => fmtNum(v, 3),
      emptyText: "No search has been rewarded in this window yet: a search is rewarded when feedback for it arrives, or with 0 when its join window closes." });

    Charts.line($("chart-explore"), { x, binSeconds: binS, yfmt: (v) => `${Math.round(v * 100)}%`, ymax: 1,
      series: [{ name: "exploration rate", color: "#7c3aed", values: a.bins.map((b) => b.exploration_rate) }],
      emptyText: "No searches in this window yet." });

    Charts.line($("chart-lag"), { x, binSeconds: binS, yfmt: (v) => (v < 1 && v > 0 ? `${Math.round(v * 1000)} ms` : v < 600 ? `${+v.toFixed(1)} s` : `${+(v / 60).toFixed(1)} min`),
      series: [{ name: "mean lag", color: "#0891b2", values: a.bins.map((b) => b.lag_mean_s) },
               { name: "p95 lag", color: "#f59e0b", values: a.bins.map((b) => b.lag_p95_s) }],
      emptyText: "No rewarded feedback in this window yet." });

    const stages = Object.keys(t.latency_ms).sort((p, q) => idx(p) - idx(q));
    Charts.hbars($("chart-stages"), {
      rows: stages.map((s) => ({ label: s, values: [t.latency_ms[s].p50, t.latency_ms[s].p95, t.latency_ms[s].p99] })),
      groups: [{ name: "p50", color: "#2563eb" }, { name: "p95", color: "#f59e0b" }, { name: "p99", color: "#dc2626" }],
      vfmt: fmtMs, emptyText: "No searches in this window yet." });

    Charts.line($("chart-latency"), { x, binSeconds: binS, yfmt: (v) => (v >= 10 ? v.toFixed(0) : fmtMs(v)),
      series: ["p50", "p95", "p99"].map((q, i) => ({ name: `${q} total`, color: ["#2563eb", "#f59e0b", "#dc2626"][i],
                                                       values: a.bins.map((b) => (b.latency_ms.total ? b.latency_ms.total[q] : null)) })),
      emptyText: "No searches in this window yet." });

    renderModels(data.models);
    renderReplay(data.replay);
  }

  const idx = (s) => { const i = STAGE_ORDER.indexOf(s); return i < 0 ? STAGE_ORDER.length - 1.5 : i; };

  function humanWindow(m) { return m % 60 === 0 ? (m === 60 ? "hour" : `${m / 60} hours`) : `${m} minutes`; }

  function flat(report, prefix = "", out = []) {
    for (const [k, v] of Object.entries(report || {})) {
      const name = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flat(v, name, out);
      else if (typeof v === "number") out.push(`${name} ${Number.isInteger(v) ? v : v.toFixed(4)}`);
      else if (typeof v === "string" || typeof v === "boolean") out.push(`${name} ${v}`);
    }
    return out;
  }

  function renderModels(m) {
    const cur = el("div", { class: "versions" }, Object.entries(m.current).map(([k, v]) =>
      el("span", { class: "version" }, el("span", { class: "hint", text: k }), el("b", { text: v || "none" }))));
    if (!m.decisions.length) {
      $("models").replaceChildren(cur, el("p", { class: "hint", text: "No promotion or refusal decisions recorded yet (models/decisions.jsonl)." }));
      return;
    }
    const rows = m.decisions.map((d) => el("tr", {},
      el("td", { class: "nowrap", text: d.ts ? new Date(d.ts * 1000).toLocaleString() : "–" }),
      el("td", { text: d.kind }), el("td", { text: d.version || "–" }),
      el("td", {}, el("span", { class: `pill ${d.decision === "promoted" ? "ok" : d.decision === "refused" ? "bad" : ""}`, text: d.decision })),
      el("td", { class: "numbers", text: flat(d.report).slice(0, 8).join(" · ") })));
    $("models").replaceChildren(cur, el("table", { class: "decisions" },
      el("thead", {}, el("tr", {}, ["when", "model", "version", "decision", "gate numbers"].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)));
  }

  function renderReplay(r) {
    if (!r) {
      $("replay").replaceChildren(el("p", { class: "hint", text: "No replay report yet. Write one with: ltrr replay --log <data_dir>/logs --policy bandit:latest --report <data_dir>/reports/run1" }));
      return;
    }
    $("replay").replaceChildren(
      el("p", { class: "hint", text: `${r.name} · written ${new Date(r.modified * 1000).toLocaleString()}` }),
      el("div", { class: "replay-grid" }, r.images.map((im) => el("figure", {}, el("img", { src: im.url, alt: im.title, loading: "lazy" }),
                                                                  el("figcaption", { text: im.title })))));
  }

  function start() { stop(); load(); if ($("autorefresh").checked) timer = setInterval(load, 10000); }
  function stop() { clearInterval(timer); timer = null; }
  return { load, start, stop };
})();

// ---------------------------------------------------------------------------------------------
// health dot, views, wiring
async function checkHealth() {
  const dot = $("health");
  try {
    const h = await api("/health");
    dot.className = `health ${h.status === "ok" ? "ok" : "warn"}`;
    dot.title = h.status === "ok" ? `healthy · ${h.catalog_tracks.toLocaleString()} tracks · ${h.retrievers.join(", ")}`
                                  : "degraded: Redis is unreachable (feedback is queued here until it is back)";
  } catch (e) {
    // /health answers 503 when degraded (Redis down or the worker died): up, but not healthy.
    dot.className = `health ${e.status === 503 ? "warn" : "bad"}`;
    dot.title = e.status === 503 ? "degraded: Redis or the feedback worker is down (feedback is queued here until it is back)"
                                 : "the API cannot be reached";
  }
}

function route() {
  const view = location.hash === "#learning" ? "learning" : "search";
  $("view-search").hidden = view !== "search";
  $("view-learning").hidden = view !== "learning";
  $("tab-search").classList.toggle("active", view === "search");
  $("tab-learning").classList.toggle("active", view === "learning");
  $("tab-search").setAttribute("aria-selected", String(view === "search"));
  $("tab-learning").setAttribute("aria-selected", String(view === "learning"));
  if (view === "learning") Learning.start(); else Learning.stop();
}

function init() {
  $("api-key").value = Key.get();
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    Key.set($("api-key").value.trim());
    showBanner("", "");
    Outbox.keyChanged();
    if (location.hash === "#learning") Learning.load();
  });
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });
  $("q").addEventListener("input", Suggest.onInput);
  $("q").addEventListener("keydown", Suggest.onKey);
  $("q").addEventListener("blur", () => setTimeout(Suggest.hide, 120));
  $("debug").checked = sessionStorage.getItem("ltrr.debug") === "1";
  $("drawer").hidden = !$("debug").checked;
  $("debug").addEventListener("change", () => {
    sessionStorage.setItem("ltrr.debug", $("debug").checked ? "1" : "0");
    $("drawer").hidden = !$("debug").checked;
    document.body.classList.toggle("debugging", $("debug").checked);
    renderDrawer(state.search);
  });
  document.body.classList.toggle("debugging", $("debug").checked);
  $("window").addEventListener("change", Learning.load);
  $("refresh").addEventListener("click", Learning.load);
  $("autorefresh").addEventListener("change", () => (location.hash === "#learning" ? Learning.start() : null));
  window.addEventListener("hashchange", route);
  // A reload of the tab shows the last results again, so queued clicks keep their context.
  try {
    const last = JSON.parse(sessionStorage.getItem("ltrr.last_search") || "null");
    if (last && Array.isArray(last.results)) {
      state.search = last; state.lastQuery = last.query; $("q").value = last.query;
      renderResults(last, null); renderDrawer(last);
    }
  } catch (_) { sessionStorage.removeItem("ltrr.last_search"); }
  route();
  checkHealth();
  setInterval(checkHealth, 15000);
  $("q").focus();
}

// For tests and the curious: what this tab has queued and delivered.
window.ltrr = { sessionId: SESSION_ID, outbox: Outbox, suggest: Suggest, state };
init();
