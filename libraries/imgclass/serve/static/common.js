// Shared by the service's pages (/, /label, /results): the API key field and authenticated requests.
// The key is kept in this browser tab only (sessionStorage).
"use strict";

const KEY_STORAGE = "imgclass-api-key";
const $ = (id) => document.getElementById(id);

// The key field, the same on every page (the page has an empty <section id="key-section" hidden>).
$("key-section").innerHTML =
  '<label for="api-key">API key</label>' +
  '<input id="api-key" type="password" autocomplete="off" placeholder="this server requires a key">' +
  '<span class="muted">kept in this tab only</span>';

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

// Restore the key, keep it as it is typed, call onChange when it is entered; show the field if the
// service needs a key. Returns the service's /health answer (null if it does not answer).
async function setUpKey(onChange) {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, key.value));
  if (onChange) {
    key.addEventListener("change", onChange);
    $("key-section").querySelector(".muted").textContent += "; press Enter";
  }
  try {
    const health = await (await fetch("/health")).json();
    $("key-section").hidden = !health.api_key_required;
    return health;
  } catch (error) {
    setStatus("The service does not answer: " + error, true);
    return null;
  }
}
