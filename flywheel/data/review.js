// The review page's script (review.html), served as /review.js: the page's
// Content-Security-Policy allows no inline script. Every request sends the
// X-Flywheel-Review header, which the server requires of a POST (a page of
// another site cannot send it).
"use strict";
let state = null;
// the pair on screen and when it was first shown: its label posts the seconds since
let shownFor = null, shownAt = null;
const $ = (id) => document.getElementById(id);

function radios(fieldset, name, options) {
  fieldset.querySelectorAll("label").forEach((l) => l.remove());
  for (const [value, title] of options) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio"; input.name = name; input.value = value;
    label.append(input, " " + title);
    fieldset.append(label);
  }
}

function picked(name) {
  const el = document.querySelector(`input[name="${name}"]:checked`);
  return el ? el.value : null;
}

function render(s) {
  state = s;
  $("round").textContent = `round ${s.round_id} (iteration ${s.iteration}), ` +
    `${s.labelled} of ${s.total} labelled`;
  if (s.closed || !s.pair) {
    $("progress").textContent = `${s.labelled} of ${s.total} labelled`;
    $("labelling").hidden = true; $("done").hidden = false;
    $("close").hidden = true;
    $("done-title").textContent = s.closed ? "Round closed: ingested as a batch" :
      "Every pair is labelled";
    $("summary").textContent = s.summary || "";
    return;
  }
  $("progress").textContent = `Pair ${s.position} of ${s.total}`;
  $("labelling").hidden = false; $("done").hidden = true;
  $("criterion").textContent = s.pair.criterion;
  $("prompt").textContent = s.pair.prompt;
  $("text_a").textContent = s.pair.text_a;
  $("text_b").textContent = s.pair.text_b;
  radios($("strength"), "strength", s.strengths);
  radios($("safety"), "safety_label", s.safety_labels);
  document.querySelectorAll('input[name="chosen"]').forEach((el) => { el.checked = false; });
  $("error").textContent = "";
  if (s.pair.pair_id !== shownFor) { shownFor = s.pair.pair_id; shownAt = performance.now(); }
}

async function call(method, path, body) {
  const res = await fetch(path, {
    method, credentials: "same-origin",
    headers: body ? {"Content-Type": "application/json", "X-Flywheel-Review": "1"} :
      {"X-Flywheel-Review": "1"},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({error: `HTTP ${res.status}`}));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

async function submit() {
  const annotator = $("annotator").value.trim();
  localStorage.setItem("flywheel-annotator", annotator);
  $("submit").disabled = true;
  try {
    render(await call("POST", "api/submit", {
      pair_id: state.pair.pair_id, chosen: picked("chosen"), strength: picked("strength"),
      safety_label: picked("safety_label"), annotator,
      seconds: Math.round((performance.now() - shownAt) / 100) / 10,
    }));
  } catch (err) {
    $("error").textContent = err.message;
  } finally {
    $("submit").disabled = false;
  }
}

async function closeRound() {
  try { render(await call("POST", "api/close")); }
  catch (err) { $("error").textContent = err.message; $("labelling").hidden = false; }
}

$("annotator").value = localStorage.getItem("flywheel-annotator") || "";
$("submit").addEventListener("click", submit);
$("close").addEventListener("click", closeRound);
call("GET", "api/state").then(render, (err) => { $("round").textContent = err.message; });
