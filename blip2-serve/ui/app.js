// The page `blip2 serve` shows at `/`: pick an image, caption it (streamed), ask about it, or
// match texts against it. Talks to the server's own JSON API only; no other origin.
"use strict";

// The model sees 224 × 224: larger photos are sent at most this size on their longer side.
// Smaller images are sent byte for byte, so the page's answers are the CLI's.
const MAX_SIDE = 1024;

const $ = (id) => document.getElementById(id);
const state = { info: null, image: null, busy: false, key: sessionStorage.getItem("blip2-key") };

// ---- talking to the server ----

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

// The server's error message from a failed response, readable whatever the body is.
async function errorOf(response) {
  let message = response.status + " " + response.statusText;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) askForKey();
  return new ApiError(message, response.status);
}

async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, { method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError("the server could not be reached (" + e.message + ")", 0);
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// Reads an OpenAI-style event stream, calling `onData` with each parsed `data:` payload.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

// ---- status, errors, timings ----

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function showTimings(t, tokens) {
  if (!t) { $("timings").textContent = ""; return; }
  const encode = t.image_cached ? "image encoding reused" : "encode " + Math.round(t.encode_ms) + " ms";
  const rate = tokens > 0 && t.generate_ms > 0 ? ", " + (tokens * 1000 / t.generate_ms).toFixed(1) + " tokens/s" : "";
  $("timings").textContent = encode + " · generate " + Math.round(t.generate_ms) + " ms (" + tokens + " tokens" + rate + ")";
}

function askForKey() {
  $("key-box").hidden = false;
  $("key").focus();
}

function setBusy(busy) {
  state.busy = busy;
  const ready = state.image !== null && !busy;
  for (const id of ["caption-button", "ask-button", "question", "match-button"]) $(id).disabled = !ready;
}

async function loadInfo() {
  for (;;) {
    try {
      state.info = await call("GET", "/v1/info");
      break;
    } catch (e) {
      if (e.status === 401) { $("model").textContent = "Waiting for an API key"; return; }
      $("model").textContent = e.status === 503 ? "Loading the model… (" + e.message + ")" : "Not connected: " + e.message;
      if (e.status !== 503 && e.status !== 0) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  const i = state.info;
  const lm = i.language_model ? " · " + i.language_model.toUpperCase() : "";
  $("model").textContent = i.model + " (" + i.family + lm + ") · " + i.backend + " · " + i.dtype;
  $("generation").hidden = i.kind !== "generation";
  $("retrieval").hidden = i.kind !== "retrieval";
  if (i.kind === "generation") fillOptions(i.defaults, i.limits);
  setBusy(false);
}

// ---- generation options: untouched ones are not sent, so the checkpoint's defaults apply ----

function fillOptions(d, limits) {
  $("max-tokens").value = d.max_tokens ?? "";
  $("max-tokens").placeholder = "default";
  $("beams").value = d.num_beams;
  $("beams").max = limits.max_beams;
  $("repetition").value = d.repetition_penalty;
  $("sample").checked = d.do_sample;
  $("temperature").value = d.temperature;
  $("top-p").value = d.top_p;
}

function options() {
  const d = state.info.defaults;
  const out = {};
  const number = (id) => ($(id).value === "" ? null : Number($(id).value));
  const maxTokens = number("max-tokens");
  if (maxTokens !== null && maxTokens !== d.max_tokens) out.max_tokens = maxTokens;
  const beams = number("beams");
  if (beams !== null && beams !== d.num_beams) out.num_beams = beams;
  const repetition = number("repetition");
  if (repetition !== null && repetition !== d.repetition_penalty) out.repetition_penalty = repetition;
  const sample = $("sample").checked;
  if (sample) {
    const temperature = number("temperature");
    const topP = number("top-p");
    if (!d.do_sample || temperature !== d.temperature) out.temperature = temperature ?? 1;
    if (topP !== null && topP !== d.top_p) out.top_p = topP;
  } else if (d.do_sample) {
    out.temperature = 0;
  }
  return out;
}

// ---- images: pick, drop, paste; downscale large ones before upload ----

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function prepare(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (_) {
    throw new Error("“" + (file.name || "the pasted data") + "” is not an image this browser can read");
  }
  const { width, height } = bitmap;
  let blob = file;
  let note = width + " × " + height;
  const scale = MAX_SIDE / Math.max(width, height);
  if (scale < 1) {
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    const context = canvas.getContext("2d");
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    blob = await new Promise((r) => canvas.toBlob(r, "image/jpeg", 0.92));
    note += ", sent as " + canvas.width + " × " + canvas.height;
  }
  bitmap.close();
  const dataUrl = await readAsDataUrl(blob);
  return { dataUrl, bytes: blob.size, note, name: file.name || "pasted image" };
}

async function useFile(file) {
  if (!file || state.busy) return;
  showError("");
  try {
    const image = await prepare(file);
    const limit = state.info ? state.info.limits.max_body_bytes : Infinity;
    // A data URL is 4/3 of the bytes; the request adds a little JSON.
    if (image.dataUrl.length + 1024 > limit) {
      throw new Error("“" + image.name + "” is " + kib(image.bytes) + " to send; this server takes requests of at most " + kib(limit));
    }
    state.image = image;
    $("preview").src = image.dataUrl;
    $("preview").hidden = false;
    $("drop-text").textContent = "Drop, paste or choose another image";
    $("image-info").textContent = image.name + " · " + image.note + " · " + kib(image.bytes);
    $("caption").textContent = "";
    $("answers").replaceChildren();
    $("scores").hidden = true;
    setBusy(false);
    if (state.info && state.info.kind === "generation") await caption();
  } catch (e) {
    showError(e.message);
  }
}

function kib(bytes) {
  return bytes >= 1 << 20 ? (bytes / (1 << 20)).toFixed(1) + " MiB" : Math.ceil(bytes / 1024) + " KiB";
}

// ---- generation: streamed when one beam, whole otherwise ----

async function generate(question, onText) {
  const content = [{ type: "image_url", image_url: { url: state.image.dataUrl } }];
  if (question) content.unshift({ type: "text", text: question });
  const body = { messages: [{ role: "user", content }], ...options() };
  const stream = (body.num_beams ?? state.info.defaults.num_beams) === 1;
  if (!stream) {
    const r = await call("POST", "/v1/chat/completions", body);
    onText(r.choices[0].message.content);
    showTimings(r.timings, r.usage.completion_tokens);
    return;
  }
  body.stream = true;
  body.stream_options = { include_usage: true };
  let response;
  try {
    response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  } catch (e) {
    throw new ApiError("the server could not be reached (" + e.message + ")", 0);
  }
  if (!response.ok) throw await errorOf(response);
  let timings = null;
  let tokens = 0;
  await readEvents(response, (chunk) => {
    if (chunk.error) throw new ApiError(chunk.error.message, chunk.error.code);
    if (chunk.timings) timings = chunk.timings;
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
    if (delta && delta.content) onText(delta.content);
  });
  showTimings(timings, tokens);
}

async function run(task) {
  setBusy(true);
  showError("");
  try {
    await task();
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

function caption() {
  const out = $("caption");
  out.textContent = "";
  out.removeAttribute("data-done");
  return run(async () => {
    await generate("", (text) => { out.textContent += text; });
    out.textContent = out.textContent.trim();
    out.dataset.done = "true";
  });
}

function ask(question) {
  const item = document.createElement("li");
  const q = document.createElement("span");
  q.className = "q";
  q.textContent = question + " — ";
  const a = document.createElement("span");
  a.className = "a";
  item.append(q, a);
  $("answers").append(item);
  return run(async () => {
    await generate(question, (text) => { a.textContent += text; });
    a.textContent = a.textContent.trim();
    item.dataset.done = "true";
  });
}

// ---- retrieval: match scores as bars ----

function bar(value, label) {
  const cell = document.createElement("td");
  const wrap = document.createElement("div");
  wrap.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = Math.max(0, Math.min(1, value)) * 8 + "rem";
  const text = document.createElement("output");
  text.textContent = label;
  wrap.append(fill, text);
  cell.append(wrap);
  return cell;
}

function match(texts) {
  return run(async () => {
    const r = await call("POST", "/v1/match", { images: [state.image.dataUrl], texts });
    const rows = texts.map((text, j) => {
      const row = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = text;
      const itm = r.itm[0][j];
      const itc = r.itc[0][j];
      row.append(name, bar(itm, (itm * 100).toFixed(1) + " %"), bar(itc, itc.toFixed(3)));
      return row;
    });
    $("scores").tBodies[0].replaceChildren(...rows);
    $("scores").hidden = false;
  });
}

// ---- wiring ----

$("file").addEventListener("change", (e) => useFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  useFile(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) { e.preventDefault(); useFile(file); }
});
$("caption-button").addEventListener("click", () => caption());
$("ask-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const question = $("question").value.trim();
  if (question && !state.busy && state.image) ask(question);
});
$("match-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter((t) => t);
  if (texts.length && !state.busy && state.image) match(texts);
});
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key").value;
  sessionStorage.setItem("blip2-key", state.key);
  $("key-box").hidden = true;
  showError("");
  loadInfo();
});
setBusy(false);
loadInfo();
