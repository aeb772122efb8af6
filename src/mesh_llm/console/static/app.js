"use strict";
// The mesh-llm console. Status arrives only over SSE (GET /api/events); chat streams from
// POST /api/chat. The view functions are pure (status in, plain data out) and accept any
// partial status, so a missing field shows as "–" instead of breaking the page.

// ---------- pure helpers ----------

const ROLES = ["host", "worker", "client"];

function gb(bytes) {
  const n = Number(bytes);
  return Number.isFinite(n) && n > 0 ? (n / 1e9).toFixed(1) + " GB" : "0 GB";
}

function shortId(id) {
  return id ? String(id).slice(0, 8) : "?";
}

function percent(share) {
  return Math.round(share * 100) + "%";
}

function list(x) {
  return Array.isArray(x) ? x : [];
}

function capitalize(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

/** The fraction of the model a node holds: plan.tensor_split is host first, then workers. */
function shareOf(plan, id) {
  if (!plan || !id || plan.mode === "waiting") return null;
  const order = [plan.host, ...list(plan.workers)];
  const index = order.indexOf(id);
  if (index < 0) return null;
  const share = Number(list(plan.tensor_split)[index]);
  if (Number.isFinite(share)) return share;
  return plan.mode === "solo" && index === 0 ? 1 : null;
}

/** This node and its peers as the diagram shows them: {host, workers, clients, links}. */
function meshView(s) {
  s = s || {};
  const plan = s.plan && typeof s.plan === "object" ? s.plan : null;
  const me = { id: s.node_id || "", role: s.role, vram_bytes: s.vram_bytes,
               models: s.model ? [s.model] : [], rtt_ms: null, self: true };
  const seen = new Set([me.id]);
  const nodes = [me];
  for (const p of list(s.peers)) {
    if (!p || typeof p !== "object" || !p.id || seen.has(p.id)) continue;
    seen.add(p.id);
    nodes.push({ ...p, self: false });
  }
  const hostId = s.host || (plan && plan.host) || (nodes.find((n) => n.role === "host") || {}).id;
  const inSplit = new Set(plan && plan.mode === "split" ? list(plan.workers) : []);
  const all = nodes.map((n) => {
    let role = ROLES.includes(n.role) ? n.role : "worker";
    if (n.id && n.id === hostId && role !== "client") role = "host";
    return { id: n.id || "", role, self: n.self,
             vram_bytes: role === "client" ? 0 : Number(n.vram_bytes) || 0,
             models: list(n.models), rtt_ms: n.rtt_ms, share: shareOf(plan, n.id) };
  });
  const host = all.find((n) => n.id && n.id === hostId && n.role === "host")
    || all.find((n) => n.role === "host") || null;
  const view = { hostId: hostId || null, host, workers: [], clients: [], links: [] };
  for (const node of all) {
    if (node === host) continue;
    if (node.role === "client") {
      view.clients.push(node);
      view.links.push({ kind: "http", from: node.id, to: hostId || null,
                        label: "QUIC · HTTP", note: "API tunnel" });
    } else {
      view.workers.push(node);
      const serving = inSplit.has(node.id);
      view.links.push({ kind: "rpc", from: hostId || null, to: node.id, label: "QUIC · RPC",
                        note: serving ? "layers " + percent(node.share || 0) : "standby",
                        serving });
    }
  }
  return view;
}

/** The models of a multi-model status; [] when the mesh serves one (today's diagram). */
function modelGroups(s) {
  const models = list(s && s.models).filter((m) => m && typeof m === "object");
  return models.length > 1 ? models : [];
}

/** Node ids from a list of ids or of {id} objects. */
function idsOf(x) {
  return list(x).map((n) => (n && typeof n === "object" ? n.id : n))
    .filter((id) => typeof id === "string" && id);
}

/** A multi-model mesh as the diagram shows it: one group per model (its host, its
 *  workers, the RPC links between them; a node serving several models shows in each),
 *  the clients (their API tunnel routes by model), and nodes in no group. */
function groupsView(s) {
  s = s || {};
  const nodes = new Map();
  nodes.set(s.node_id || "", { id: s.node_id || "", role: s.is_client ? "client" : s.role,
                               vram_bytes: s.vram_bytes, models: s.model ? [s.model] : [],
                               rtt_ms: null, self: true });
  for (const p of list(s.peers)) {
    if (!p || typeof p !== "object" || !p.id || nodes.has(p.id)) continue;
    nodes.set(p.id, { ...p, self: false });
  }
  const placed = new Set();
  const cardOf = (id, role, plan) => {
    placed.add(id);
    const n = nodes.get(id) || { id, self: false };
    return { id, role, self: !!n.self, vram_bytes: Number(n.vram_bytes) || 0,
             models: list(n.models), rtt_ms: n.rtt_ms, share: shareOf(plan, id) };
  };
  const defaultModel = typeof s.default_model === "string" ? s.default_model : null;
  const groups = modelGroups(s).map((m) => {
    const plan = m.plan && typeof m.plan === "object" ? m.plan : null;
    const hostId = (typeof m.host === "string" && m.host) || (plan && plan.host) || null;
    const inSplit = new Set(plan && plan.mode === "split" ? idsOf(plan.workers) : []);
    const members = [...new Set([hostId, ...idsOf(plan && plan.workers), ...idsOf(m.nodes)])]
      .filter((id) => id && id !== hostId);
    const host = hostId ? cardOf(hostId, "host", plan) : null;
    const workers = members.map((id) => cardOf(id, "worker", plan));
    const links = workers.map((w) => ({
      kind: "rpc", from: hostId, to: w.id, label: "QUIC · RPC", serving: inSplit.has(w.id),
      note: inSplit.has(w.id) ? "layers " + percent(w.share || 0) : "standby" }));
    const name = typeof m.name === "string" && m.name ? m.name : "?";
    const rpm = Number(m.requests_per_min);
    return { name, fingerprint: typeof m.fingerprint === "string" ? m.fingerprint : "",
             ready: m.ready === true, requestsPerMin: Number.isFinite(rpm) ? rpm : null,
             isDefault: !!defaultModel && (defaultModel === name || defaultModel === m.fingerprint),
             plan: plan ? planText({ plan }) : "–",
             view: { hostId, host, workers, clients: [], links } };
  });
  const clients = [];
  const others = [];
  for (const n of nodes.values()) {
    if (!n.id || placed.has(n.id)) continue;
    const client = n.role === "client";
    const node = { id: n.id, role: client ? "client" : "worker", self: n.self,
                   vram_bytes: client ? 0 : Number(n.vram_bytes) || 0, models: list(n.models),
                   rtt_ms: n.rtt_ms, share: null };
    (client ? clients : others).push(node);
  }
  const links = clients.map((c) => ({ kind: "http", from: c.id, to: null,
                                      label: "QUIC · HTTP", note: "API tunnel · by model" }));
  return { groups, clients, others, links };
}

function nodeCount(s) {
  const v = meshView(s);
  return (v.host ? 1 : 0) + v.workers.length + v.clients.length;
}

/** What the mesh is doing, in words. */
function statusLine(s) {
  if (!s || typeof s !== "object") return "Connecting…";
  const plan = s.plan && typeof s.plan === "object" ? s.plan : null;
  const n = nodeCount(s);
  const running = `Running · ${n} node${n === 1 ? "" : "s"} · ${gb(s.mesh_vram_bytes)}`;
  if (s.state === "stopping") return "Stopping…";
  if (s.is_client || s.role === "client") {
    if (!s.host) return "Waiting for host";
    return s.state === "running" ? running : `Connected to host ${shortId(s.host)}`;
  }
  switch (s.state) {
    case "running": return running;
    case "loading": return `Loading ${s.model || "the model"}…`;
    case "waiting":
      if (plan && plan.reason) return capitalize(plan.reason);
      return s.host ? "Waiting" : "Waiting for host";
    case "starting": return "Starting…";
    default: return s.state ? capitalize(String(s.state)) : "Connecting…";
  }
}

/** The plan in one line: solo, split with shares, or waiting. */
function planText(s) {
  const plan = s && s.plan;
  if (!plan || typeof plan !== "object") return s && s.host && !s.is_host ? "set by the host" : "–";
  if (plan.mode === "solo") return "solo: the whole model on the host";
  if (plan.mode === "split") {
    const shares = list(plan.tensor_split).map(Number).filter(Number.isFinite).map(percent)
      .join(" / ");
    const nodes = 1 + list(plan.workers).length;
    return `split over ${nodes} nodes` + (shares ? ` (${shares})` : "");
  }
  return plan.reason || String(plan.mode || "–");
}

function shellWord(word) {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : "'" + String(word).replace(/'/g, "'\\''") + "'";
}

/** The model this mesh serves: this node's, else the one the host announces. */
function modelName(s) {
  if (!s) return null;
  const hostPeer = list(s.peers).find((p) => p && p.id === s.host) || {};
  return s.model || list(hostPeer.models)[0] || null;
}

/** The commands that add a node to this mesh. */
function joinCommands(s) {
  s = s || {};
  const token = s.token || "TOKEN";
  const clientInvite = (s.invites && s.invites.client) || token;
  const model = modelName(s) || "MODEL";
  return {
    node: `mesh-llm --model ${shellWord(model)} --join ${shellWord(token)}`,
    client: `mesh-llm --client --join ${shellWord(clientInvite)}`,
  };
}

/** LAN discovery: on (the mesh's tag, members seen) or how to turn it on. */
function lanText(s) {
  const lan = s && s.mdns;
  if (!lan) {
    return "LAN discovery is off: start nodes with --mdns to find each other on the local " +
      "network (mesh-llm discover lists the meshes there).";
  }
  const seen = list(lan.members_seen).length;
  return `LAN discovery is on (--mdns, tag ${lan.tag || "–"}): ${seen} member(s) of this ` +
    "mesh seen on the local network.";
}

function apiUrl(s, hostname) {
  if (!s || !s.api_port) return "–";
  return `http://${hostname || "127.0.0.1"}:${s.api_port}/v1`;
}

/** The chat's choices from GET /v1/models (OpenAI's shape, with the mesh's `meta` or
 *  llama-server's own one-model list): [{id, label, ready, fingerprint, isDefault}]. */
function modelChoices(listing) {
  const data = listing && typeof listing === "object" ? list(listing.data) : [];
  const seen = new Set();
  const out = [];
  for (const m of data) {
    if (!m || typeof m !== "object" || typeof m.id !== "string" || !m.id || seen.has(m.id)) {
      continue;
    }
    seen.add(m.id);
    const meta = m.meta && typeof m.meta === "object" ? m.meta : {};
    const ready = meta.ready !== false;
    out.push({ id: m.id, label: m.id + (ready ? "" : " (not ready)"), ready,
               fingerprint: typeof meta.fingerprint === "string" ? meta.fingerprint : "",
               isDefault: meta.default === true });
  }
  return out;
}

/** Which choice the picker shows: the viewer's own pick while it is offered, else the
 *  mesh's default model (by name, any case, or fingerprint), else the first. */
function chosenModel(choices, picked, defaultModel) {
  if (picked && choices.some((c) => c.id === picked)) return picked;
  const want = typeof defaultModel === "string" ? defaultModel.toLowerCase() : "";
  const byDefault = want && choices.find((c) => c.id.toLowerCase() === want
                                          || c.fingerprint.toLowerCase() === want);
  return (byDefault || choices.find((c) => c.isDefault) || choices[0] || { id: "" }).id;
}

/** What, in the status, may change the model list: refetch /v1/models when it does. */
function modelsKey(s) {
  s = s || {};
  return JSON.stringify([list(s.models).map((m) => m && [m.name, m.ready]), s.model || null,
                         s.host || null, !!s.llama_ready, s.state || null,
                         s.default_model || null]);
}

/** Split a growing text/event-stream buffer into complete `data:` payloads and the rest. */
function sseData(buffer) {
  const blocks = buffer.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  const data = [];
  for (const block of blocks) {
    const lines = block.split(/\r?\n/).filter((l) => l.startsWith("data:"));
    if (lines.length) data.push(lines.map((l) => l.slice(5).replace(/^ /, "")).join("\n"));
  }
  return { data, rest };
}

function timingsText(t) {
  if (!t || typeof t !== "object") return "";
  const parts = [];
  if (t.predicted_n) parts.push(`${t.predicted_n} tokens`);
  if (t.predicted_per_second) parts.push(`${Number(t.predicted_per_second).toFixed(1)} tok/s`);
  if (t.draft_n) parts.push(`draft ${t.draft_n_accepted || 0}/${t.draft_n} accepted`);
  return parts.join(" · ");
}

// ---------- DOM ----------

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function nodeCard(n, meshModel) {
  const label = n.role.toUpperCase();
  const about = [label, shortId(n.id), n.self ? "(this node)" : ""].join(" ").trim();
  const models = n.models.length ? n.models.join(", ") : null;
  return el("article", { class: `node role-${n.role}` + (n.self ? " self" : ""),
                         "data-role": n.role, "data-id": n.id, "aria-label": about },
    el("div", { class: "node-head" },
      el("span", { class: "badge" }, label),
      n.self ? el("span", { class: "you" }, "this node") : null),
    el("code", { class: "nid", title: n.id }, shortId(n.id)),
    n.role === "client"
      ? el("span", { class: "vram" }, "no model · API only")
      : el("span", { class: "vram" }, gb(n.vram_bytes) + " VRAM"),
    n.share === null || n.share === undefined ? null : el("div", { class: "share" },
      el("span", { class: "bar", "aria-hidden": "true" },
        el("span", { style: `width:${Math.max(0, Math.min(100, n.share * 100))}%` })),
      el("span", { class: "share-text" }, percent(n.share) + " of the model")),
    models && n.role !== "client" && models !== meshModel
      ? el("span", { class: "models" }, models) : null,
    Number.isFinite(n.rtt_ms) ? el("span", { class: "rtt" }, `rtt ${n.rtt_ms.toFixed(1)} ms`)
                              : null);
}

function linkEl(link) {
  return el("div", { class: `link link-${link.kind}` + (link.serving === false ? " idle" : ""),
                     "data-kind": link.kind, "data-from": link.from || "",
                     "data-to": link.to || "" },
    el("span", { class: "link-label" }, link.label),
    el("span", { class: "link-note" }, link.note));
}

function renderDiagram(view, meshModel) {
  const linkTo = (id) => view.links.find((l) => l.from === id || l.to === id);
  const card = (n) => nodeCard(n, meshModel);
  const hostCard = view.host ? card(view.host)
    : el("article", { class: "node placeholder", "aria-label": "no host yet" },
        el("span", { class: "vram" }, "Waiting for host"));
  return [
    view.clients.length ? el("div", { class: "tier tier-clients" },
      view.clients.map((c) => el("div", { class: "col" }, card(c), linkEl(linkTo(c.id)))))
      : null,
    el("div", { class: "tier tier-host" + (view.clients.length ? " above" : "")
                       + (view.workers.length ? " below" : "") },
      el("div", { class: "col" }, hostCard)),
    view.workers.length ? el("div", { class: "tier tier-workers" },
      view.workers.map((w) => el("div", { class: "col" }, linkEl(linkTo(w.id)), card(w))))
      : null,
  ].filter(Boolean);
}

function groupEl(group) {
  const state = group.ready ? "ready" : "not ready";
  return el("section", { class: "group" + (group.ready ? "" : " not-ready"),
                         "data-model": group.name, "aria-label": `Model ${group.name}` },
    el("div", { class: "group-head" },
      el("h3", { class: "group-name" }, group.name),
      group.isDefault ? el("span", { class: "group-default" }, "default") : null,
      el("span", { class: "group-state" }, state),
      el("span", { class: "group-plan" }, group.plan),
      group.requestsPerMin === null ? null
        : el("span", { class: "group-rpm" }, `${group.requestsPerMin} req/min`)),
    ...renderDiagram(group.view, group.name));
}

/** The multi-model diagram: clients on top, then a box per model, then idle nodes. */
function renderGroups(view) {
  const linkTo = (id) => view.links.find((l) => l.from === id);
  return [
    view.clients.length ? el("div", { class: "tier tier-clients" },
      view.clients.map((c) => el("div", { class: "col" }, nodeCard(c, null), linkEl(linkTo(c.id)))))
      : null,
    el("div", { class: "groups" }, view.groups.map(groupEl)),
    view.others.length ? el("section", { class: "group others", "aria-label": "Nodes in no group" },
      el("div", { class: "group-head" }, el("h3", { class: "group-name" }, "In no group")),
      el("div", { class: "tier" },
        view.others.map((n) => el("div", { class: "col" }, nodeCard(n, null))))) : null,
  ].filter(Boolean);
}

/** The mesh's shared models (status `mesh_shared`): a box each, naming who shares it. */
function sharedEls(s) {
  return list(s && s.mesh_shared).filter((m) => m && typeof m.name === "string" && m.name)
    .map((m) => el("section", { class: "group shared", "data-model": m.name,
                                "aria-label": `Shared model ${m.name}` },
      el("div", { class: "group-head" },
        el("h3", { class: "group-name" }, m.name),
        el("span", { class: "group-state" }, "shared"),
        el("span", { class: "group-plan" },
           "its own server, through node " + idsOf(m.nodes).map(shortId).join(", ")))));
}

function diagramOf(s) {
  const view = groupsView(s);
  return view.groups.length ? renderGroups(view) : renderDiagram(meshView(s), modelName(s));
}

let current = null;

function render(s) {
  current = s;
  $("status-line").textContent = statusLine(s);
  document.title = "mesh-llm · " + statusLine(s);
  document.body.dataset.state = s.state || "";
  document.body.dataset.role = s.role || "";
  $("diagram").replaceChildren(...diagramOf(s), ...sharedEls(s));
  $("diagram").dataset.groups = String(modelGroups(s).length);
  $("model").textContent = modelName(s) || "–";
  $("draft").textContent = s.draft || "none";
  $("plan").textContent = planText(s);
  $("api").textContent = apiUrl(s, location.hostname);
  $("node-id").textContent = shortId(s.node_id);
  $("node-id").title = s.node_id || "";
  $("version").textContent = s.version ? "v" + s.version : "";
  $("token").value = s.token || "";
  $("client-invite").value = (s.invites && s.invites.client) || "";
  const commands = joinCommands(s);
  $("cmd-node").textContent = commands.node;
  $("cmd-client").textContent = commands.client;
  $("lan").textContent = lanText(s);
  for (const button of document.querySelectorAll("button.copy")) button.disabled = !s.token;
}

// ---------- the model picker ----------

let modelsSeen = null;  // modelsKey of the status the list was last fetched for
let modelsAsked = 0;  // the latest fetch: an older answer arriving late is dropped
let picked = "";  // the viewer's own choice, kept while the mesh offers it

function fillPicker(choices, note) {
  const select = $("model-picker");
  const value = chosenModel(choices, picked, current && current.default_model);
  select.replaceChildren(...(choices.length
    ? choices.map((c) => el("option", { value: c.id }, c.label))
    : [el("option", { value: "" }, "the mesh's default")]));
  select.value = value;
  select.title = note || "";
  select.dataset.state = note ? "error" : "ok";
}

/** Fetch the model list (the node's GET /v1/models) for the picker. */
async function refreshModels() {
  const asked = ++modelsAsked;
  let choices = null;
  let note = "";
  try {
    const resp = await fetch("/api/models", { cache: "no-store" });
    if (resp.ok) choices = modelChoices(await resp.json());
    else note = await errorText(resp);
  } catch (err) {
    note = String(err.message || err);
  }
  if (asked !== modelsAsked) return;
  if (choices) fillPicker(choices, "");
  else if (!$("model-picker").querySelector("option[value]:not([value=''])")) {
    fillPicker([], note);  // keep a list already shown: the next status change refetches
  } else {
    $("model-picker").title = note;
  }
}

function followModels(s) {
  const key = modelsKey(s);
  if (key === modelsSeen) return;
  modelsSeen = key;
  refreshModels();
}

// ---------- live updates ----------

function setLive(state) {
  document.body.dataset.live = state;
  $("live").dataset.state = state;
  $("live").textContent = state;
  if (state !== "live") $("status-line").textContent = "Reconnecting…";
}

// A console on the network needs a login; a refused stream may mean it lapsed.
async function loginLapsed() {
  try {
    return (await fetch("/api/session", { cache: "no-store" })).status === 401;
  } catch {
    return false;
  }
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => setLive("live"));
  source.addEventListener("status", (event) => {
    let s;
    try { s = JSON.parse(event.data); } catch { return; }
    if (s && typeof s === "object") {
      setLive("live");
      render(s);
      followModels(s);
    }
  });
  source.addEventListener("samples", (event) => {  // the charts (charts.js)
    try { window.meshCharts.add(JSON.parse(event.data)); } catch { /* no charts */ }
  });
  source.addEventListener("error", () => {
    setLive("reconnecting");
    // The browser retries by itself unless the stream is closed for good (e.g. a 5xx reply).
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      loginLapsed().then((lapsed) => {
        if (lapsed) location.reload();  // the node restarted: its login form is the page
        else setTimeout(connect, 2000);
      });
    }
  });
}

// ---------- copy ----------

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", { class: "sr-only" }, text);
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const source = $(button.dataset.copy);
  const text = source.value !== undefined ? source.value : source.textContent;
  const ok = await copyText(text);
  $("copy-note").textContent = ok ? "Copied to the clipboard." : "Copy failed: select the text.";
  button.textContent = ok ? "Copied" : "Copy";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});

// ---------- chat ----------

const history = [];
let controller = null;
let conversation = 0;  // bumped by "New chat", so a late answer cannot leak into the next one

function addMessage(kind, text) {
  const empty = $("messages").querySelector(".empty");
  if (empty) empty.remove();
  const body = el("div", { class: "text" }, text);
  const msg = el("div", { class: "msg " + kind },
    el("span", { class: "who" }, { user: "You", assistant: "Mesh", error: "Error" }[kind]), body);
  $("messages").append(msg);
  scrollDown(true);
  return msg;
}

function scrollDown(force) {
  const box = $("messages");
  if (force || box.scrollHeight - box.scrollTop - box.clientHeight < 80) {
    box.scrollTop = box.scrollHeight;
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("chat-form").setAttribute("aria-busy", String(busy));
}

function showError(msg, text) {
  msg.className = "msg error";
  msg.querySelector(".who").textContent = "Error";
  msg.querySelector(".text").textContent = text;
}

async function errorText(resp) {
  const text = await resp.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && body.error) return body.error.message || JSON.stringify(body.error);
  } catch { /* not JSON */ }
  return text.trim() || `HTTP ${resp.status} ${resp.statusText}`;
}

async function chat(prompt) {
  const started = conversation;
  const { answer } = await ask(prompt);
  if (started !== conversation) return;
  if (answer) history.push({ role: "assistant", content: answer });
  else history.pop();  // keep the conversation valid for the next question
}

/** The JSON chunks of an OpenAI-style event stream, as they arrive. */
async function* streamChunks(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const parsed = sseData(buffer + decoder.decode(value, { stream: true }));
    buffer = parsed.rest;
    for (const data of parsed.data) {
      if (data === "[DONE]") continue;
      try { yield JSON.parse(data); } catch { /* not JSON: skip it */ }
    }
  }
}

/** One question: stream the answer into a new message; returns {answer}. */
async function ask(prompt) {
  history.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const msg = addMessage("assistant", "");
  const out = msg.querySelector(".text");
  msg.setAttribute("aria-busy", "true");
  controller = new AbortController();
  setBusy(true);
  let answer = "";
  let failed = null;
  let timings = null;
  const model = $("model-picker").value;  // "" leaves the choice to the mesh's default
  if (model) msg.dataset.model = model;
  try {
    const resp = await fetch("/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: history, stream: true, ...(model ? { model } : {}) }),
      signal: controller.signal,
    });
    if (resp.status === 401 && await loginLapsed()) location.reload();
    if (!resp.ok) throw new Error(await errorText(resp));
    if ((resp.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      for await (const chunk of streamChunks(resp.body)) {
        if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          answer += delta.content;
          out.textContent = answer;
          scrollDown(false);
        }
        if (chunk.timings) timings = chunk.timings;
      }
    } else {  // an upstream that answered in one piece
      const body = await resp.json();
      answer = ((body.choices && body.choices[0] && body.choices[0].message) || {}).content || "";
      out.textContent = answer;
      timings = body.timings;
    }
  } catch (err) {
    failed = err;
  } finally {
    controller = null;
    msg.removeAttribute("aria-busy");
    setBusy(false);
  }
  if (failed && failed.name === "AbortError") {
    msg.classList.add("stopped");
    msg.append(el("span", { class: "meta" }, "stopped"));
  } else if (failed && answer) {
    addMessage("error", failed.message || String(failed));  // keep what did arrive
  } else if (failed) {
    showError(msg, failed.message || String(failed));
  } else {
    const meta = timingsText(timings);
    if (meta) msg.append(el("span", { class: "meta" }, meta));
    if (!answer) out.textContent = "(empty answer)";
  }
  return { answer };
}

function submit() {
  const prompt = $("prompt").value.trim();
  if (!prompt || controller) return;
  $("prompt").value = "";
  chat(prompt).catch((err) => addMessage("error", String(err)));
}

function stop() {
  if (controller) controller.abort();
}

$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  } else if (event.key === "Escape") {
    stop();
  }
});
$("stop").addEventListener("click", () => {
  stop();
  $("prompt").focus();
});
$("model-picker").addEventListener("change", (event) => {
  picked = event.target.value;
});
$("clear").addEventListener("click", () => {
  stop();
  conversation += 1;
  history.length = 0;
  $("messages").replaceChildren(el("p", { class: "empty" }, "New conversation."));
  $("prompt").focus();
});

// For tests and the curious: the pure view functions and the last status.
window.meshConsole = { meshView, statusLine, planText, shareOf, joinCommands, modelName, apiUrl,
                       sseData, timingsText, nodeCount, groupsView, modelGroups, modelChoices,
                       chosenModel, modelsKey, get status() { return current; } };

connect();
