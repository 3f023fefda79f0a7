// The imgclass web page: pick or drop an image, POST it to /predict, show the ranked labels as bars.
// Plain JavaScript, no build step; talks only to the server that served the page. The key field,
// authHeaders and setStatus come from common.js.
"use strict";

async function describeModel() {
  const health = await setUpKey(null);
  $("model").textContent = health
    ? `Model ${health.model_name} (version ${health.model_version}), ${health.num_labels} labels`
    : "The service does not answer";
}

function showResults(prediction) {
  const list = $("results");
  list.replaceChildren();
  for (const { label, probability } of prediction.top_k) {
    const percent = (100 * probability).toFixed(1);
    const item = document.createElement("li");
    item.className = "result";
    item.dataset.label = label;
    item.innerHTML = '<div class="row"><span class="label"></span><span class="probability"></span></div>' +
                     '<div class="bar"><div></div></div>';
    item.querySelector(".label").textContent = label;
    item.querySelector(".probability").textContent = percent + " %";
    item.querySelector(".bar > div").style.width = percent + "%";
    list.appendChild(item);
  }
}

async function classify(file) {
  if (!file) return;
  $("preview").src = URL.createObjectURL(file);
  $("file-name").textContent = file.name;
  $("results").replaceChildren();
  $("result").hidden = false;
  setStatus("Classifying " + file.name + " ...");
  const form = new FormData();
  form.append("images", file, file.name);
  try {
    const response = await fetch("/predict", { method: "POST", body: form, headers: authHeaders() });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      if (response.status === 401) $("key-section").hidden = false;
      setStatus(`Error ${response.status}: ${body.detail || response.statusText}`, true);
      return;
    }
    const prediction = body.predictions[0];
    showResults(prediction);
    setStatus(`${prediction.label} (${(100 * prediction.probability).toFixed(1)} %), ` +
              `${body.executionTimeMs.toFixed(0)} ms on the server`);
  } catch (error) {
    setStatus("Request failed: " + error, true);
  }
}

function setUp() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = "";  // picking the same file again fires "change" again
    classify(file);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.remove("dragging"); });
  }
  zone.addEventListener("drop", (event) => classify(event.dataTransfer.files[0]));
  describeModel();
}

setUp();
