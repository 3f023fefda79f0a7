// The labeling page: the queue least sure first, one keystroke per decision, undo, retrain.
// Decisions are sent one after the other (a chain of promises), so fast typing is applied in order,
// each keystroke to the image shown when it is processed.
"use strict";

const state = { items: [], classes: [], shownUrl: null, chain: Promise.resolve(), polling: null, queue: null };

function current() { return state.items[0] || null; }

function percent(p) { return (100 * p).toFixed(1) + " %"; }

async function showCurrent() {
  const item = current();
  $("card").hidden = !item;
  $("empty").hidden = Boolean(item) || !state.queue;
  if (!item) return;
  $("current-item").textContent = item.item;
  $("current-item").dataset.item = item.item;
  $("current-label").textContent = item.kind === "labeled"
    ? `filed under "${item.label}"` + (item.requested ? " (sent from the results page)" : "")
    : "not labeled yet" + (item.requested ? " (sent from the results page)" : "");
  const guesses = $("guesses");
  guesses.replaceChildren();
  for (const [label, probability] of item.top) {
    const li = document.createElement("li");
    li.textContent = `${label} ${percent(probability)}`;
    guesses.appendChild(li);
  }
  for (const button of $("classes").children) {
    button.classList.toggle("predicted", button.dataset.label === item.predicted);
  }
  try {
    const url = await imageUrl("/api/label/image?item=" + encodeURIComponent(item.item));
    if (current() !== item) { URL.revokeObjectURL(url); return; }
    if (state.shownUrl) URL.revokeObjectURL(state.shownUrl);
    state.shownUrl = url;
    $("current-image").src = url;
  } catch (error) {
    setStatus(`Cannot show ${item.item}: ${error.message}`, true);
  }
}

function showClasses(classes) {
  if (classes.join("\n") === state.classes.join("\n")) return;
  state.classes = classes;
  const box = $("classes");
  box.replaceChildren();
  classes.forEach((label, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.label = label;
    button.innerHTML = index < 9 ? `<kbd>${index + 1}</kbd> ` : "";
    button.appendChild(document.createTextNode(label));
    button.addEventListener("click", () => enqueue(() => decide("label", label)));
    box.appendChild(button);
  });
}

function showProgress(queue) {
  const scoring = queue.scoring || {};
  let text = `${queue.decided} decided, ${queue.in_queue} in the queue`;
  if (queue.not_scored_yet) text += `, ${queue.not_scored_yet} being scored by the model`;
  if (scoring.running) text += ` (scoring ${scoring.done}/${scoring.todo})`;
  if (scoring.error) text += `; scoring failed: ${scoring.error}`;
  $("progress").textContent = text;
  $("model").textContent = `Model ${queue.model_name} (version ${queue.model_version}); ranked by ` +
    `${queue.uncertainty}; unlabeled images in images/${queue.unlabeled_folder}/`;
}

function showRetrain(queue) {
  const retrain = queue.retrain;
  $("retrain").disabled = !queue.can_retrain || (retrain && retrain.state === "running");
  if (!queue.can_retrain) { $("retrain-status").textContent = "this service cannot retrain"; return; }
  if (!retrain || retrain.state === "idle") { $("retrain-status").textContent = ""; return; }
  const accuracy = (value) => (value === null || value === undefined ? "?" : (100 * value).toFixed(1) + " %");
  let text = `${retrain.state}: ${retrain.message}`;
  if (retrain.state === "done") {
    text = `done in ${retrain.seconds} s: test accuracy ${accuracy(retrain.accuracy_before)} -> ` +
      `${accuracy(retrain.accuracy_after)} (${retrain.test_images_after} test images); ${retrain.message}`;
  }
  $("retrain-status").textContent = text;
  $("retrain-status").dataset.state = retrain.state;
}

async function loadQueue(keepFirst) {
  const queue = await api("/api/label/queue?limit=50");
  state.queue = queue;
  showClasses(queue.classes);
  const first = keepFirst ? queue.items.find((i) => i.item === keepFirst) : null;
  state.items = first ? [first, ...queue.items.filter((i) => i !== first)] : queue.items;
  showProgress(queue);
  showRetrain(queue);
  await showCurrent();
  schedulePoll(queue);
}

function schedulePoll(queue) {
  const busy = queue.not_scored_yet > 0 || (queue.scoring && queue.scoring.running) ||
    (queue.retrain && queue.retrain.state === "running");
  clearTimeout(state.polling);
  if (busy) state.polling = setTimeout(() => enqueue(() => refresh()), 2000);
}

// Between decisions: the progress and the retrain status; the list itself only when it ran low or was empty.
async function refresh() {
  const shown = current();
  if (!shown || state.items.length < 5) { await loadQueue(shown && shown.item); return; }
  const queue = await api("/api/label/queue?limit=1");
  state.queue = Object.assign(state.queue, { decided: queue.decided, in_queue: queue.in_queue });
  showProgress(queue);
  showRetrain(queue);
  schedulePoll(queue);
}

async function loadLog() {
  const log = await api("/api/label/log?limit=15");
  const list = $("log");
  list.replaceChildren();
  for (const entry of log.entries) {
    const li = document.createElement("li");
    li.dataset.action = entry.action;
    const where = entry.target && entry.target !== entry.item ? ` -> ${entry.target}` : "";
    li.textContent = `#${entry.entry} ${entry.action} ${entry.item}${entry.label ? " as " + entry.label : ""}${where}`;
    list.appendChild(li);
  }
}

async function decide(decision, label) {
  const item = current();
  if (!item) return;
  const answer = await api("/api/label/decide", { method: "POST", json: { item: item.item, decision, label } });
  state.items.shift();
  if (decision === "skip") state.items.push(Object.assign({}, item, { skipped: true }));
  setStatus(`#${answer.entry} ${answer.action} ${answer.item}` + (answer.label ? ` as ${answer.label}` : "") +
            (answer.target && answer.target !== answer.item ? ` -> ${answer.target}` : ""));
  if (state.queue && decision !== "skip") state.queue.decided += 1;
  if (state.items.length < 5) await loadQueue(); else await showCurrent();
  if (state.queue) showProgress(state.queue);
  await loadLog();
}

async function undo() {
  let answer;
  try {
    answer = await api("/api/label/undo", { method: "POST" });
  } catch (error) {
    if (error.status === 404) { setStatus("Nothing to undo."); return; }
    throw error;
  }
  await loadQueue(answer.item);
  await loadLog();
  setStatus(`Undid #${answer.undoes}: ${answer.item} is back`);
}

async function retrain() {
  await api("/api/label/retrain", { method: "POST" });
  setStatus("Retraining started (steps 1-5 in the background); keep labeling.");
  await loadQueue(current() && current().item);
}

function enqueue(task) {
  state.chain = state.chain.then(task).catch((error) => setStatus(error.message || String(error), true));
  return state.chain;
}

function onKey(event) {
  if (event.target instanceof HTMLInputElement) return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault();
    enqueue(undo);
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[1-9]$/.test(event.key)) {
    const label = state.classes[Number(event.key) - 1];
    if (label !== undefined) { event.preventDefault(); enqueue(() => decide("label", label)); }
  } else if (event.key === "x") {
    event.preventDefault();
    enqueue(() => decide("exclude"));
  } else if (event.key === "s") {
    event.preventDefault();
    enqueue(() => decide("skip"));
  }
}

async function setUp() {
  document.addEventListener("keydown", onKey);
  $("exclude").addEventListener("click", () => enqueue(() => decide("exclude")));
  $("skip").addEventListener("click", () => enqueue(() => decide("skip")));
  $("undo").addEventListener("click", () => enqueue(undo));
  $("retrain").addEventListener("click", () => enqueue(retrain));
  await setUpKey(() => enqueue(async () => { await loadQueue(); await loadLog(); }));
  enqueue(async () => { await loadQueue(); await loadLog(); });
}

setUp();
