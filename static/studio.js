// The studio's page: plain JavaScript, no build step; everything it loads comes from studio.py.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, images: [], content: null, styles: [], watched: null, source: null,
                records: [], imageVersion: null, selected: new Set(), stream: null };

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

function showError(element, error) {
  element.textContent = error ? (error.message || String(error)) : "";
  element.hidden = !error;
}

function duration(seconds) {  // as progress.duration in Python: 12.3s, 4m05s, 3h02m
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "?";
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  let minutes = Math.floor(Math.round(seconds) / 60); const rest = Math.round(seconds) % 60;
  if (minutes < 60) return `${minutes}m${String(rest).padStart(2, "0")}s`;
  const hours = Math.floor(minutes / 60); minutes %= 60;
  return `${hours}h${String(minutes).padStart(2, "0")}m`;
}

function number(x) {  // 4 significant digits; powers of ten for the losses' large values
  if (typeof x !== "number") return String(x);
  return Math.abs(x) >= 1e5 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(3) : Number(x.toPrecision(4)).toString();
}

// --- images ------------------------------------------------------------------------------------

function choice(image, selected, onclick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "choice" + (selected ? " selected" : "");
  button.title = image.name;
  button.dataset.id = image.id;
  const img = document.createElement("img");
  img.src = `/api/images/${image.id}`;
  img.alt = image.name;
  const label = document.createElement("span");
  label.textContent = image.name;
  button.append(img, label);
  button.addEventListener("click", onclick);
  return button;
}

function renderImages() {
  const content = $("content-choices"), styles = $("style-choices");
  content.replaceChildren(...state.images.map((image) => choice(image, image.id === state.content, () => {
    state.content = image.id; renderImages();
  })));
  styles.replaceChildren(...state.images.map((image) => choice(image, state.styles.includes(image.id), () => {
    state.styles = state.styles.includes(image.id) ? state.styles.filter((id) => id !== image.id)
                                                   : [...state.styles, image.id];
    renderImages();
  })));
}

async function loadImages() {
  state.images = await api("/api/images");
  renderImages();
}

async function upload(file) {
  return api(`/api/uploads?name=${encodeURIComponent(file.name)}`,
             { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
}

async function uploadInto(input, role) {
  showError($("error"), null);
  try {
    for (const file of input.files) {
      const image = await upload(file);
      if (role === "content") state.content = image.id;
      else if (!state.styles.includes(image.id)) state.styles.push(image.id);
    }
    await loadImages();
  } catch (error) {
    showError($("error"), error);
  }
  input.value = "";
}

// --- settings ----------------------------------------------------------------------------------

function shown(value) {  // a preset's value as the command line writes it
  if (Array.isArray(value)) return value.map((scale) => (scale[1] ? `${scale[0]}:${scale[1]}` : scale[0])).join(",");
  if (value && typeof value === "object") return Object.entries(value).map(([k, w]) => `${k}:${w}`).join(",");
  return String(value);
}

function showPreset() {
  const preset = state.info.presets[$("preset").value];
  for (const element of $("settings").elements) {
    if (!element.name || element.name === "preset" || !(element.name in preset)) continue;
    if (element.tagName === "SELECT") element.options[0].textContent = `preset (${shown(preset[element.name])})`;
    else element.placeholder = shown(preset[element.name]);
  }
}

function settingsFromForm() {
  const settings = {};
  for (const element of $("settings").elements) {
    if (!element.name || element.value.trim() === "") continue;
    const value = element.value.trim();
    settings[element.name] = element.name === "normalize_network" ? value === "true" : value;
  }
  return settings;
}

async function start(event) {
  event.preventDefault();
  showError($("error"), null);
  if (!state.content) return showError($("error"), "Choose a content image (click one, or upload a photo).");
  if (!state.styles.length) return showError($("error"), "Choose at least one style image.");
  try {
    const run = await api("/api/runs", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ content: state.content, styles: state.styles, settings: settingsFromForm() }),
    });
    watch(run.id);
    loadRuns();
  } catch (error) {
    showError($("error"), error);
  }
}

// --- the live view -----------------------------------------------------------------------------

function watch(runId) {
  if (state.source) state.source.close();
  state.watched = runId;
  state.records = [];
  state.imageVersion = null;
  localStorage.setItem("studio-watched", runId);
  $("live").hidden = false;
  $("run-id").textContent = runId;
  const source = new EventSource(`/api/runs/${runId}/events`);
  state.source = source;
  source.addEventListener("progress", (event) => showRun(JSON.parse(event.data)));
  source.addEventListener("end", () => { source.close(); loadRuns(); });
}

function showRun(run) {
  state.records.push(...run.records);
  $("run-state").textContent = run.state + (run.place ? ` (place ${run.place} in the queue)` : "");
  $("run-state").className = `badge ${run.state}`;
  const total = run.total || 0, done = run.iteration || 0;
  $("run-progress").textContent = run.state === "queued"
    ? `waiting: ${run.place - 1} run${run.place === 2 ? "" : "s"} ahead`
    : total ? `iteration ${done}/${total} · ${duration(run.elapsed)} elapsed · ETA ${duration(run.eta)}` : "starting…";
  $("run-bar").value = total ? done / total : 0;
  const losses = run.losses || {};
  $("run-losses").replaceChildren(...["content_loss", "style_loss", "tv_loss", "total_loss"]
    .filter((key) => key in losses).map((key) => {
      const row = document.createElement("tr");
      row.innerHTML = `<td>${key.replace("_loss", "").replace("tv", "total variation")}</td><td></td>`;
      row.lastChild.textContent = number(losses[key]);
      return row;
    }));
  $("run-command").textContent = run.command || "";
  showError($("run-error"), run.error || null);
  $("stop").hidden = !(run.state === "running" || run.state === "queued");
  $("stop").textContent = run.state === "queued" ? "Take off the queue" : "Stop (keeps the current image)";
  // The file and its version: the result of the last iteration has the last snapshot's version.
  const shown = `${run.image}?v=${run.image_version}`;
  if (run.image && shown !== state.imageVersion) {
    state.imageVersion = shown;
    $("run-image").src = `/api/runs/${run.id}/files/${run.image}?v=${run.image_version}`;
    $("run-caption").textContent = run.image === "result.png" ? `result, iteration ${run.iteration}`
                                                               : `iteration ${run.image_version}`;
  }
  for (const [link, name] of [["download-result", "result.png"], ["download-settings", "settings.json"],
                              ["download-losses", "losses.png"]]) {
    $(link).hidden = !run.files.includes(name);
    $(link).href = `/api/runs/${run.id}/files/${name}?download=1`;
  }
  drawChart();
}

function drawChart() {  // total loss against iteration, log scale
  const canvas = $("run-chart"), context = canvas.getContext("2d");
  const points = state.records.filter((r) => r[1] > 0 && isFinite(r[1]));
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (points.length < 2) return;
  const left = 56, bottom = canvas.height - 22, width = canvas.width - left - 8, height = bottom - 8;
  const logs = points.map((r) => Math.log10(r[1]));
  const low = Math.min(...logs), high = Math.max(...logs) + 1e-9;
  const first = points[0][0], last = points[points.length - 1][0] || 1;
  const x = (it) => left + ((it - first) / Math.max(last - first, 1)) * width;
  const y = (log) => bottom - ((log - low) / (high - low)) * height;
  context.strokeStyle = "#bbb"; context.strokeRect(left, 8, width, height);
  context.fillStyle = "#555"; context.font = "11px sans-serif";
  context.fillText(`${number(10 ** high)}`, 2, 16); context.fillText(`${number(10 ** low)}`, 2, bottom);
  context.fillText(`iteration ${last}`, left + width - 80, canvas.height - 6);
  context.fillText("total loss (log)", left + 4, 22);
  context.strokeStyle = "#3553a5"; context.lineWidth = 1.5; context.beginPath();
  points.forEach((r, i) => (i ? context.lineTo(x(r[0]), y(logs[i])) : context.moveTo(x(r[0]), y(logs[i]))));
  context.stroke();
}

// --- the gallery and the comparison ------------------------------------------------------------

function card(run) {
  const element = document.createElement("div");
  element.className = "card";
  element.dataset.id = run.id;
  const image = run.files.includes("result.png") ? "result.png" : run.files.includes("current.png") ? "current.png" : null;
  if (image) {
    const img = document.createElement("img");
    img.src = `/api/runs/${run.id}/files/${image}?v=${run.image_version}`;
    img.alt = `run ${run.id}`;
    img.addEventListener("click", () => watch(run.id));
    element.append(img);
  } else {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = run.place ? `queued, place ${run.place}` : run.state;
    element.append(empty);
  }
  const text = document.createElement("div");
  text.textContent = `${run.content} × ${run.styles.join(" + ")} · ${run.preset}`;
  const row = document.createElement("div");
  row.className = "row";
  row.innerHTML = `<span class="badge ${run.state}"></span><label><input type="checkbox"> compare</label>`;
  row.querySelector(".badge").textContent = run.state + (run.place ? ` #${run.place}` : "");
  const box = row.querySelector("input");
  box.checked = state.selected.has(run.id);
  box.addEventListener("change", () => {
    box.checked ? state.selected.add(run.id) : state.selected.delete(run.id);
    $("compare").disabled = state.selected.size < 2;
  });
  const view = document.createElement("button");
  view.type = "button"; view.textContent = "view";
  view.addEventListener("click", () => watch(run.id));
  row.append(view);
  if (!["queued", "running"].includes(run.state)) {
    const remove = document.createElement("button");
    remove.type = "button"; remove.textContent = "delete"; remove.title = "delete this run's folder";
    remove.addEventListener("click", async () => {
      if (!confirm(`Delete run ${run.id} and its files?`)) return;
      await api(`/api/runs/${run.id}`, { method: "DELETE" });
      state.selected.delete(run.id);
      loadRuns();
    });
    row.append(remove);
  }
  element.append(text, row);
  return element;
}

async function loadRuns() {
  const runs = await api("/api/runs");
  const ids = new Set(runs.map((run) => run.id));
  for (const id of state.selected) if (!ids.has(id)) state.selected.delete(id);
  $("compare").disabled = state.selected.size < 2;
  if (runs.length) $("gallery").replaceChildren(...runs.map(card));
  else $("gallery").innerHTML = '<p class="note">No runs yet.</p>';
  return runs;
}

async function compare() {
  const ids = [...state.selected].sort();
  const result = await api(`/api/compare?ids=${ids.join(",")}`);
  $("compare-view").hidden = false;
  $("compare-images").replaceChildren(...result.runs.map((run) => {
    const figure = document.createElement("figure");
    figure.innerHTML = "<img><figcaption></figcaption>";
    figure.querySelector("img").src = `/api/runs/${run.id}/files/result.png`;
    figure.querySelector("img").alt = `run ${run.id}`;
    figure.querySelector("figcaption").textContent = run.id;
    return figure;
  }));
  const table = $("compare-table");
  const header = document.createElement("tr");
  header.innerHTML = "<th>setting</th>";
  for (const run of result.runs) header.append(Object.assign(document.createElement("th"), { textContent: run.id }));
  const rows = result.keys.map((key) => {
    const row = document.createElement("tr");
    row.className = result.differ.includes(key) ? "differs" : "same";
    row.append(Object.assign(document.createElement("th"), { textContent: key }));
    for (const run of result.runs) {
      const value = run.values[key];
      row.append(Object.assign(document.createElement("td"), {
        textContent: value === undefined ? "—" : typeof value === "object" && value !== null ? JSON.stringify(value) : String(value),
      }));
    }
    return row;
  });
  table.replaceChildren(header, ...rows);
  $("compare-view").scrollIntoView({ behavior: "smooth" });
}

// --- one pass with a trained model -------------------------------------------------------------

async function loadModels() {
  const { folder, models } = await api("/api/models");
  $("model").replaceChildren(...models.map((name) => Object.assign(document.createElement("option"), { textContent: name })));
  $("fast-hint").textContent = models.length ? "" :
    `No trained models in ${folder}/ yet: train one with fast_style.py train --model ${folder}/NAME, then reload.`;
  for (const id of ["fast-upload", "webcam", "model"]) $(id).disabled = !models.length;
}

async function stylizeOnce(blob) {
  showError($("fast-error"), null);
  const model = $("model").value;
  const colors = $("fast-colors").checked ? "?preserve_colors=1" : "";
  const result = await api(`/api/models/${encodeURIComponent(model)}/stylize${colors}`,
                           { method: "POST", body: blob, headers: { "Content-Type": "application/octet-stream" } });
  const old = $("fast-result").src;
  $("fast-result").src = URL.createObjectURL(result);
  $("fast-result").hidden = false;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

async function startWebcam() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    state.stream = stream;
    $("video").srcObject = stream;
    $("video").hidden = $("snap").hidden = $("continuous-label").hidden = false;
  } catch (error) {
    showError($("fast-error"), `The webcam is not available (${error.message}).`);
  }
}

function frame() {
  const video = $("video"), canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function snap() {
  do {
    try {
      await stylizeOnce(await frame());
    } catch (error) {
      showError($("fast-error"), error);
      break;
    }
  } while ($("continuous").checked && state.stream);
}

// --- start -------------------------------------------------------------------------------------

async function main() {
  state.info = await api("/api/info");
  $("network").textContent = state.info.network;
  $("preset").replaceChildren(...Object.keys(state.info.presets).map((name) =>
    Object.assign(document.createElement("option"), { textContent: name, selected: name === "fast" })));
  showPreset();
  $("preset").addEventListener("change", showPreset);
  $("settings").addEventListener("submit", start);
  $("content-upload").addEventListener("change", () => uploadInto($("content-upload"), "content"));
  $("style-upload").addEventListener("change", () => uploadInto($("style-upload"), "style"));
  $("stop").addEventListener("click", () => api(`/api/runs/${state.watched}/stop`, { method: "POST" }).then(loadRuns));
  $("compare").addEventListener("click", () => compare().catch((error) => alert(error.message)));
  $("close-compare").addEventListener("click", () => { $("compare-view").hidden = true; });
  $("only-differences").addEventListener("change", (event) =>
    $("compare-table").classList.toggle("only-differences", event.target.checked));
  $("fast-upload").addEventListener("change", async () => {
    const file = $("fast-upload").files[0];
    if (file) await stylizeOnce(file).catch((error) => showError($("fast-error"), error));
    $("fast-upload").value = "";
  });
  $("webcam").addEventListener("click", startWebcam);
  $("snap").addEventListener("click", snap);
  await Promise.all([loadImages(), loadModels()]);
  const runs = await loadRuns();
  // The worker outlives the page: show the run in progress, else the one watched before a reload.
  const active = runs.find((run) => run.state === "running") || runs.find((run) => run.id === localStorage.getItem("studio-watched"));
  if (active) watch(active.id);
  setInterval(loadRuns, 5000);
}

main().catch((error) => showError($("error"), error));
