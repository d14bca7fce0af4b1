// The spm-bluesky console's pages: read the JSON endpoints, fill the page. No framework,
// no build step. Text from the server always goes in through textContent, never as HTML.
"use strict";

const POLL_MS = 250;          // the live view asks for the session's stamp this often
const FIGURE_EVERY_MS = 10000; // the timeline and map are drawn again at most this often
                               // (drawing them takes the server long: the image first)
const LIST_EVERY_MS = 5000;   // the sessions list refreshes this often
const VERDICTS = ["kept", "bad", "debris", "crash", "lost_contact", "unsure",
                  "conditioning", "imported"];
const CLASSES = ["good", "multi_apex", "blunt", "adsorbate", "unstable"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, {credentials: "same-origin"});
  if (response.status === 401) {
    window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function showError(error) {
  const box = document.getElementById("error");
  if (!box) return;
  box.hidden = !error;
  box.textContent = error ? String(error.message || error) : "";
}

const fixed = (value, digits) => value === null || value === undefined ? "n/a" : value.toFixed(digits);
const sessionUid = () => decodeURIComponent(location.pathname.split("/")[2] || "");
const utc = seconds => new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);

function sessionNav(uid) {
  for (const nav of document.querySelectorAll(".session-nav")) {
    const base = "/sessions/" + encodeURIComponent(uid);
    const links = [["/", "Sessions"], [base, "Live"], [base + "/gallery", "Gallery"],
                   [base + "/episodes", "Episodes"], [base + "/label", "Label"],
                   [base + "/control", "Control"], ["/logout", "Sign out"]];
    nav.replaceChildren(...links.map(([href, text]) => {
      const link = el("a", {href}, text);
      if (href === location.pathname) link.setAttribute("aria-current", "page");
      return link;
    }));
  }
  for (const span of document.querySelectorAll(".uid")) span.textContent = uid;
}

// What one image is: the verdict, the assessment, why, where and when.
function caption(image) {
  const lines = [
    el("strong", {class: "verdict v-" + image.verdict}, image.verdict),
    ` p(good) ${fixed(image.p_good, 2)}`,
    image.tip_belief !== null ? `, P(tip good) ${fixed(image.tip_belief, 2)}` : "",
    image.assessed ? `, assessed ${image.assessed}` : "",
    el("br"), el("span", {class: "reason"}, image.reason), el("br"),
    `area ${image.area}, ${fixed(image.hours, 3)} h, ${fixed(image.size_nm, 0)} nm`,
    image.truth ? `, true tip ${image.truth}` : "",
  ];
  if (image.source) lines.push(el("br"), el("span", {class: "source"}, image.source));
  return lines;
}

function rows(table, pairs) {
  table.replaceChildren(...pairs.map(([label, value]) =>
    el("tr", {}, el("th", {}, label), el("td", {}, value))));
}

// -- the sessions list -----------------------------------------------------------------
async function sessionsPage() {
  const body = document.querySelector("#sessions tbody");
  const refresh = async () => {
    try {
      const sessions = await getJSON("/api/sessions");
      showError(null);
      body.replaceChildren(...sessions.map(s => {
        const base = "/sessions/" + encodeURIComponent(s.uid);
        const state = s.live ? "live" : s.imported ? "imported" : "stored";
        return el("tr", {dataset: {uid: s.uid}},
          el("td", {}, el("a", {href: base}, s.uid)),
          el("td", {}, el("span", {class: "badge " + state}, state)),
          el("td", {}, s.runs), el("td", {}, s.first_plan),
          el("td", {}, utc(s.first_time)), el("td", {}, utc(s.last_time)),
          el("td", {}, el("a", {href: base + "/gallery"}, "gallery")));
      }));
      if (!sessions.length) body.replaceChildren(el("tr", {}, el("td", {colspan: 7},
        "no sessions in Tiled yet: start one with `spm-bluesky run`")));
    } catch (error) { showError(error); }
  };
  await refresh();
  setInterval(refresh, LIST_EVERY_MS);
}

// -- the live view ----------------------------------------------------------------------
async function sessionPage() {
  const uid = sessionUid();
  sessionNav(uid);
  const api = "/api/sessions/" + encodeURIComponent(uid);
  const image = document.getElementById("latest-image");
  let stamp = null, latestKey = null, figuresDrawn = 0, figuresStamp = null;

  const drawFigures = (token) => {
    figuresDrawn = Date.now();
    figuresStamp = token;
    for (const part of ["timeline", "map"]) {
      document.getElementById(part).src = `${api}/figures/${part}.png?v=${encodeURIComponent(token)}`;
    }
  };
  const update = (session) => {
    const state = document.getElementById("state");
    state.textContent = session.live ? "live" : session.imported ? "imported" : "stored";
    state.className = "badge " + state.textContent;
    const models = Object.entries(session.model_ids).map(([k, v]) => `${k} ${v}`).join(", ");
    document.getElementById("about").textContent =
      `${session.runs} run${session.runs === 1 ? "" : "s"} from ${session.first_time} to ` +
      `${session.last_time} (UTC)` +
      (session.twin_seed !== null ? `, twin seed ${session.twin_seed}` : "") +
      (models ? `; models: ${models}` : "") + `; keeps above ${session.keep_threshold}`;
    const p = session.progress;
    document.getElementById("progress").replaceChildren(...[
      ["images", p.images], ["kept", p.kept], ["actions", p.actions],
      ["crashes", p.crashes], ["simulated hours", fixed(p.simulated_hours, 2)]
    ].map(([label, value]) => el("div", {class: "figure-box", dataset: {name: label}},
      el("span", {class: "value"}, value), el("span", {class: "label"}, label))));
    rows(document.getElementById("yield"), session.yield);
    rows(document.getElementById("verdicts"), Object.entries(session.verdicts));
    const latest = session.latest;
    if (latest) {
      const key = `${latest.run_uid}/${latest.seq_num}/${latest.verdict}`;
      if (key !== latestKey) {
        latestKey = key;
        const shown = new Image();
        shown.onload = () => {  // swap only once drawn: the page never shows a blank
          image.src = shown.src;
          Object.assign(image.dataset, {run: latest.run_uid, seq: latest.seq_num,
                                        clock: latest.clock, verdict: latest.verdict,
                                        shownAt: Date.now() / 1000});
          document.getElementById("latest-caption").replaceChildren(...caption(latest));
        };
        shown.src = latest.large;
      }
    }
    if (session.stamp !== figuresStamp && Date.now() - figuresDrawn >= FIGURE_EVERY_MS) {
      drawFigures(session.stamp);
    }
  };
  const poll = async () => {
    try {
      const session = await getJSON(api);
      showError(null);
      if (session.stamp !== stamp || session.stamp !== figuresStamp) {
        stamp = session.stamp;
        update(session);
      }
    } catch (error) { showError(error); }
    setTimeout(poll, POLL_MS);
  };
  await poll();
}

// -- the gallery ------------------------------------------------------------------------
async function galleryPage() {
  const uid = sessionUid();
  sessionNav(uid);
  const form = document.getElementById("filters");
  document.getElementById("verdict-boxes").replaceChildren(...VERDICTS.map(v =>
    el("label", {class: "check"}, el("input", {type: "checkbox", name: "verdict", value: v}),
       " " + v)));
  for (const name of ["truth", "assessed"]) {
    form.elements[name].append(...CLASSES.map(c => el("option", {value: c}, c)));
  }
  const params = new URLSearchParams(location.search);
  for (const [key, value] of params) {
    if (key === "verdict") {
      for (const v of value.split(",")) {
        const box = form.querySelector(`input[name=verdict][value="${CSS.escape(v)}"]`);
        if (box) box.checked = true;
      }
    } else if (form.elements[key]) form.elements[key].value = value;
  }
  let page = Number(params.get("page") || 1), pages = 1;
  const query = () => {
    const q = new URLSearchParams();
    const verdicts = [...form.querySelectorAll("input[name=verdict]:checked")].map(b => b.value);
    if (verdicts.length) q.set("verdict", verdicts.join(","));
    for (const name of ["truth", "assessed", "p_min", "p_max", "unsure", "hours_min",
                        "hours_max", "order"]) {
      const value = form.elements[name].value;
      if (value && !(name === "unsure" && value === "any") &&
          !(name === "order" && value === "newest")) q.set(name, value);
    }
    if (page > 1) q.set("page", page);
    return q;
  };
  const load = async () => {
    const q = query();
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
    try {
      const result = await getJSON(`/api/sessions/${encodeURIComponent(uid)}/images?${q}`);
      showError(null);
      pages = result.pages;
      document.getElementById("count").textContent =
        `${result.total} images, page ${result.page} of ${result.pages}`;
      document.getElementById("prev").disabled = result.page <= 1;
      document.getElementById("next").disabled = result.page >= result.pages;
      document.getElementById("gallery").replaceChildren(...result.images.map(image =>
        el("figure", {class: "tile", dataset: {run: image.run_uid, seq: image.seq_num}},
          el("img", {src: image.tile, width: 187, height: 168,
                     alt: `image ${image.seq_num} of run ${image.run_uid}`}),
          el("figcaption", {}, ...caption(image)))));
    } catch (error) { showError(error); }
  };
  form.addEventListener("submit", event => { event.preventDefault(); page = 1; load(); });
  form.addEventListener("reset", () => setTimeout(() => { page = 1; load(); }));
  document.getElementById("prev").addEventListener("click", () => { page -= 1; load(); });
  document.getElementById("next").addEventListener("click", () => {
    if (page < pages) { page += 1; load(); }
  });
  await load();
}

// -- the conditioning episodes ----------------------------------------------------------
async function episodesPage() {
  const uid = sessionUid();
  sessionNav(uid);
  const box = document.getElementById("episodes");
  try {
    const episodes = await getJSON(`/api/sessions/${encodeURIComponent(uid)}/episodes`);
    const shown = image => image
      ? el("figure", {class: "tile"}, el("img", {src: image.large,
                                                 width: 331, height: 298}),
           el("figcaption", {}, ...caption(image)))
      : el("p", {class: "none"}, "no image");
    box.replaceChildren(...episodes.map(e => el("section", {class: "episode"},
      el("h2", {}, `episode ${e.number}: ${fixed(e.start_hours, 3)} to ${fixed(e.end_hours, 3)} h, `,
         el("span", {class: e.success ? "ok" : "failed"},
            e.success ? "ended with a good tip" : "did not end with a good tip")),
      el("p", {}, `${e.actions.length} actions: ${e.actions.join(", ") || "none"}`),
      el("div", {class: "pair"},
         el("div", {}, el("h3", {}, "before"), shown(e.before)),
         el("div", {}, el("h3", {}, "after"), shown(e.after))))));
    if (!episodes.length) box.replaceChildren(el("p", {}, "no conditioning episode in this session"));
  } catch (error) { showError(error); }
}

const PAGES = {sessions: sessionsPage, session: sessionPage, gallery: galleryPage,
               episodes: episodesPage};
const run = PAGES[document.body.dataset.page];
if (run) run();
