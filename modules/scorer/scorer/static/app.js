// The operator's page: score an image, see the model, watch the scorer's health.
// Plain JavaScript, no build step, nothing fetched from outside the device.
"use strict";

const KEY_STORE = "scorer-api-key";
const HEALTH_EVERY_MS = 5000;
const WINDOW_MS = 5 * 60 * 1000; // "the last minutes" of the health panel

const $ = (id) => document.getElementById(id);
let lastResult = null;
let lastImage = null;
const samples = []; // {at, count, buckets: Map(le -> cumulative count)} of the total stage

// --- talking to the scorer -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let keyPrompt = null; // one prompt, however many requests were refused meanwhile

function askForKey(failed) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  $("key-error").hidden = !failed;
  $("key-error").textContent = failed ? "That key was refused; try another." : "";
  keyPrompt = new Promise((resolve) => {
    $("key-form").onsubmit = () => {
      sessionStorage.setItem(KEY_STORE, $("key").value.trim());
      keyPrompt = null;
      resolve();
    };
    dialog.showModal();
    $("key").focus();
  });
  return keyPrompt;
}

async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      await askForKey(Boolean(key));
      continue;
    }
    if (!response.ok) {
      let code = `HTTP ${response.status}`;
      let message = response.statusText;
      try {
        const body = await response.json();
        code = body.error.code;
        message = body.error.message;
      } catch (_) { /* not our error shape: keep the status */ }
      throw new ApiError(response.status, code, message);
    }
    return response;
  }
}

// --- scoring -------------------------------------------------------------------------------

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function score(file) {
  showError("");
  try {
    const response = await api("/score", {
      method: "POST",
      // The scorer judges the bytes: a file the browser does not call an image goes as bytes.
      headers: { "Content-Type": file.type.startsWith("image/") ? file.type : "application/octet-stream" },
      body: file,
    });
    lastResult = await response.json();
    lastImage = await createImageBitmap(file);
    render();
  } catch (error) {
    lastResult = null;
    $("detection").hidden = true;
    $("bars").hidden = true;
    $("timing").textContent = "";
    showError(error instanceof ApiError ? `${error.code}: ${error.message}` : String(error));
  }
}

const percent = (p) => `${(p * 100).toFixed(1)} %`;

function render() {
  const threshold = Number($("threshold").value);
  $("threshold-value").textContent = `${Math.round(threshold * 100)} %`;
  if (!lastResult) return;
  const shown = lastResult.predictions.filter((p) => p.probability >= threshold);
  const detection = lastResult.model.kind === "detection";
  $("detection").hidden = false; // the picture, with the boxes of a detection model
  $("bars").hidden = detection;
  drawBoxes(detection ? shown : []);
  if (!detection) drawBars(shown);
  const t = lastResult.timing;
  $("timing").textContent =
    `${shown.length} of ${lastResult.predictions.length} shown · decode ${t.decodeMs} ms, ` +
    `inference ${t.inferenceMs} ms, total ${t.totalMs} ms on ${lastResult.provider} · ` +
    `model ${lastResult.model.name} ${lastResult.model.version}`;
}

function drawBars(shown) {
  const list = $("bars");
  list.replaceChildren(...shown.map((p) => {
    const item = document.createElement("li");
    item.dataset.tag = p.tagName;
    item.dataset.probability = p.probability;
    item.textContent = `${p.tagName} ${percent(p.probability)}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(p.probability * 100, 0.5)}%`;
    bar.setAttribute("aria-hidden", "true");
    item.append(bar);
    return item;
  }));
}

const COLOURS = ["#d1242f", "#0b5cad", "#1d6b2a", "#8250df", "#bc4c00", "#0a7c86"];

function drawBoxes(shown) {
  const canvas = $("canvas");
  canvas.width = lastImage.width;
  canvas.height = lastImage.height;
  const context = canvas.getContext("2d");
  context.drawImage(lastImage, 0, 0);
  const line = Math.max(2, Math.round(canvas.width / 300));
  context.lineWidth = line;
  context.font = `${line * 7}px system-ui, sans-serif`;
  const items = shown.map((p) => {
    const b = p.boundingBox;
    const [x, y, w, h] = [b.left * canvas.width, b.top * canvas.height,
      b.width * canvas.width, b.height * canvas.height];
    const colour = COLOURS[p.tagId % COLOURS.length];
    context.strokeStyle = colour;
    context.strokeRect(x, y, w, h);
    const label = `${p.tagName} ${percent(p.probability)}`;
    const textHeight = line * 8;
    context.fillStyle = colour;
    context.fillRect(x, Math.max(0, y - textHeight), context.measureText(label).width + 2 * line, textHeight);
    context.fillStyle = "#fff";
    context.fillText(label, x + line, Math.max(textHeight - line, y - line));
    const item = document.createElement("li");
    Object.assign(item.dataset, { tag: p.tagName, probability: p.probability,
      left: b.left, top: b.top, width: b.width, height: b.height });
    item.textContent = `${label} at ${Math.round(b.left * 100)} %, ${Math.round(b.top * 100)} % ` +
      `(${Math.round(b.width * 100)} % x ${Math.round(b.height * 100)} % of the image)`;
    return item;
  });
  $("boxes").replaceChildren(...items);
}

// --- the model and the scorer's health ---------------------------------------------------

function fill(list, rows) {
  list.replaceChildren(...rows.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  }));
}

async function loadModel() {
  const model = await (await api("/model")).json();
  const shape = model.inputShape.map((d) => (d < 0 ? "any" : d)).join(" x ");
  const fallbacks = model.providerFallbacks.map((f) => `${f.provider}: ${f.reason}`);
  fill($("model"), [
    ["name", model.name], ["version", model.version], ["kind", `${model.kind} (${model.format})`],
    ["labels", `${model.labels.length}: ${model.labels.join(", ")}`],
    ["input", `${model.inputName} ${shape} ${model.inputType}`],
    ["provider", model.providers.join(", ") || "not loaded yet"],
    ["GPU fallbacks", fallbacks.join("; ") || "none"],
    ["SHA-256", model.sha256],
  ]);
  if (!model.providers.length) setTimeout(loadModel, 2000);
}

function parseMetrics(text) {
  const codes = new Map();
  const buckets = new Map();
  let count = 0;
  for (const line of text.split("\n")) {
    let match = line.match(/^scorer_requests_total\{code="([^"]+)"\} (\S+)/);
    if (match) codes.set(match[1], Number(match[2]));
    match = line.match(/^scorer_stage_seconds_bucket\{(.*)\} (\S+)/);
    if (match && match[1].includes('stage="total"')) {
      buckets.set(match[1].match(/le="([^"]+)"/)[1], Number(match[2]));
    }
    match = line.match(/^scorer_stage_seconds_count\{stage="total"\} (\S+)/);
    if (match) count = Number(match[1]);
  }
  return { codes, buckets, count };
}

function quantile(first, last, q) {
  // From the difference of two cumulative histograms: the upper bound of the bucket where
  // the q-th answer falls (coarse, as Prometheus' own histogram_quantile without interpolation).
  const total = last.count - first.count;
  if (total <= 0) return null;
  for (const [le, value] of last.buckets) {
    if (value - (first.buckets.get(le) || 0) >= q * total) return le === "+Inf" ? "> 5 s" : `≤ ${Number(le) * 1000} ms`;
  }
  return null;
}

async function checkHealth() {
  try {
    const ready = await fetch("/readyz");
    $("readiness").textContent = ready.ok ? "ready" : "not ready";
    $("readiness").className = `badge ${ready.ok ? "ok" : "bad"}`;
    const metrics = parseMetrics(await (await api("/metrics")).text());
    const now = Date.now();
    samples.push({ at: now, ...metrics });
    while (samples.length > 2 && now - samples[0].at > WINDOW_MS) samples.shift();
    const first = samples[0];
    const seconds = (now - first.at) / 1000;
    const rate = seconds > 0 ? ((metrics.count - first.count) / seconds).toFixed(2) : "–";
    fill($("health"), [
      ["window", `${Math.round(seconds)} s`],
      ["scored per second", rate],
      ["p50 latency", quantile(first, metrics, 0.5) || "no requests"],
      ["p95 latency", quantile(first, metrics, 0.95) || "no requests"],
    ]);
    $("codes").tBodies[0].replaceChildren(...[...metrics.codes].map(([code, value]) => {
      const row = document.createElement("tr");
      for (const text of [code, String(value)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }));
    await showEdge();
  } catch (error) {
    $("readiness").textContent = "unreachable";
    $("readiness").className = "badge bad";
  }
}

async function showEdge() {
  const edge = await (await api("/edge")).json();
  $("edge-panel").hidden = !edge.publisher;
  if (!edge.publisher) return;
  const p = edge.publisher;
  const rows = [
    ["publisher", p.connected ? "connected to edgeHub" : "not connected"],
    ["results sent / queued / dropped", `${p.sent} / ${p.queued} / ${p.dropped}`],
  ];
  if (p.lastError) rows.push(["last error", p.lastError]);
  const r = edge.relay;
  if (!r) rows.push(["relay", "not configured (SCORER_RELAY_METRICS_URL)"]);
  else if (!r.reachable) rows.push(["relay", `unreachable: ${r.error}`]);
  else {
    rows.push(["relay queued", String(r.queued)],
      ["relay sent / upstream messages", `${r.sent} / ${r.upstreamMessages}`],
      ["relay dropped / rejected", `${r.dropped} / ${r.rejected}`],
      ["relay delivery stalled", `${r.deliveryStalledSeconds} s`]);
    // a damaged spool replaced by an empty one: what it held was lost (an older relay: absent)
    if (r.spoolsSetAside > 0) rows.push(["relay spools set aside (lost)", String(r.spoolsSetAside)]);
  }
  fill($("edge"), rows);
}

// --- wiring ---------------------------------------------------------------------------------

function wire() {
  $("image").addEventListener("change", (event) => {
    if (event.target.files.length) score(event.target.files[0]);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) score(event.dataTransfer.files[0]);
  });
  $("threshold").addEventListener("input", render);
  render();
  loadModel().catch((error) => showError(`model: ${error.message}`));
  checkHealth();
  setInterval(checkHealth, HEALTH_EVERY_MS);
}

wire();
