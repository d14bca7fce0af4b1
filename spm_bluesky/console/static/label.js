// The labelling page: one image at a time, a key per class, the next images preloaded, marks
// sent in small batches (one stored run each) without reloading the page. Uses console.js's
// helpers (el, getJSON, showError, sessionUid, sessionNav, fixed).
"use strict";

const LABEL_CLASSES = [  // [class, digit key, letter key, shown as]
  ["good", "1", "g", "good"], ["multi_apex", "2", "m", "multi apex"], ["blunt", "3", "b", "blunt"],
  ["adsorbate", "4", "a", "adsorbate"], ["unstable", "5", "u", "unstable"],
  ["unclear", "6", "x", "unclear"]];
const CLASS_OF_KEY = Object.fromEntries(LABEL_CLASSES.flatMap(([c, d, l]) => [[d, c], [l, c]]));
const SHOWN_AS = Object.fromEntries(LABEL_CLASSES.map(([c, , , shown]) => [c, shown]));
const WHO_STORAGE = "spm-console-who";  // the person's name, shared with the control widget
const FLUSH_IDLE_MS = 1500;  // marks are sent this long after the last key ...
const FLUSH_AT = 10;         // ... or once this many wait
const PAGE_SIZE = 500;       // images asked for at a time
const PRELOAD = 3;           // images fetched ahead of the one shown

const labelling = {
  uid: sessionUid(), items: [], keys: new Set(), index: 0, total: 0, labelled: 0,
  matching: 0, queue: [], history: [], sending: false, timer: null, loading: false,
  preloaded: new Map(),
};
const imageKey = item => `${item.run_uid}/${item.seq_num}`;
const who = () => localStorage.getItem(WHO_STORAGE) || "";

function labelsUrl(offset) {
  const order = document.getElementById("order").value;
  const show = document.getElementById("show").value;
  return `/api/sessions/${encodeURIComponent(labelling.uid)}/labels?` +
    new URLSearchParams({order, show, offset, limit: PAGE_SIZE});
}

async function loadImages() {
  labelling.loading = true;
  try {
    const answer = await getJSON(labelsUrl(0));
    Object.assign(labelling, {items: answer.items, index: 0, total: answer.total,
                              labelled: answer.labelled, matching: answer.matching});
    labelling.keys = new Set(answer.items.map(imageKey));
    showError(null);
    // A long session is read newest runs first: list it again until it is whole, as long
    // as the person has not started.
    if (!answer.complete) {
      setTimeout(() => { if (!labelling.history.length) loadImages(); }, 2000);
    }
  } catch (error) { showError(error); }
  labelling.loading = false;
  render();
}

// The next part of the list, once the person is near the end of what was loaded. The offset
// counts the loaded images the server still lists (a filter drops those labelled since).
async function loadMore() {
  if (labelling.loading || labelling.items.length >= labelling.matching) return;
  labelling.loading = true;
  try {
    await flush();
    const show = document.getElementById("show").value;
    const still = labelling.items.filter(item => show === "all" ||
      (show === "unlabelled" ? item.label === null : item.disagrees)).length;
    const answer = await getJSON(labelsUrl(still));
    const fresh = answer.items.filter(item => !labelling.keys.has(imageKey(item)));
    fresh.forEach(item => labelling.keys.add(imageKey(item)));
    labelling.items.push(...fresh);
    labelling.matching = labelling.items.length + Math.max(0, answer.matching - still -
                                                              answer.items.length);
  } catch (error) { showError(error); }
  labelling.loading = false;
}

function preload() {
  const wanted = labelling.items.slice(labelling.index + 1, labelling.index + 1 + PRELOAD);
  for (const item of wanted) {
    if (!labelling.preloaded.has(item.image)) {
      const image = new Image();
      image.src = item.image;
      labelling.preloaded.set(item.image, image);
    }
  }
  if (labelling.preloaded.size > 50) {  // keep the browser's memory small
    for (const url of [...labelling.preloaded.keys()].slice(0, 25)) labelling.preloaded.delete(url);
  }
}

function render() {
  const item = labelling.items[labelling.index];
  document.getElementById("progress").textContent =
    `${labelling.labelled} of ${labelling.total} labelled`;
  const image = document.getElementById("image");
  const classes = document.getElementById("classes");
  if (!item) {
    image.removeAttribute("src");
    document.getElementById("position").textContent = labelling.loading ? "loading…" :
      "no image to show: change the order or the filter above";
    for (const id of ["assessor", "loop", "person"]) document.getElementById(id).textContent = "";
    classes.replaceChildren();
    return;
  }
  image.src = item.image;
  image.dataset.run = item.run_uid;
  image.dataset.seq = item.seq_num;
  document.getElementById("position").textContent =
    `image ${labelling.index + 1} of ${labelling.matching} shown · run ${item.run_uid.slice(0, 8)}` +
    ` event ${item.seq_num} · ${fixed(item.hours, 3)} h`;
  document.getElementById("assessor").textContent = item.model_label === null
    ? "did not judge this image"
    : `${SHOWN_AS[item.model_label] || item.model_label}, p(good) ${fixed(item.p_good, 2)}` +
      ` (model ${item.model_id})`;
  document.getElementById("loop").textContent = `the loop: ${item.reason || item.verdict}`;
  const person = document.getElementById("person");
  person.textContent = item.label === null ? "not labelled yet"
    : `${SHOWN_AS[item.label]}` + (item.disagrees ? " (the assessor disagrees)" : "") +
      (item.who ? ` — ${item.who}` : "");
  person.className = "person" + (item.disagrees ? " disagrees" : "");
  person.dataset.label = item.label || "";
  classes.replaceChildren(...LABEL_CLASSES.map(([cls, digit, letter, shown]) => {
    const button = el("button", {type: "button", dataset: {cls}}, `${shown} `,
                      el("kbd", {}, `${digit}/${letter}`));
    if (item.label === cls) button.classList.add("chosen");
    button.addEventListener("click", () => label(cls));
    return button;
  }));
  preload();
  if (labelling.items.length - labelling.index < 50) loadMore();
}

function savingNote(text) { document.getElementById("saving").textContent = text; }

function label(cls) {
  const item = labelling.items[labelling.index];
  if (!item) return;
  if (!who()) {
    showError(new Error("type your name above first: it is stored with every label"));
    document.getElementById("who").focus();
    return;
  }
  const previous = {label: item.label, who: item.who, when: item.when,
                    disagrees: item.disagrees};
  const mark = {run_uid: item.run_uid, seq_num: item.seq_num, label: cls,
                when: Date.now() / 1000};
  if (item.label === null) labelling.labelled += 1;
  Object.assign(item, {label: cls, who: who(), when: mark.when,
                       disagrees: cls !== "unclear" && item.model_label !== null &&
                                  cls !== item.model_label});
  const entry = {item, previous, mark, sent: false};
  labelling.queue.push(entry);
  labelling.history.push(entry);
  savingNote(`${labelling.queue.length} waiting to be saved`);
  clearTimeout(labelling.timer);
  if (labelling.queue.length >= FLUSH_AT) flush();
  else labelling.timer = setTimeout(flush, FLUSH_IDLE_MS);
  move(1);
}

function undo() {
  const entry = labelling.history.pop();
  if (!entry) return;
  const {item, previous} = entry;
  labelling.index = Math.max(0, labelling.items.indexOf(item));
  if (!entry.sent) {
    labelling.queue.splice(labelling.queue.indexOf(entry), 1);
    if (previous.label === null) labelling.labelled -= 1;
    Object.assign(item, previous);
    savingNote(labelling.queue.length ? `${labelling.queue.length} waiting to be saved` : "undone");
  } else if (previous.label !== null) {  // stored already: store the earlier label again
    labelling.queue.push({item, previous: {...item}, sent: false,
                          mark: {run_uid: item.run_uid, seq_num: item.seq_num,
                                 label: previous.label, when: Date.now() / 1000}});
    Object.assign(item, previous);
    clearTimeout(labelling.timer);
    labelling.timer = setTimeout(flush, FLUSH_IDLE_MS);
  } else {
    savingNote("that label is stored already: give the image another one");
  }
  render();
}

function move(step) {
  labelling.index = Math.min(Math.max(0, labelling.index + step),
                             Math.max(0, labelling.items.length - 1));
  render();
}

async function flush(keepalive = false) {
  clearTimeout(labelling.timer);
  if (labelling.sending || !labelling.queue.length) return;
  labelling.sending = true;
  const batch = labelling.queue.splice(0);
  savingNote(`saving ${batch.length}…`);
  try {
    const response = await fetch(`/api/sessions/${encodeURIComponent(labelling.uid)}/labels`, {
      method: "POST", credentials: "same-origin", keepalive,
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({who: who(), labels: batch.map(entry => entry.mark)})});
    const body = await response.json();
    if (!response.ok) {  // refused: nothing was stored; show the earlier labels again
      for (const entry of batch.reverse()) {
        if (entry.previous.label === null && entry.item.label !== null) labelling.labelled -= 1;
        Object.assign(entry.item, entry.previous);
      }
      throw new Error(`not saved: ${body.detail || response.statusText}`);
    }
    batch.forEach(entry => { entry.sent = true; });
    savingNote(`saved ${body.stored} (${new Date().toLocaleTimeString()})`);
    showError(null);
  } catch (error) {
    if (error instanceof TypeError) labelling.queue.unshift(...batch);  // network: try again
    showError(error);
    savingNote(labelling.queue.length ? `${labelling.queue.length} waiting to be saved` : "");
  } finally {
    labelling.sending = false;
    render();
  }
  if (labelling.queue.length) labelling.timer = setTimeout(flush, FLUSH_IDLE_MS);
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName)) return;
  const key = event.key.toLowerCase();
  if (CLASS_OF_KEY[key]) label(CLASS_OF_KEY[key]);
  else if (event.key === "ArrowRight") move(1);
  else if (event.key === "ArrowLeft") move(-1);
  else if (key === "z") undo();
  else return;
  event.preventDefault();
}

function labellingPage() {
  sessionNav(labelling.uid);
  const input = document.getElementById("who");
  input.value = who();
  document.getElementById("who-form").addEventListener("submit", event => {
    event.preventDefault();
    if (!input.checkValidity()) return;
    localStorage.setItem(WHO_STORAGE, input.value.trim());
    input.blur();
    showError(null);
  });
  for (const id of ["order", "show"]) {
    document.getElementById(id).addEventListener("change", async event => {
      await flush();
      event.target.blur();
      loadImages();
    });
  }
  document.addEventListener("keydown", onKey);
  window.addEventListener("pagehide", () => flush(true));
  loadImages();
}

labellingPage();
