// The playground page. It talks to an OpenAI-compatible API at /v1 on the
// server that served it: the local endpoint itself, or the playground's proxy
// (python -m handler playground), which adds the API key server-side.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  config: null, // /playground/config.json: where "copy as code" points
  history: [], // the conversation's finished turns, {role, content}
  chat: 0, // bumped by "new chat", so a late answer cannot land in a new chat
  controller: null, // the AbortController of the answer streaming in
  lang: "curl",
};

class ServerError extends Error {}

// -- talking to the API --------------------------------------------------------

function headers(json) {
  const result = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value.trim();
  if (state.config?.auth && key) result.Authorization = `Bearer ${key}`;
  return result;
}

// The human-readable message of an error body: OpenAI's {"error": {"message"}},
// a RunPod {"error": "text"} (which may itself hold OpenAI's object as JSON).
function messageOf(body) {
  if (typeof body === "string") {
    try {
      return messageOf(JSON.parse(body)) ?? body;
    } catch {
      return body;
    }
  }
  if (!body || typeof body !== "object") return null;
  if ("error" in body) return messageOf(body.error);
  if (typeof body.message === "string") return body.message;
  if (typeof body.detail === "string") return body.detail;
  return null;
}

async function responseError(response) {
  const text = await response.text();
  return new ServerError(`${response.status}: ${messageOf(text) || response.statusText}`);
}

// The data of each server-sent event in a response body, as text.
async function* sseData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let boundary;
      while ((boundary = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
        const data = block
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// -- settings --------------------------------------------------------------------

function numberField(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

function sampling() {
  const result = {};
  for (const [name, id] of [["temperature", "temperature"], ["top_p", "top-p"], ["max_tokens", "max-tokens"]]) {
    const value = numberField(id);
    if (value !== undefined && !Number.isNaN(value)) result[name] = value;
  }
  return result;
}

function withSystem(turns) {
  const system = $("system").value;
  return system.trim() ? [{ role: "system", content: system }, ...turns] : turns;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadConfig() {
  const response = await fetch("/playground/config.json");
  state.config = await response.json();
  $("target").textContent = state.config.target;
  $("api-key-field").hidden = !state.config.auth;
}

async function loadModels() {
  setStatus("Loading models…");
  try {
    const response = await fetch("/v1/models", { headers: headers(false) });
    if (!response.ok) throw await responseError(response);
    const ids = ((await response.json()).data ?? []).map((model) => model.id);
    const select = $("model");
    const previous = select.value;
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(previous)) select.value = previous;
    select.title = select.value; // a long model id is cut in the box
    setStatus(ids.length ? "" : "The server lists no model.", !ids.length);
  } catch (error) {
    setStatus(`Cannot list the models: ${error.message}`, true);
  }
}

// -- the conversation --------------------------------------------------------------

const log = () => $("log");

function nearBottom() {
  const box = log();
  return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
}

function addMessage(role, text) {
  const stick = nearBottom();
  $("empty").hidden = true;
  const root = document.createElement("article");
  root.className = `msg ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const content = document.createElement("div");
  content.className = "content";
  content.append(document.createTextNode(text));
  root.append(label, content);
  const view = { root, content, text: content.firstChild, meta: null };
  if (role === "assistant") {
    view.meta = document.createElement("div");
    view.meta.className = "meta";
    root.append(view.meta);
  }
  log().append(root);
  if (stick) log().scrollTop = log().scrollHeight;
  return view;
}

function appendText(view, piece) {
  const stick = nearBottom();
  view.text.appendData(piece);
  if (stick) log().scrollTop = log().scrollHeight;
}

function showError(view, message) {
  const stick = nearBottom();
  const box = document.createElement("div");
  box.className = "error";
  box.setAttribute("role", "alert");
  box.textContent = message;
  view.root.classList.add("failed");
  view.root.insertBefore(box, view.meta);
  if (stick) log().scrollTop = log().scrollHeight;
}

function seconds(ms) {
  return ms < 999.5 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

// Time to first token, tokens/s after it, and token counts (from the
// stream's usage; counted pieces when the answer was stopped).
function describe(view, stats, note) {
  const parts = note ? [note] : [];
  const data = view.meta.dataset;
  if (stats.first !== null) {
    data.ttftMs = (stats.first - stats.start).toFixed(1);
    parts.push(`first token ${seconds(stats.first - stats.start)}`);
  }
  const tokens = stats.usage?.completion_tokens ?? stats.pieces;
  if (stats.first !== null && tokens > 1 && stats.end > stats.first) {
    const rate = ((tokens - 1) * 1000) / (stats.end - stats.first);
    data.tokensPerS = rate.toFixed(2);
    parts.push(`${rate.toFixed(1)} tokens/s`);
  }
  if (stats.usage) {
    data.promptTokens = stats.usage.prompt_tokens;
    data.completionTokens = stats.usage.completion_tokens;
    parts.push(`${stats.usage.prompt_tokens} prompt + ${stats.usage.completion_tokens} completion tokens`);
  } else {
    parts.push(`≈${stats.pieces} tokens`);
  }
  if (stats.finish === "length") parts.push("stopped at max tokens");
  view.meta.textContent = parts.join(" · ");
  view.meta.title = "tokens/s counts the tokens after the first, over the time after the first";
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  log().setAttribute("aria-busy", String(busy));
}

async function send(text) {
  const chat = state.chat;
  const userTurn = { role: "user", content: text };
  addMessage("user", text);
  const view = addMessage("assistant", "");
  view.root.classList.add("pending");
  const body = {
    model: $("model").value,
    messages: withSystem([...state.history, userTurn]),
    ...sampling(),
    stream: true,
    stream_options: { include_usage: true },
  };
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const stats = { start: performance.now(), first: null, end: null, pieces: 0, usage: null, finish: null };
  let answer = "";
  let done = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw await responseError(response);
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") {
        done = true;
        break;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ServerError(messageOf(chunk) ?? data);
      const choice = chunk.choices?.[0];
      const piece = choice?.delta?.content;
      if (piece) {
        if (stats.first === null) view.root.classList.remove("pending");
        stats.first ??= performance.now();
        stats.pieces += 1;
        answer += piece;
        appendText(view, piece);
      }
      if (choice?.finish_reason) stats.finish = choice.finish_reason;
      if (chunk.usage) stats.usage = chunk.usage;
    }
    if (!done && !stats.finish) throw new ServerError("the stream ended before the answer was finished");
    stats.end = performance.now();
    if (chat === state.chat) state.history.push(userTurn, { role: "assistant", content: answer });
    describe(view, stats);
  } catch (error) {
    stats.end = performance.now();
    if (controller.signal.aborted) {
      if (chat === state.chat && answer) state.history.push(userTurn, { role: "assistant", content: answer });
      describe(view, stats, "stopped");
    } else {
      showError(view, error instanceof ServerError ? error.message : `The request failed: ${error.message}`);
    }
  } finally {
    view.root.classList.remove("pending");
    view.root.classList.toggle("blank", answer === "");
    if (state.controller === controller) {
      state.controller = null;
      setBusy(false);
    }
  }
}

function submit() {
  const prompt = $("prompt");
  const text = prompt.value;
  if (state.controller || !text.trim()) return;
  prompt.value = "";
  send(text);
}

function stop() {
  state.controller?.abort();
  $("prompt").focus();
}

function newChat() {
  stop();
  state.chat += 1;
  state.history = [];
  log().replaceChildren($("empty"));
  $("empty").hidden = false;
  $("prompt").focus();
}

// -- copy as code --------------------------------------------------------------------

// The request the page would send now: the conversation plus the draft, or,
// with no draft, the request that produced the last answer.
function currentMessages() {
  const draft = $("prompt").value;
  let turns = [...state.history];
  if (draft.trim()) turns.push({ role: "user", content: draft });
  else if (turns.length && turns[turns.length - 1].role === "assistant") turns = turns.slice(0, -1);
  return turns.length ? withSystem(turns) : null;
}

const quote = JSON.stringify; // a JSON string is a valid Python string literal

function pythonMessages(messages, indent) {
  const pad = " ".repeat(indent);
  const rows = messages.map((m) => `${pad}    {"role": ${quote(m.role)}, "content": ${quote(m.content)}},`);
  return `[\n${rows.join("\n")}\n${pad}]`;
}

function shellQuote(text) {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

function pythonKey(side) {
  return side.key_env ? `os.environ[${quote(side.key_env)}]` : quote(side.key);
}

function curlCode(messages, params) {
  const { openai } = state.config;
  const body = { model: $("model").value, messages, ...params, stream: true };
  const lines = [`curl -sN ${openai.base}/chat/completions`, `  -H "Content-Type: application/json"`];
  if (openai.key_env) lines.push(`  -H "Authorization: Bearer $${openai.key_env}"`);
  lines.push(`  -d ${shellQuote(JSON.stringify(body, null, 2))}`);
  return lines.join(" \\\n");
}

function openaiCode(messages, params) {
  const { openai } = state.config;
  const args = Object.entries(params).map(([name, value]) => `    ${name}=${value},`);
  return [
    ...(openai.key_env ? ["import os", ""] : []),
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${quote(openai.base)}, api_key=${pythonKey(openai)})`,
    "stream = client.chat.completions.create(",
    `    model=${quote($("model").value)},`,
    `    messages=${pythonMessages(messages, 4)},`,
    ...args,
    "    stream=True,",
    ")",
    "for chunk in stream:",
    "    if chunk.choices:",
    `        print(chunk.choices[0].delta.content or "", end="", flush=True)`,
    "print()",
  ].join("\n");
}

function runpodCode(messages, params) {
  const { runpod } = state.config;
  const head = [];
  if (!runpod.endpoint_id) {
    head.push(
      "# The runpod SDK calls queue-based endpoints (https://api.runpod.ai/v2/<id>).",
      "# This playground talks to an OpenAI-compatible URL: put your endpoint's id below.",
    );
  }
  const sampling = Object.entries(params).map(([name, value]) => `${quote(name)}: ${value}`).join(", ");
  return [
    ...head,
    ...(runpod.key_env ? ["import os", ""] : []),
    "import runpod",
    "",
    `runpod.api_key = ${pythonKey(runpod)}`,
    ...(runpod.url_base ? [`runpod.endpoint_url_base = ${quote(runpod.url_base)}`] : []),
    `endpoint = runpod.Endpoint(${quote(runpod.endpoint_id ?? "ENDPOINT_ID")})`,
    "job = endpoint.run({",
    `    "messages": ${pythonMessages(messages, 4)},`,
    `    "sampling_params": {${sampling}},`,
    `    "stream": True,`,
    "})",
    "for item in job.stream():",
    `    for choice in item["choices"]:`,
    `        print("".join(choice["tokens"]), end="", flush=True)`,
    "print()",
  ].join("\n");
}

function renderCode() {
  const messages = currentMessages();
  $("copy-status").textContent = "";
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.lang === state.lang));
    tab.tabIndex = tab.dataset.lang === state.lang ? 0 : -1;
  }
  if (!messages) {
    $("code").textContent = "Type a message first: the code sends the request this page would send.";
    return;
  }
  const writer = { curl: curlCode, openai: openaiCode, runpod: runpodCode }[state.lang];
  $("code").textContent = writer(messages, sampling());
}

async function copyCode() {
  const text = $("code").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = "Copied.";
  } catch {
    // no clipboard API (a page not served from localhost or https): select it
    const range = document.createRange();
    range.selectNodeContents($("code"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    $("copy-status").textContent = "Selected: press Ctrl+C to copy.";
  }
}

// -- wiring ------------------------------------------------------------------------------

function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape" && state.controller) {
      stop();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("api-key").addEventListener("change", loadModels);
  $("copy-code").addEventListener("click", () => {
    renderCode();
    $("code-dialog").showModal();
  });
  $("close-code").addEventListener("click", () => $("code-dialog").close());
  $("copy").addEventListener("click", copyCode);
  const tabs = [...document.querySelectorAll("[role=tab]")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      state.lang = tab.dataset.lang;
      renderCode();
    });
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      state.lang = next.dataset.lang;
      renderCode();
      next.focus();
    });
  }
}

async function start() {
  wire();
  try {
    await loadConfig();
  } catch (error) {
    setStatus(`Cannot read the playground's settings: ${error.message}`, true);
    return;
  }
  await loadModels();
  $("prompt").focus();
}

start();
