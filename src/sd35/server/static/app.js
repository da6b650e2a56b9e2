// sd35 web page: builds an API-format prompt of the official SD3.5 Medium ComfyUI graph from the form,
// POSTs it to /prompt, follows it over the ComfyUI WebSocket and shows the results from /sd35/gallery.
"use strict";

const $ = (id) => document.getElementById(id);
const SIZES = [
  [1024, 1024], [1152, 896], [896, 1152], [1216, 832], [832, 1216], [1280, 768], [768, 1280],
  [1344, 768], [768, 1344], [1536, 640], [640, 1536],
];
const SLG = { layers: "7, 8, 9", scale: 2.5, start_percent: 0.01, end_percent: 0.2 }; // sd3.5 reference CONFIGS
const STAGES = {
  CheckpointLoaderSimple: "Loading the model", TripleCLIPLoader: "Loading the text encoders",
  CLIPTextEncode: "Encoding the prompt", KSampler: "Sampling", VAEDecode: "Decoding", SaveImage: "Saving",
};
const MAX_SEED = 2n ** 64n - 1n;

const state = {
  clientId: newClientId(),
  models: { ckpt: "sd3.5_medium.safetensors", clips: ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"] },
  prompts: {},      // prompt_id -> the prompt we sent (to name the running node)
  current: null,    // prompt_id being executed for this page
  ws: null,
  retry: 500,
};

function newClientId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return "c" + Math.random().toString(16).slice(2) + Date.now().toString(16);
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const error = new Error(describeError(body) || `${response.status} ${response.statusText}`);
    error.body = body;
    throw error;
  }
  return body;
}

function describeError(body) {
  if (!body || !body.error) return "";
  const lines = [body.error.message || body.error.type];
  for (const [id, entry] of Object.entries(body.node_errors || {})) {
    for (const e of entry.errors || []) lines.push(`node ${id} (${entry.class_type}): ${e.message}${e.details ? ": " + e.details : ""}`);
  }
  return lines.join("\n");
}

function showMessage(text, isError = false) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
  box.classList.toggle("error", isError);
}

// ---------- form <-> settings ----------
function fillSelect(select, values, selected) {
  select.innerHTML = "";
  for (const value of values) {
    const option = document.createElement("option");
    option.value = option.textContent = value;
    select.appendChild(option);
  }
  if (values.includes(selected)) select.value = selected;
}

function setupSizes() {
  const select = $("size");
  for (const [w, h] of SIZES) {
    const option = document.createElement("option");
    option.value = `${w}x${h}`;
    const megapixels = ((w * h) / 1e6).toFixed(2);
    option.textContent = `${w} × ${h}  ·  ${w === h ? "square" : w > h ? "landscape" : "portrait"}, ${megapixels} MP`;
    select.appendChild(option);
  }
  const custom = document.createElement("option");
  custom.value = "custom";
  custom.textContent = "Custom size";
  select.appendChild(custom);
  select.value = "1280x768";
  select.addEventListener("change", () => {
    if (select.value === "custom") return;
    const [w, h] = select.value.split("x");
    $("width").value = w;
    $("height").value = h;
  });
  for (const id of ["width", "height"]) $(id).addEventListener("input", syncSizeSelect);
}

function syncSizeSelect() {
  const key = `${$("width").value}x${$("height").value}`;
  $("size").value = SIZES.some(([w, h]) => `${w}x${h}` === key) ? key : "custom";
}

function readSettings() {
  const seedText = $("seed").value.trim();
  if (!/^\d+$/.test(seedText) || BigInt(seedText) > MAX_SEED) throw new Error("Seed must be a whole number from 0 to 2^64-1.");
  const width = parseInt($("width").value, 10), height = parseInt($("height").value, 10);
  if (!(width >= 16 && height >= 16)) throw new Error("Width and height must be at least 16.");
  return {
    positive: $("prompt").value, negative: $("negative").value, width, height,
    steps: parseInt($("steps").value, 10), cfg: parseFloat($("cfg").value), seed: seedText,
    sampler_name: $("sampler").value, scheduler: $("scheduler").value, slg: $("slg").checked,
  };
}

function applySettings(p) {
  if (typeof p.positive === "string") $("prompt").value = p.positive;
  if (typeof p.negative === "string") $("negative").value = p.negative;
  if (p.width) $("width").value = p.width;
  if (p.height) $("height").value = p.height;
  syncSizeSelect();
  if (p.steps !== undefined) $("steps").value = p.steps;
  if (p.cfg !== undefined) $("cfg").value = p.cfg;
  if (p.seed !== undefined) { $("seed").value = String(p.seed); $("randomize").checked = false; }
  for (const key of ["sampler_name", "scheduler"]) {
    const select = $(key === "sampler_name" ? "sampler" : "scheduler");
    if (p[key] && [...select.options].some((o) => o.value === p[key])) select.value = p[key];
  }
  $("slg").checked = !!p.slg;
  updateTokens();
}

// The official SD3.5 Medium workflow (SD3.5M_example_workflow_api.json) with the form's values; SaveImage
// instead of PreviewImage so results stay in output/. SLG adds SkipLayerGuidanceSD3 after ModelSamplingSD3.
function buildPrompt(s) {
  const [g, l, t5] = state.models.clips;
  const prompt = {
    "4": node("CheckpointLoaderSimple", { ckpt_name: state.models.ckpt }),
    "11": node("TripleCLIPLoader", { clip_name1: g, clip_name2: l, clip_name3: t5 }),
    "6": node("CLIPTextEncode", { text: s.positive, clip: ["11", 0] }, "Positive prompt"),
    "71": node("CLIPTextEncode", { text: s.negative, clip: ["11", 0] }, "Negative prompt"),
    "67": node("ConditioningZeroOut", { conditioning: ["71", 0] }),
    "68": node("ConditioningSetTimestepRange", { conditioning: ["67", 0], start: 0.2, end: 1 }),
    "70": node("ConditioningSetTimestepRange", { conditioning: ["71", 0], start: 0, end: 0.2 }),
    "69": node("ConditioningCombine", { conditioning_1: ["68", 0], conditioning_2: ["70", 0] }),
    "135": node("EmptySD3LatentImage", { width: s.width, height: s.height, batch_size: 1 }),
    "13": node("ModelSamplingSD3", { model: ["4", 0], shift: 3 }),
    "294": node("KSampler", {
      model: [s.slg ? "300" : "13", 0], seed: "__SEED__", steps: s.steps, cfg: s.cfg,
      sampler_name: s.sampler_name, scheduler: s.scheduler, positive: ["6", 0], negative: ["69", 0],
      latent_image: ["135", 0], denoise: 1,
    }),
    "8": node("VAEDecode", { samples: ["294", 0], vae: ["4", 2] }),
    "9": node("SaveImage", { images: ["8", 0], filename_prefix: "sd35" }),
  };
  if (s.slg) prompt["300"] = node("SkipLayerGuidanceSD3", { model: ["13", 0], ...SLG });
  return prompt;
}

function node(class_type, inputs, title) {
  return { class_type, inputs, _meta: { title: title || class_type } };
}

// JSON with the seed written as an exact integer (seeds go up to 2^64-1, past JS's safe integers).
function promptBody(prompt, seed) {
  const text = JSON.stringify({ prompt, client_id: state.clientId });
  return text.replace('"__SEED__"', seed);
}

async function queuePrompt(event) {
  event.preventDefault();
  if ($("randomize").checked) $("seed").value = randomSeed();
  let settings;
  try { settings = readSettings(); } catch (e) { showMessage(e.message, true); return; }
  const prompt = buildPrompt(settings);
  $("queue").disabled = true;
  try {
    const answer = await api("/prompt", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: promptBody(prompt, settings.seed),
    });
    state.prompts[answer.prompt_id] = prompt;
    showMessage("");
    showProgress("Queued", "", 0);
  } catch (e) {
    showMessage(e.message, true);
  } finally {
    $("queue").disabled = false;
  }
}

function randomSeed() {
  const words = new Uint32Array(2);
  crypto.getRandomValues(words);
  return String((BigInt(words[0] & 0x3ffff) << 32n) | BigInt(words[1])); // < 2^50, like the UI's seeds
}

// ---------- token counter ----------
let tokenTimer = null;
let tokenSeq = 0;
function updateTokens() {
  clearTimeout(tokenTimer);
  tokenTimer = setTimeout(async () => {
    const seq = ++tokenSeq;
    try {
      const counts = await api("/sd35/tokens", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: $("prompt").value }),
      });
      if (seq !== tokenSeq) return;
      const label = $("tokens");
      label.textContent = `T5: ${counts.t5xxl} / ${counts.t5_limit} tokens`;
      label.classList.toggle("over", counts.over_limit);
      $("tokens-clip").textContent = `CLIP: ${counts.clip_l}`;
      const warning = $("token-warning");
      warning.hidden = !counts.over_limit;
      warning.textContent = counts.over_limit
        ? `This prompt has ${counts.t5xxl} T5 tokens, more than the ${counts.t5_limit} SD3.5 was trained with: the image may show artifacts at its edges. Shorten the prompt.`
        : "";
    } catch (_) { /* the counter is a hint only */ }
  }, 200);
}

// ---------- progress and websocket ----------
function showProgress(label, steps, fraction) {
  $("progress-card").hidden = false;
  $("progress-label").textContent = label;
  $("progress-steps").textContent = steps;
  $("progress-bar").style.width = `${Math.round(100 * fraction)}%`;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws?clientId=${encodeURIComponent(state.clientId)}`);
  state.ws = ws;
  ws.onopen = () => { setConnected(true); state.retry = 500; };
  ws.onclose = () => {
    setConnected(false);
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 8000);
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") return;
    let message;
    try { message = JSON.parse(event.data); } catch (_) { return; }
    handleMessage(message.type, message.data || {});
  };
}

function setConnected(on) {
  $("conn").classList.toggle("on", on);
  $("conn-text").textContent = on ? "connected" : "reconnecting…";
}

function handleMessage(type, data) {
  const prompt = state.prompts[data.prompt_id];
  switch (type) {
    case "status":
      $("queue-count").textContent = `queue: ${data.status.exec_info.queue_remaining}`;
      break;
    case "execution_start":
      state.current = data.prompt_id;
      showProgress("Starting…", "", 0);
      break;
    case "executing":
      if (data.node === null) { if (data.prompt_id === state.current) finishRun(); break; }
      if (prompt && prompt[data.node]) {
        const kind = prompt[data.node].class_type;
        showProgress(STAGES[kind] || kind, "", kind === "KSampler" ? 0 : 1);
      }
      break;
    case "progress":
      showProgress("Sampling", `step ${data.value} / ${data.max}`, data.value / Math.max(1, data.max));
      break;
    case "execution_error":
      showMessage(`Failed${data.node_type ? ` in ${data.node_type}` : ""}: ${data.exception_message}`, true);
      break;
    case "execution_interrupted":
      showMessage("Stopped.");
      break;
    default:
      break;
  }
}

function finishRun() {
  state.current = null;
  $("progress-card").hidden = true;
  loadGallery();
}

// ---------- gallery ----------
function viewUrl(image) {
  const q = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder || "", type: image.type || "output" });
  return `/view?${q}`;
}

function chip(text) {
  const span = document.createElement("span");
  span.className = "chip";
  span.textContent = text;
  return span;
}

function card(item) {
  const p = item.params || {};
  const root = document.createElement("article");
  root.className = "card" + (item.images.length ? "" : " failed");
  root.dataset.promptId = item.prompt_id;
  const thumb = document.createElement("div");
  thumb.className = "thumb" + (p.width && p.width < 256 ? " small" : "");
  if (item.images.length) {
    const img = document.createElement("img");
    img.src = viewUrl(item.images[0]);
    img.alt = p.positive || "generated image";
    img.loading = "lazy";
    thumb.appendChild(img);
  } else {
    thumb.textContent = item.status === "interrupted" ? "Stopped" : `Failed: ${item.error || item.status}`;
  }
  root.appendChild(thumb);
  const meta = document.createElement("div");
  meta.className = "meta";
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = p.positive || "(empty prompt)";
  text.title = p.positive || "";
  meta.appendChild(text);
  if (p.negative) {
    const neg = document.createElement("div");
    neg.className = "neg text";
    neg.textContent = `− ${p.negative}`;
    meta.appendChild(neg);
  }
  const chips = document.createElement("div");
  chips.className = "chips";
  if (p.width) chips.appendChild(chip(`${p.width}×${p.height}`));
  if (p.steps !== undefined) chips.appendChild(chip(`${p.steps} steps`));
  if (p.cfg !== undefined) chips.appendChild(chip(`cfg ${p.cfg}`));
  if (p.seed !== undefined) chips.appendChild(chip(`seed ${p.seed}`));
  if (p.sampler_name) chips.appendChild(chip(`${p.sampler_name} · ${p.scheduler}`));
  if (p.slg) chips.appendChild(chip("SLG"));
  meta.appendChild(chips);
  const actions = document.createElement("div");
  actions.className = "actions";
  const use = document.createElement("button");
  use.type = "button";
  use.textContent = "Use settings";
  use.addEventListener("click", () => { applySettings(p); showMessage("Settings loaded from the gallery."); });
  actions.appendChild(use);
  if (item.images.length) {
    const open = document.createElement("a");
    open.href = viewUrl(item.images[0]);
    open.target = "_blank";
    open.textContent = "Open";
    actions.appendChild(open);
  }
  meta.appendChild(actions);
  root.appendChild(meta);
  return root;
}

async function loadGallery() {
  try {
    const { items } = await api("/sd35/gallery?max_items=60");
    const gallery = $("gallery");
    gallery.replaceChildren(...items.map(card));
    $("empty").hidden = items.length > 0;
  } catch (e) {
    showMessage(`Could not load the gallery: ${e.message}`, true);
  }
}

// ---------- loading workflows and PNGs ----------
async function loadFile(file) {
  try {
    const answer = await api("/sd35/workflow", { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    if (!answer.params || answer.params.steps === undefined) throw new Error("No sampler found in this workflow.");
    applySettings(answer.params);
    showMessage(`Loaded settings from ${file.name}.`);
  } catch (e) {
    showMessage(`Could not load ${file.name}: ${e.message}`, true);
  }
}

function setupDrop() {
  let depth = 0;
  const overlay = $("drop-overlay");
  window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; overlay.hidden = false; });
  window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) overlay.hidden = true; });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) loadFile(file);
  });
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) loadFile(e.target.files[0]); e.target.value = ""; });
}

// ---------- start ----------
// a COMBO input in /object_info: [[choices...], {...}] (legacy) or ["COMBO", {options: [...]}] (v3 nodes)
function choicesOf(entry) {
  if (!entry) return [];
  if (Array.isArray(entry[0])) return entry[0];
  return (entry[0] === "COMBO" && entry[1] && entry[1].options) || [];
}

function pick(names, pattern, fallback) {
  return names.find((n) => pattern.test(n)) || fallback;
}

async function loadChoices() {
  try {
    const info = await api("/object_info");
    const ks = info.KSampler.input.required;
    fillSelect($("sampler"), choicesOf(ks.sampler_name), "dpmpp_2m");
    fillSelect($("scheduler"), choicesOf(ks.scheduler), "sgm_uniform");
    const ckpts = choicesOf(info.CheckpointLoaderSimple && info.CheckpointLoaderSimple.input.required.ckpt_name);
    const clips = choicesOf(info.TripleCLIPLoader && info.TripleCLIPLoader.input.required.clip_name1);
    state.models.ckpt = pick(ckpts, /medium/i, ckpts[0] || state.models.ckpt);
    state.models.clips = [
      pick(clips, /clip_g/i, state.models.clips[0]), pick(clips, /clip_l/i, state.models.clips[1]),
      pick(clips, /t5/i, state.models.clips[2]),
    ];
  } catch (e) {
    showMessage(`Could not read the node list: ${e.message}`, true);
  }
}

function init() {
  setupSizes();
  setupDrop();
  $("form").addEventListener("submit", queuePrompt);
  $("interrupt").addEventListener("click", () => api("/interrupt", { method: "POST" }).catch((e) => showMessage(e.message, true)));
  $("dice").addEventListener("click", () => { $("seed").value = randomSeed(); $("randomize").checked = false; });
  $("prompt").addEventListener("input", updateTokens);
  loadChoices();
  loadGallery();
  updateTokens();
  connect();
}

init();
