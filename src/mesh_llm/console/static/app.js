"use strict";
const $ = (id) => document.getElementById(id);
const gb = (bytes) => (bytes / 1e9).toFixed(1) + " GB";

function render(s) {
  $("role").textContent = s.role.toUpperCase();
  $("model").textContent = s.model || "–";
  $("api").textContent = `http://127.0.0.1:${s.api_port}/v1`;
  $("vram").textContent = `${gb(s.vram_bytes)} (mesh ${gb(s.mesh_vram_bytes)})`;
  $("peers").textContent = String(s.peers.length);
  const words = { running: "Running", loading: "Loading " + (s.model || "") + "…",
                  waiting: (s.plan && s.plan.reason) || "Waiting", starting: "Starting…" };
  $("status-line").textContent = words[s.state] || s.state;
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("status", (e) => render(JSON.parse(e.data)));
  events.onerror = () => { $("status-line").textContent = "Reconnecting…"; };
}

function addMessage(kind, text) {
  const div = document.createElement("div");
  div.className = "msg " + kind;
  div.textContent = text;
  $("messages").appendChild(div);
  return div;
}

async function chat(prompt) {
  addMessage("user", prompt);
  const out = addMessage("assistant", "");
  const resp = await fetch("/api/chat", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: prompt }], stream: true }),
  });
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    out.className = "msg error";
    out.textContent = (body.error && body.error.message) || `HTTP ${resp.status}`;
    return;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const delta = JSON.parse(line.slice(6)).choices?.[0]?.delta?.content;
      if (delta) out.textContent += delta;
    }
  }
}

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  $("prompt").value = "";
  chat(prompt).catch((err) => addMessage("error", String(err)));
});
connect();
