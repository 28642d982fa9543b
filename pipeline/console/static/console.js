// The activity console: a client of the read API (docs/store.md), nothing more.
// Every piece of text from the API is user content (message bodies are written by customers), so the DOM is
// built with createElement and textContent only, never innerHTML; the Content-Security-Policy forbids inline
// script and every other origin as a second line of defence.
"use strict";

const KEY_STORAGE = "delivery-console-key"; // sessionStorage: gone when the tab closes, never in a URL
const STATUSES = ["accepted", "sent", "delivered", "read", "played", "failed"];
let config = { trace_url: null, meanings: {} };

// --- DOM helpers ----------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function notice(text) {
  const box = document.getElementById("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

function badge(status) {
  const value = status || "accepted";
  return el("span", { class: `badge ${value}`, text: value });
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString(undefined, { hour12: false });
}

function duration(fromIso, toIso) {
  const ms = new Date(toIso) - new Date(fromIso);
  if (!Number.isFinite(ms) || ms <= -1000) return "";
  if (ms < 0) return "+<1 s"; // Meta's status times are whole seconds; the acceptance time is not
  if (ms < 1000) return `+${ms} ms`;
  if (ms < 120000) return `+${(ms / 1000).toFixed(1)} s`;
  if (ms < 7200000) return `+${Math.round(ms / 60000)} min`;
  return `+${(ms / 3600000).toFixed(1)} h`;
}

function seconds(value) {
  if (value === null || value === undefined) return "—";
  return value < 120 ? `${value.toFixed(1)} s` : `${(value / 60).toFixed(1)} min`;
}

function percent(value) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)} %`;
}

function isoFromLocal(value) {
  return value ? new Date(value).toISOString() : "";
}

// --- the API ------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, params) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (!key) throw new ApiError(401, "Enter an API key to start.");
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== "" && value !== null && value !== undefined) url.searchParams.set(name, value);
  }
  let response;
  try {
    response = await fetch(url, { headers: { "X-API-Key": key, Accept: "application/json" }, credentials: "omit" });
  } catch (err) {
    throw new ApiError(0, "The read API cannot be reached. Is the store stage running? Try again in a moment.");
  }
  const body = await response.json().catch(() => null);
  if (response.ok) return body;
  const message = body && body.error && body.error.message ? body.error.message : `HTTP ${response.status}`;
  throw new ApiError(response.status, message);
}

function failure(err, what) {
  if (err.status === 401 || err.status === 403) {
    sessionStorage.removeItem(KEY_STORAGE);
    notice("That API key was refused: it is wrong, expired or revoked. Enter a valid key.");
    keyForm();
    return;
  }
  if (err.status === 404) {
    show(el("section", { class: "card" }, el("h2", { text: `${what} not found` }),
      el("p", { text: "Nothing with that id is visible to this key. Check the id, or use a key for that business number." }),
      el("p", {}, el("a", { href: "#/search", text: "Back to search" }))));
    return;
  }
  notice(`${what}: ${err.message}`);
}

// --- the key ---------------------------------------------------------------------------------------------------

function keyForm() {
  const input = el("input", { id: "api-key", type: "password", autocomplete: "off", required: true });
  const form = el("form", {
    class: "card", "aria-labelledby": "key-title",
    onsubmit: (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      notice("");
      route();
    },
  },
  el("h2", { id: "key-title", text: "Enter your API key" }),
  el("p", { class: "muted", text: "The key stays in this tab only (session storage) and is sent as a header. You see exactly what it may see." }),
  el("label", { for: "api-key", text: "API key" }), input,
  el("p", {}, el("button", { type: "submit", class: "primary", text: "Open the console" })));
  show(form);
  input.focus();
}

// --- search ------------------------------------------------------------------------------------------------------

function field(id, labelText, control) {
  control.id = id;
  control.name = id;
  return el("div", {}, el("label", { for: id, text: labelText }), control);
}

async function searchPage(params) {
  const query = el("input", { type: "search", value: params.get("q") || "", placeholder: "req_…, wamid…, +1650…, or words" });
  const number = el("input", { inputmode: "numeric", value: params.get("phone_number_id") || "" });
  const status = el("select", {}, el("option", { value: "", text: "any" }),
    STATUSES.map((s) => el("option", { value: s, text: s, selected: params.get("status") === s })));
  const since = el("input", { type: "datetime-local", value: params.get("since_local") || "" });
  const until = el("input", { type: "datetime-local", value: params.get("until_local") || "" });
  const form = el("form", {
    class: "card filters", role: "search",
    onsubmit: (event) => {
      event.preventDefault();
      const next = new URLSearchParams();
      for (const [name, control] of [["q", query], ["phone_number_id", number], ["status", status],
        ["since_local", since], ["until_local", until]]) {
        if (control.value) next.set(name, control.value.trim());
      }
      window.location.hash = `#/search?${next}`;
    },
  },
  el("div", { class: "wide" }, el("label", { for: "q", text: "Request id, wamid, recipient number or text" }), query),
  field("phone_number_id", "Business number", number), field("status", "Status", status),
  field("since", "From", since), field("until", "Until", until),
  el("div", {}, el("button", { type: "submit", class: "primary", text: "Search" })));
  query.id = "q";
  query.name = "q";
  const results = el("section", { class: "card", "aria-live": "polite" });
  show(form, results);
  await runSearch(params, results);
}

function searchParams(params) {
  const text = (params.get("q") || "").trim();
  const out = {
    phone_number_id: params.get("phone_number_id"), status: params.get("status"),
    since: isoFromLocal(params.get("since_local")), until: isoFromLocal(params.get("until_local")),
  };
  if (/^wamid\./.test(text)) out.wamid = text;
  else if (/^\+?[\d\s().-]{7,}$/.test(text)) out.to = text;
  else if (text) out.q = text;
  return out;
}

async function runSearch(params, results, cursor) {
  const text = (params.get("q") || "").trim();
  if (!cursor && /^req_[A-Za-z0-9]+$/.test(text)) {
    window.location.hash = `#/message/${encodeURIComponent(text)}`;
    return;
  }
  results.replaceChildren(el("p", { class: "muted", text: "Searching…" }));
  let page;
  try {
    page = await api("/v1/messages", { ...searchParams(params), cursor });
  } catch (err) {
    results.replaceChildren();
    failure(err, "Search");
    return;
  }
  results.replaceChildren(el("h2", { text: "Messages" }));
  if (!page.messages.length) {
    results.append(el("p", { class: "empty", text: "No message matches. Widen the time range, clear the status filter, or search for fewer words." }));
    return;
  }
  const rows = page.messages.map((m) => el("tr", {},
    el("td", { "data-label": "Status" }, badge(m.status)),
    el("td", { "data-label": "Request" }, el("a", { href: `#/message/${encodeURIComponent(m.request_id)}`, text: m.request_id })),
    el("td", { "data-label": "To" }, el("a", { href: `#/contact/${encodeURIComponent(m.wa_id)}`, text: m.to })),
    el("td", { "data-label": "Type", text: m.type }),
    el("td", { "data-label": "Text", class: "text", text: m.text || "" }),
    el("td", { "data-label": "Accepted", text: when(m.accepted_at) })));
  results.append(el("table", {},
    el("thead", {}, el("tr", {}, ["Status", "Request", "To", "Type", "Text", "Accepted"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows)));
  if (page.next_cursor) {
    results.append(el("p", {}, el("button", {
      type: "button", class: "secondary", text: "Older messages",
      onclick: () => runSearch(params, results, page.next_cursor),
    })));
  }
}

// --- one message --------------------------------------------------------------------------------------------------

function errorBox(error) {
  if (!error) return null;
  const meaning = config.meanings[error.class] || "";
  return el("div", { class: "error-box" },
    el("strong", { text: `Meta error ${error.code ?? "—"}: ${error.title || "no title"}` }),
    meaning ? el("p", { text: meaning }) : null,
    error.message ? el("p", { class: "muted", text: error.message }) : null);
}

function traceLink(traceId) {
  if (!traceId || !config.trace_url) return traceId ? el("span", { text: traceId }) : el("span", { text: "—" });
  const href = config.trace_url.replace("{trace_id}", encodeURIComponent(traceId));
  return el("a", { href, rel: "noopener noreferrer", target: "_blank", text: traceId });
}

async function messagePage(requestId) {
  let m;
  try {
    m = await api(`/v1/messages/${encodeURIComponent(requestId)}`);
  } catch (err) {
    failure(err, "Message");
    return;
  }
  const accepted = m.accepted_at;
  const timeline = el("ol", { class: "timeline" }, m.timeline.map((step) => el("li", {},
    el("span", {}, badge(step.status)),
    el("span", {}, when(step.at), step.pricing_category ? el("span", { class: "muted", text: ` · ${step.pricing_category}` }) : null,
      step.error ? errorBox(step.error) : null),
    el("span", { class: "muted", text: step.status === "accepted" ? "" : duration(accepted, step.at) }))));
  show(el("section", { class: "card" },
    el("h2", {}, "Message ", badge(m.status)),
    el("dl", { class: "facts" },
      el("dt", { text: "Request id" }), el("dd", { text: m.request_id }),
      el("dt", { text: "Business number" }), el("dd", { text: m.phone_number_id }),
      el("dt", { text: "To" }), el("dd", {}, el("a", { href: `#/contact/${encodeURIComponent(m.wa_id)}`, text: `${m.to} (conversation)` })),
      el("dt", { text: "Type" }), el("dd", { text: m.type }),
      el("dt", { text: "Text" }), el("dd", { text: m.text || "—" }),
      el("dt", { text: "Outcome" }), el("dd", { text: m.outcome || "not yet sent" }),
      el("dt", { text: "wamid" }), el("dd", { text: m.wamid || "—" }),
      el("dt", { text: "Trace" }), el("dd", {}, traceLink(m.trace_id))),
    errorBox(m.error),
    el("h3", { text: "Timeline" }), timeline));
}

// --- a conversation ---------------------------------------------------------------------------------------------

async function conversationPage(waId) {
  const chat = el("div", { class: "chat", "aria-live": "polite" });
  const older = el("p", {});
  show(el("section", { class: "card" }, el("h2", { text: `Conversation with ${waId}` }), older, chat));
  const seen = new Map();
  async function load(before) {
    let page;
    try {
      page = await api(`/v1/contacts/${encodeURIComponent(waId)}/messages`, { before, limit: 50 });
    } catch (err) {
      failure(err, "Conversation");
      return;
    }
    const bubbles = page.messages.slice().reverse().map((m) => {
      if (m.wamid) seen.set(m.wamid, m);
      const anchor = m.wamid ? `msg-${m.wamid.replace(/[^A-Za-z0-9_-]/g, "")}` : null;
      const answered = m.reply_to ? seen.get(m.reply_to) : null;
      return el("article", { class: `bubble ${m.direction}`, id: anchor, tabindex: "-1", "aria-label": `${m.direction} message` },
        m.reply_to ? el("div", { class: "reply" }, "↪ reply to ",
          el("a", { href: `#/contact/${encodeURIComponent(waId)}?focus=${encodeURIComponent(m.reply_to)}`, "data-reply-to": m.reply_to,
            text: answered ? (answered.text || answered.type) : "an earlier message" })) : null,
        el("div", { text: m.text || `[${m.type}]` }),
        el("div", { class: "meta" }, `${m.direction === "outbound" ? "sent by the business" : "from the customer"} · ${when(m.at)} `,
          m.direction === "outbound" ? badge(m.status) : null,
          m.direction === "outbound" ? el("a", { href: `#/message/${encodeURIComponent(m.id)}`, text: " details" }) : null));
    });
    chat.prepend(...bubbles);
    older.replaceChildren(page.next_cursor ? el("button", {
      type: "button", class: "secondary", text: "Older messages", onclick: () => load(page.next_cursor),
    }) : el("span", { class: "muted", text: page.messages.length || before ? "Start of the conversation." : "" }));
    if (!before && !page.messages.length) chat.append(el("p", { class: "empty", text: "No messages with this contact yet." }));
    for (const link of chat.querySelectorAll("a[data-reply-to]")) {
      link.onclick = (event) => {
        const target = document.getElementById(`msg-${link.dataset.replyTo.replace(/[^A-Za-z0-9_-]/g, "")}`);
        if (target) {
          event.preventDefault();
          target.scrollIntoView({ block: "center" });
          target.focus();
        }
      };
    }
  }
  await load();
}

// --- the overview ------------------------------------------------------------------------------------------------

function barChart(title, rows, maxValue) {
  const width = 420;
  const rowHeight = 30;
  const labelWidth = 110;
  const height = rows.length * rowHeight + 10;
  const top = Math.max(maxValue, 1);
  return svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title },
    svg("title", {}, title),
    rows.map((row, i) => {
      const y = i * rowHeight + 5;
      const barWidth = Math.round(((width - labelWidth - 60) * row.value) / top);
      return svg("g", {},
        svg("text", { x: 0, y: y + 17 }, row.label),
        svg("rect", { class: "track", x: labelWidth, y, width: width - labelWidth - 60, height: 22, rx: 3 }),
        svg("rect", { class: `bar-${row.kind}`, x: labelWidth, y, width: barWidth, height: 22, rx: 3 }),
        svg("text", { x: width - 52, y: y + 17 }, String(row.value)));
    }));
}

async function overviewPage(params) {
  const number = el("input", { inputmode: "numeric", value: params.get("phone_number_id") || "" });
  const since = el("input", { type: "datetime-local", value: params.get("since_local") || "" });
  const until = el("input", { type: "datetime-local", value: params.get("until_local") || "" });
  const form = el("form", {
    class: "card filters",
    onsubmit: (event) => {
      event.preventDefault();
      const next = new URLSearchParams();
      for (const [name, control] of [["phone_number_id", number], ["since_local", since], ["until_local", until]]) {
        if (control.value) next.set(name, control.value.trim());
      }
      window.location.hash = `#/overview?${next}`;
    },
  }, field("ov-number", "Business number (empty: all of the key's)", number),
  field("ov-since", "From (default: 7 days ago)", since), field("ov-until", "Until (default: now)", until),
  el("div", {}, el("button", { type: "submit", class: "primary", text: "Show" })));
  const body = el("section", { "aria-live": "polite" });
  show(form, body);
  let a;
  try {
    a = await api("/v1/analytics", {
      phone_number_id: params.get("phone_number_id"),
      since: isoFromLocal(params.get("since_local")), until: isoFromLocal(params.get("until_local")),
    });
  } catch (err) {
    failure(err, "Overview");
    return;
  }
  const c = a.counts;
  const funnel = ["accepted", "sent", "delivered", "read", "failed"].map((k) => ({ label: k, value: c[k] || 0, kind: k }));
  const errors = a.top_errors.map((e) => ({ label: String(e.code), value: e.count, kind: "error" }));
  body.append(el("div", { class: "charts" },
    el("div", { class: "card" }, el("h2", { text: "Delivery funnel" }),
      el("p", { class: "muted", text: `${when(a.since)} – ${when(a.until)}` }),
      barChart("Delivery funnel", funnel, c.accepted || 0),
      el("p", {}, `Delivered ${percent(a.rates.delivered)} · read ${percent(a.rates.read)} · failed ${percent(a.rates.failed)}`)),
    el("div", { class: "card" }, el("h2", { text: "Response rate" }),
      el("p", { class: "big", text: percent(a.response.rate) }),
      el("p", { class: "muted", text: `${a.response.answered} of ${c.accepted} messages answered within ${a.response.window_hours} h; median reply after ${seconds(a.response.median_seconds)}.` }),
      el("p", {}, `Median time to delivered ${seconds(a.median_seconds.to_delivered)}, to read ${seconds(a.median_seconds.to_read)}.`)),
    el("div", { class: "card" }, el("h2", { text: "Top error codes" }),
      errors.length ? barChart("Top error codes", errors, Math.max(...errors.map((e) => e.value)))
        : el("p", { class: "empty", text: "No errors in this range." }),
      el("ul", {}, a.top_errors.map((e) => el("li", { text: `${e.code}: ${e.title || ""} (${e.count})` }))))));
}

// --- routing -------------------------------------------------------------------------------------------------------

async function route() {
  const hash = window.location.hash || "#/search";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === (parts[0] || "search")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!sessionStorage.getItem(KEY_STORAGE)) {
    keyForm();
    return;
  }
  if (parts[0] === "message" && parts[1]) await messagePage(parts[1]);
  else if (parts[0] === "contact" && parts[1]) await conversationPage(parts[1]);
  else if (parts[0] === "overview") await overviewPage(params);
  else await searchPage(params);
  const focus = params.get("focus");
  const target = focus && document.getElementById(`msg-${focus.replace(/[^A-Za-z0-9_-]/g, "")}`);
  const main = document.getElementById("main");
  if (target) target.focus();
  else if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });  // keep a field the page focused
}

async function start() {
  try {
    const response = await fetch("config.json", { credentials: "omit" });
    if (response.ok) config = await response.json();
  } catch (err) {
    // The console still works without trace links and error meanings.
  }
  document.getElementById("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    notice("");
    keyForm();
  });
  window.addEventListener("hashchange", () => { notice(""); route(); });
  route();
}

start();
