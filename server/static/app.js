// The playground: plain JavaScript against the server's own API, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { adapter: null, baseModel: null, lastId: null };

function headers(json = true) {
  const h = json ? { "content-type": "application/json" } : {};
  const key = $("api-key").value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// The API's errors are OpenAI error objects: show their message, never a raw body.
async function failure(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${response.status}: ${response.statusText || "request failed"}`;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) throw new Error(await failure(response));
  return response;
}

async function loadConfig() {
  const config = await (await fetch("/playground/config")).json();
  state.baseModel = config.base_model;
  for (const example of config.examples) {
    const option = document.createElement("option");
    option.value = example.description;
    option.textContent = `${example.name}: ${example.description.slice(0, 80)}`;
    $("examples").append(option);
  }
  if (config.auth) $("api-key").placeholder = "this server needs an API key";
}

function showAdapter(adapter) {
  state.adapter = adapter;
  $("adapter").hidden = false;
  $("adapter-id").textContent = adapter.id;
  $("adapter-tier").textContent = adapter.cached ? `cache (${adapter.cached})` : "a new generation";
  const t = adapter.timings_ms || {};
  const parts = [["embed", t.embed], ["hypernet", t.hypernet], ["total", t.total]]
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k} ${v.toFixed(1)} ms`);
  $("adapter-timings").textContent = parts.join(", ");
  $("adapter-checkpoint").textContent = adapter.checkpoint;
  const trained = $("adapter-trained");
  trained.textContent = adapter.checkpoint_trained ? "trained" : "UNTRAINED: adapters are the identity";
  trained.className = adapter.checkpoint_trained ? "trained" : "untrained";
}

async function makeAdapter() {
  clearError();
  const button = $("make-adapter");
  button.disabled = true;
  try {
    const response = await api("/v1/adapters", {
      method: "POST",
      body: JSON.stringify({ description: $("description").value }),
    });
    showAdapter(await response.json());
    refreshList();
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
  }
}

// One streamed chat into one pane: server-sent events, text appended as it arrives.
async function stream(model, pane) {
  pane.textContent = "";
  const body = {
    model,
    messages: [{ role: "user", content: $("prompt").value }],
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
    stream: true,
  };
  const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body) });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const chunk = JSON.parse(event.slice(6));
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) pane.textContent += choice.delta.content;
      }
    }
  }
}

async function send() {
  clearError();
  if (!state.adapter) {
    showError("make an adapter first (step 1)");
    return;
  }
  const button = $("send");
  button.disabled = true;
  const results = await Promise.allSettled([
    stream(state.baseModel, $("answer-base")),
    stream(state.adapter.id, $("answer-adapter")),
  ]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showError(failed.reason.message);
  button.disabled = false;
}

// Downloads go through fetch (so the API key is sent), then a temporary link to the blob.
async function download(format) {
  clearError();
  try {
    const response = await api(`/v1/adapters/${state.adapter.id}/download?format=${format}`, {
      headers: headers(false),
    });
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = `${state.adapter.id}.${format}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    showError(err.message);
  }
}

async function refreshList(after = null) {
  try {
    const query = new URLSearchParams({ limit: "10" });
    if (after) query.set("after", after);
    const page = await (await api(`/v1/adapters?${query}`, { headers: headers(false) })).json();
    const list = $("adapter-list");
    if (!after) list.textContent = "";
    for (const adapter of page.data) {
      const item = document.createElement("li");
      item.dataset.id = adapter.id;
      const label = document.createElement("span");
      label.textContent = `${adapter.id} — ${adapter.description}`;
      const remove = document.createElement("button");
      remove.textContent = "Delete";
      remove.className = "delete";
      remove.addEventListener("click", () => deleteAdapter(adapter.id, item));
      item.append(label, remove);
      list.append(item);
    }
    state.lastId = page.last_id;
    $("more").hidden = !page.has_more;
  } catch (err) {
    showError(err.message);
  }
}

async function deleteAdapter(id, item) {
  clearError();
  try {
    await api(`/v1/adapters/${id}`, { method: "DELETE", headers: headers(false) });
    item.remove();
    if (state.adapter && state.adapter.id === id) {
      state.adapter = null;
      $("adapter").hidden = true;
    }
  } catch (err) {
    showError(err.message);
  }
}

$("examples").addEventListener("change", (e) => { if (e.target.value) $("description").value = e.target.value; });
$("make-adapter").addEventListener("click", makeAdapter);
$("send").addEventListener("click", send);
$("download-zip").addEventListener("click", () => download("zip"));
$("download-tar").addEventListener("click", () => download("tar.gz"));
$("refresh").addEventListener("click", () => refreshList());
$("more").addEventListener("click", () => refreshList(state.lastId));
$("api-key").value = localStorage.getItem("t2l-api-key") || "";
$("api-key").addEventListener("change", (e) => { localStorage.setItem("t2l-api-key", e.target.value); refreshList(); });
loadConfig().then(() => refreshList()).catch((err) => showError(err.message));
