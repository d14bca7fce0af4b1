// The session control widget: the session's state (running, paused, stopped) and pause,
// resume and stop buttons. Mounts itself into every element of class "session-control" of
// the page (the session page can hold one too: add the element, control.css and this
// script). Uses console.js's helpers (el, getJSON, sessionUid, sessionNav).
"use strict";

const CONTROL_POLL_MS = 1000;
const CONTROL_WHO = "spm-console-who";  // the name the labelling page keeps, if any

function controlWidget(box, uid) {
  const url = `/api/sessions/${encodeURIComponent(uid)}/control`;
  const stateText = el("span", {class: "c-state", id: "control-state"}, "…");
  const note = el("span", {class: "c-note", id: "control-note", "aria-live": "polite"});
  const buttons = Object.fromEntries(["pause", "resume", "stop"].map(command => [command,
    el("button", {type: "button", id: `control-${command}`, disabled: ""}, command)]));
  box.classList.add("control");
  box.replaceChildren(el("span", {}, "session "), stateText, ...Object.values(buttons), note);

  function show(state) {
    stateText.textContent = state.state;
    stateText.className = `c-state c-${state.state}`;
    buttons.pause.disabled = !(state.controllable && state.state === "running");
    buttons.resume.disabled = !(state.controllable && state.state === "paused");
    buttons.stop.disabled = !state.controllable;
    if (state.detail) note.textContent = state.detail;
  }

  async function poll() {
    try { show(await getJSON(url)); } catch (error) { note.textContent = String(error.message); }
  }

  async function send(command) {
    if (command === "stop" && !window.confirm(`Stop session ${uid}? It can be resumed later ` +
                                              "with spm-bluesky run --resume.")) return;
    const who = localStorage.getItem(CONTROL_WHO);
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(who ? {command, who} : {command})});
    const body = await response.json();
    if (!response.ok) { note.textContent = `refused: ${body.detail}`; return; }
    note.textContent = `${command} asked by ${body.who}: applied at the next checkpoint`;
    Object.values(buttons).forEach(button => { button.disabled = true; });
  }

  for (const [command, button] of Object.entries(buttons)) {
    button.addEventListener("click", () => send(command));
  }
  poll();
  setInterval(poll, CONTROL_POLL_MS);
}

for (const box of document.querySelectorAll(".session-control")) {
  controlWidget(box, box.dataset.session || sessionUid());
}
if (document.body.dataset.page === "control") sessionNav(sessionUid());
