// The results page: batch scoring's rows, filtered and sorted by the server; open an image; send it to labeling.
"use strict";

const PAGE = 50;
const view = { offset: 0, total: 0, urls: [], sequence: 0 };

function fillSelect(select, values, describe) {
  const chosen = select.value;
  select.replaceChildren(new Option("any", ""));
  for (const value of values) select.appendChild(new Option(describe ? describe(value) : value, value));
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

async function loadOptions() {
  const options = await api("/api/results/options");
  fillSelect($("filter-label"), options.labels);
  fillSelect($("filter-folder"), options.folders);
  const versions = options.model_versions;
  fillSelect($("filter-version"), versions.map((v) => v.model_version), (version) => {
    const v = versions.find((x) => x.model_version === version);
    const current = version === options.current_model_version ? ", the service's model" : "";
    return `${version} (${v.model_name}, ${v.images} images${current})`;
  });
  $("model").textContent = `${versions.length} model version(s) in the database; the service's model is ` +
    `version ${options.current_model_version}`;
}

function query() {
  const params = new URLSearchParams({ sort: $("sort").value, limit: PAGE, offset: view.offset });
  const add = (name, value) => { if (value !== "") params.set(name, value); };
  add("label", $("filter-label").value);
  add("score_min", $("filter-min").value);
  add("score_max", $("filter-max").value);
  add("model_version", $("filter-version").value);
  add("folder", $("filter-folder").value);
  return params;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  row.appendChild(td);
  return td;
}

async function openImage(path) {
  try {
    $("viewer-image").src = await imageUrl("/api/results/image?large=true&path=" + encodeURIComponent(path));
    $("viewer").hidden = false;
  } catch (error) {
    setStatus(`Cannot open ${path}: ${error.message}`, true);
  }
}

async function send(result, button) {
  try {
    const answer = await api("/api/results/request", { method: "POST", json: { path: result.path } });
    button.disabled = true;
    button.textContent = "in the queue";
    setStatus(`Sent ${answer.item} to the labeling queue (it comes first there).`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function loadRows() {
  const asked = ++view.sequence;
  $("rows").dataset.state = "loading";
  const body = await api("/api/results?" + query().toString());
  if (asked !== view.sequence) return;  // a newer request was sent meanwhile: its answer is the one to show
  view.total = body.total;
  for (const url of view.urls) URL.revokeObjectURL(url);
  view.urls = [];
  const tbody = $("rows");
  tbody.replaceChildren();
  for (const result of body.rows) {
    const row = document.createElement("tr");
    row.className = "result" + (result.exists ? "" : " missing");
    row.dataset.path = result.path;
    const thumb = cell(row, "");
    if (result.exists) {
      const img = document.createElement("img");
      img.alt = result.path;
      img.addEventListener("click", () => openImage(result.path));
      thumb.appendChild(img);
      imageUrl("/api/results/image?path=" + encodeURIComponent(result.path))
        .then((url) => { view.urls.push(url); img.src = url; }).catch(() => { img.alt = "cannot show"; });
    }
    cell(row, result.path + (result.exists ? "" : " (no longer there)"), "path");
    cell(row, result.label, "label");
    cell(row, result.score.toFixed(3), "score");
    cell(row, result.margin.toFixed(3), "margin");
    cell(row, result.model_version, "version");
    const actions = cell(row, "");
    if (result.item) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "send";
      button.textContent = "send to labeling";
      button.addEventListener("click", () => send(result, button));
      actions.appendChild(button);
    }
    tbody.appendChild(row);
  }
  const last = Math.min(view.offset + body.rows.length, view.total);
  $("count").textContent = view.total ? `${view.offset + 1}-${last} of ${view.total} images` : "no image matches";
  $("previous").disabled = view.offset === 0;
  $("next").disabled = last >= view.total;
  $("rows").dataset.state = "ready";
  setStatus("");
}

async function reload(resetOffset) {
  if (resetOffset) view.offset = 0;
  try {
    await loadRows();
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function setUp() {
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); reload(true); });
  for (const id of ["filter-label", "filter-version", "filter-folder", "sort"]) {
    $(id).addEventListener("change", () => reload(true));
  }
  $("previous").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); reload(false); });
  $("next").addEventListener("click", () => { view.offset += PAGE; reload(false); });
  $("viewer").addEventListener("click", () => { $("viewer").hidden = true; });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") $("viewer").hidden = true; });
  const start = async () => {
    try { await loadOptions(); } catch (error) { setStatus(error.message, true); return; }
    await reload(true);
  };
  await setUpKey(start);
  await start();
}

setUp();
