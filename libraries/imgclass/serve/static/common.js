// Shared by the labeling (/label) and results (/results) pages: the API key and authenticated requests.
// The key is kept in this browser tab only (sessionStorage), as on the service's main page.
"use strict";

const KEY_STORAGE = "imgclass-api-key";
const $ = (id) => document.getElementById(id);

function authHeaders() {
  const key = ($("api-key").value || "").trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

// fetch JSON from the service; throws Error("Error <status>: <detail>") on a non-2xx answer.
async function api(path, options) {
  const init = Object.assign({}, options || {});
  init.headers = Object.assign({}, authHeaders(), init.json ? { "Content-Type": "application/json" } : {},
                               init.headers || {});
  if (init.json) { init.body = JSON.stringify(init.json); delete init.json; }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) $("key-section").hidden = false;
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || response.statusText);
    const error = new Error(`Error ${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// An image the API serves (it needs the key, which an <img src> cannot send): an object URL of its bytes.
async function imageUrl(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw new Error(`Error ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

async function setUpKey(onChange) {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, key.value));
  key.addEventListener("change", onChange);
  try {
    const health = await (await fetch("/health")).json();
    $("key-section").hidden = !health.api_key_required;
  } catch (error) {
    setStatus("The service does not answer: " + error, true);
  }
}
