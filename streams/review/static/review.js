"use strict";
// The review page: talks to the JSON API only. Note text is always inserted as text, never as HTML.

const state = {
  csrf: null,
  reviewer: null,
  leaseSeconds: 600,
  note: null,        // GET /api/notes/{id}
  lease: null,       // {lease_id, expires_at}
  work: {},          // task -> {kind, label, entities: [{label,start,end,text,confidence,origin,accepted}]}
  nerTask: null,     // the NER task whose spans are shown and edited
  docTask: null,     // the classification task Shift+digit sets
  focus: -1,         // index into work[nerTask].entities
  hintFocus: null,   // the focused possible missed entity (a flagged item that is not a span yet)
  hints: {},         // task -> [{reason, dismissed, el}]: possible missed entities not covered by a span
  flags: [],         // the flagged items of the active tasks in reading order: {doc: task} | {index} | {hint}
  flagAt: -1,        // position in flags of the last flagged item visited (f / F)
  marks: [],         // entity index -> its <mark> in the note text
  rows: [],          // entity index -> its row in the spans table
  active: false,     // user activity since the last lease renewal
  skipped: new Set(), // notes this reviewer skipped in this page (n with a task open)
  busy: false,
};

const $ = (id) => document.getElementById(id);
const ASSERTIONS = ["present", "absent", "possible", "hypothetical", "historical", "family"];
const firstCode = (e) => (e.codes && e.codes.length ? e.codes[0].code : "");

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = "status" + (isError ? " error" : "");
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  let data = {};
  try { data = await res.json(); } catch (e) { data = {}; }
  if (!res.ok) {
    const err = new Error(data.error || ("HTTP " + res.status));
    err.status = res.status;
    err.problems = data.problems || [];
    throw err;
  }
  return data;
}

function filters() {
  return { task: $("f-task").value, label: $("f-label").value, note_type: $("f-type").value };
}

function fillSelect(select, values) {
  const keep = select.value;
  const options = [["", "all"], ...values.map((v) => [v, v])];
  select.replaceChildren(...options.map(([value, text]) => { const o = document.createElement("option"); o.value = value; o.textContent = text; return o; }));
  if (values.includes(keep)) select.value = keep;
}

async function refreshQueue() {
  try {
    const q = new URLSearchParams(filters());
    const data = await api("GET", "/api/tasks?" + q.toString());
    fillSelect($("f-task"), data.facets.tasks);
    fillSelect($("f-label"), data.facets.labels);
    fillSelect($("f-type"), data.facets.note_types);
    $("queue-count").textContent = data.total + " waiting";
    const list = $("queue-list");
    list.replaceChildren();
    for (const t of data.tasks) {
      const li = document.createElement("li");
      li.dataset.noteId = t.note_id;
      if (state.note && state.note.note_id === t.note_id) li.className = "current";
      const title = document.createElement("div");
      title.textContent = t.note_type + " · " + new Date(t.queued_at).toLocaleString();
      const why = document.createElement("div");
      why.className = "muted";
      const kinds = {};
      for (const r of t.reasons) kinds[r.task + ": " + r.label] = (kinds[r.task + ": " + r.label] || 0) + 1;
      why.textContent = Object.entries(kinds).map(([k, n]) => k + (n > 1 ? " ×" + n : "")).join(", ");
      li.append(title, why);
      if (t.lease && t.lease.reviewer_id !== state.reviewer) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "with " + t.lease.reviewer_id;
        li.appendChild(badge);
      }
      li.addEventListener("click", () => openTask(t.note_id));
      list.appendChild(li);
    }
  } catch (e) {
    if (e.message !== "signed out") $("queue-count").textContent = "queue unavailable: " + e.message;
  }
}

async function releaseCurrent() {
  if (!state.note) return;
  const id = state.note.note_id;
  state.note = null;
  state.lease = null;
  try {
    await fetch("/api/tasks/" + encodeURIComponent(id) + "/claim", { method: "DELETE", headers: { "X-CSRF-Token": state.csrf }, credentials: "same-origin", keepalive: true });
  } catch (e) { /* the lease expires anyway */ }
}

async function nextTask() {
  if (state.busy) return;
  state.busy = true;
  try {
    if (state.note) state.skipped.add(state.note.note_id);  // skipping: do not hand the same note straight back
    await releaseCurrent();
    const claimed = await api("POST", "/api/tasks/next", { ...filters(), skip: [...state.skipped].slice(-1000) });
    await show(claimed.note_id, claimed.lease);
  } catch (e) {
    if (e.status === 404) {
      const skippedSome = state.skipped.size ? " (" + state.skipped.size + " skipped in this page; reload to see them again)" : "";
      showEmpty("The queue is empty" + (filters().task || filters().label || filters().note_type ? " for these filters" : "") + skippedSome + "."); }
    else setStatus(e.message, true);
  } finally {
    state.busy = false;
    refreshQueue();
  }
}

async function openTask(noteId) {
  if (state.busy) return;
  state.busy = true;
  try {
    if (state.note && state.note.note_id !== noteId) await releaseCurrent();
    const claimed = await api("POST", "/api/tasks/" + encodeURIComponent(noteId) + "/claim");
    await show(noteId, claimed.lease);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    state.busy = false;
    refreshQueue();
  }
}

function showEmpty(text) {
  state.note = null;
  $("task").hidden = true;
  $("empty").hidden = false;
  $("empty").querySelector("p").textContent = text;
}

async function show(noteId, lease) {
  const note = await api("GET", "/api/notes/" + encodeURIComponent(noteId));
  state.note = note;
  state.lease = lease;
  state.work = {};
  state.nerTask = null;
  state.docTask = null;
  for (const r of note.results) {
    if (r.kind === "ner") {
      state.work[r.task] = { kind: "ner", entities: r.entities.map((e) => ({
        ...e, origin: "model", accepted: false, before: e.label,
        assertion: e.assertion || "present", beforeAssertion: e.assertion || "present",
        code: firstCode(e), beforeCode: firstCode(e),
      })) };
      state.nerTask = state.nerTask || r.task;
    } else {
      const top = r.labels.length ? r.labels.reduce((a, b) => (b.probability > a.probability ? b : a)) : null;
      state.work[r.task] = { kind: "classification", label: top ? top.label : null, model: top ? top.label : null };
      state.docTask = state.docTask || r.task;
    }
  }
  foldReasons(note);
  state.focus = -1;
  state.hintFocus = null;
  state.flagAt = -1;
  $("empty").hidden = true;
  $("task").hidden = false;
  $("note-id").textContent = note.note_id;
  $("note-type").textContent = note.note_type;
  $("note-created").textContent = new Date(note.created_at).toLocaleString();
  $("note-revision").textContent = note.revision;
  $("comment").value = "";
  setStatus("");
  render();
  $("note-text").focus();
}

const REASON_WORDS = { document_label: "document label", entity: "span", possible_entity: "possible missed span",
  code: "doubtful code", assertion: "doubtful assertion" };

function reasonText(r) {
  return (REASON_WORDS[r.kind] || r.kind) + " " + Number(r.confidence).toFixed(2) + " < " + Number(r.threshold).toFixed(2);
}

// Each reason folded into the item it is about: an entity's reasons on the entity, a document label's on its task,
// possible missed entities as hints of their own. In an audit every model item is to be checked, so every one is flagged.
function foldReasons(note) {
  const bySpan = new Map();
  state.hints = {};
  for (const r of note.reasons) {
    if (r.kind === "possible_entity") {
      (state.hints[r.task] = state.hints[r.task] || []).push({ reason: r, dismissed: false, el: null });
    } else if (r.kind === "document_label") {
      state.work[r.task].reasons = [r];
    } else {
      const key = r.task + ":" + r.start + ":" + r.end;
      if (!bySpan.has(key)) bySpan.set(key, []);
      bySpan.get(key).push(r);
    }
  }
  for (const [task, w] of Object.entries(state.work)) {
    if (w.kind === "ner") {
      for (const e of w.entities) {
        e.reasons = bySpan.get(task + ":" + e.start + ":" + e.end) || [];
        e.flagged = e.reasons.length > 0 || note.audit;
      }
      const spans = w.entities;
      state.hints[task] = (state.hints[task] || []).filter((h) => !spans.some((e) => e.start < h.reason.end && h.reason.start < e.end));
    } else {
      w.reasons = w.reasons || [];
      w.flagged = w.reasons.length > 0 || note.audit;
    }
  }
}

function decided(item) {
  if (item.doc) return state.work[item.doc].label !== state.work[item.doc].model || state.work[item.doc].confirmed;
  if (item.hint) return item.hint.dismissed;
  const e = state.work[state.nerTask].entities[item.index];
  return e.accepted || e.origin === "added";
}

// The flagged items in reading order: document labels first, then spans and possible missed spans by offset.
function collectFlags() {
  const flags = [];
  for (const [task, w] of Object.entries(state.work)) if (w.kind === "classification" && w.flagged) flags.push({ doc: task });
  if (state.nerTask) {
    const spans = state.work[state.nerTask].entities.map((e, i) => ({ at: e.start, item: { index: i }, on: e.flagged }));
    const hints = (state.hints[state.nerTask] || []).map((h) => ({ at: h.reason.start, item: { hint: h }, on: true }));
    for (const x of [...spans, ...hints].filter((x) => x.on).sort((a, b) => a.at - b.at)) flags.push(x.item);
  }
  state.flags = flags;
}

function renderSummary() {
  const box = $("reasons");
  box.replaceChildren();
  const done = state.flags.filter(decided).length;
  const li = document.createElement("li");
  const kinds = {};
  for (const f of state.flags) {
    const kind = f.doc ? "document label" : f.hint ? "possible missed span" : "span";
    kinds[kind] = (kinds[kind] || 0) + 1;
  }
  const parts = Object.entries(kinds).map(([k, n]) => n + " " + k + (n > 1 ? "s" : ""));
  li.textContent = (state.note.audit ? "Audit: check every item the model accepted. " : "")
    + state.flags.length + " flagged item" + (state.flags.length === 1 ? "" : "s") + (parts.length ? " (" + parts.join(", ") + ")" : "")
    + ", " + done + " decided. f / Shift+F: next / previous flagged item.";
  li.id = "flag-summary";
  box.appendChild(li);
}

function labelsOf(task) {
  const fromModel = (state.note && state.note.labels[task]) || [];
  if (fromModel.length) return fromModel;
  const seen = new Set((state.work[task].entities || []).map((e) => e.label));
  return [...seen].sort();
}

function render() {
  if (!state.note) return;
  collectFlags();
  renderSummary();
  renderDocLabels();
  renderLegend();
  renderText();
  renderSpans();
}

function renderDocLabels() {
  const box = $("doc-labels");
  box.replaceChildren();
  for (const r of state.note.results) {
    if (r.kind !== "classification") continue;
    const work = state.work[r.task];
    const group = document.createElement("div");
    group.className = "doc-task" + (r.task === state.docTask ? " active" : "") + (work.flagged ? " flagged" : "");
    group.dataset.task = r.task;
    const h = document.createElement("h3");
    h.textContent = r.task + (r.task === state.docTask ? " (Shift+digit)" : "")
      + (work.reasons.length ? " · flagged: " + work.reasons.map(reasonText).join("; ") : (work.flagged ? " · audit" : ""));
    group.appendChild(h);
    const probs = Object.fromEntries(r.labels.map((l) => [l.label, l.probability]));
    labelsOf(r.task).forEach((label, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "doc-label" + (work.label === label ? " chosen" : "") + (work.model === label ? " model" : "");
      b.dataset.label = label;
      b.dataset.task = r.task;
      const p = probs[label] === undefined ? "" : " " + Number(probs[label]).toFixed(2);
      b.textContent = (i < 9 ? (i + 1) + " " : "") + label + p;
      b.addEventListener("click", () => { work.label = label; work.confirmed = true; state.active = true; renderDocLabels(); renderSummary(); });
      group.appendChild(b);
    });
    box.appendChild(group);
  }
}

function renderLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  if (!state.nerTask) return;
  const title = document.createElement("span");
  title.textContent = state.nerTask + ":";
  legend.appendChild(title);
  labelsOf(state.nerTask).forEach((label, i) => {
    const s = document.createElement("span");
    s.className = "chip c" + (i % 6);
    s.textContent = (i + 1) + " " + label;
    legend.appendChild(s);
  });
}

function colorOf(label) {
  const i = labelsOf(state.nerTask).indexOf(label);
  return "c" + ((i < 0 ? 0 : i) % 6);
}

function markClass(e, i) {
  return "ent " + colorOf(e.label) + (i === state.focus ? " focused" : "") + (e.accepted ? " accepted" : "")
    + (e.origin === "model" && e.reasons && e.reasons.some((r) => r.kind === "entity") ? " low" : "")
    + (e.flagged ? " flagged" : "") + (e.assertion !== "present" ? " asserted-" + e.assertion : "");
}

function markTitle(e) {
  return e.label + (e.origin === "model" ? " · model " + Number(e.confidence).toFixed(2) : " · added")
    + " · " + e.assertion + (e.code ? " · " + e.code : "") + (e.reasons && e.reasons.length ? " · flagged: " + e.reasons.map(reasonText).join("; ") : "");
}

function renderText() {
  const box = $("note-text");
  const text = state.note.text;
  const entities = state.nerTask ? state.work[state.nerTask].entities : [];
  const hints = state.nerTask ? (state.hints[state.nerTask] || []) : [];
  const items = [
    ...entities.map((e, i) => ({ start: e.start, end: e.end, entity: e, index: i })),
    ...hints.map((h) => ({ start: h.reason.start, end: h.reason.end, hint: h })),
  ].sort((a, b) => a.start - b.start);
  const frag = document.createDocumentFragment();
  state.marks = new Array(entities.length);
  let pos = 0;
  const plain = (from, to) => {
    if (to <= from) return;
    const seg = document.createElement("span");
    seg.dataset.start = String(from);
    seg.textContent = text.slice(from, to);
    frag.appendChild(seg);
  };
  for (const item of items) {
    if (item.start < pos) continue;
    plain(pos, item.start);
    const el = document.createElement(item.entity ? "mark" : "span");
    el.dataset.start = String(item.start);
    el.textContent = text.slice(item.start, item.end);
    if (item.entity) {
      el.className = markClass(item.entity, item.index);
      el.dataset.index = String(item.index);
      el.title = markTitle(item.entity);
      state.marks[item.index] = el;
      el.addEventListener("click", (ev) => { if (window.getSelection().isCollapsed) { setFocus(item.index, null); ev.stopPropagation(); } });
    } else {
      const h = item.hint;
      h.el = el;
      el.className = "hint flagged" + (h.dismissed ? " dismissed" : "") + (h === state.hintFocus ? " focused" : "");
      el.title = "possible missed " + h.reason.label + " (p(no entity) " + Number(h.reason.confidence).toFixed(2) + "): a digit adds it, a dismisses it";
      el.addEventListener("click", (ev) => { if (window.getSelection().isCollapsed) { setFocus(-1, h); ev.stopPropagation(); } });
    }
    frag.appendChild(el);
    pos = item.end;
  }
  plain(pos, text.length);
  box.replaceChildren(frag);
}

function fillRow(tr, e, i) {
  tr.className = (i === state.focus ? "focused" : "") + (e.flagged ? " flagged" : "");
  const chosen = (e.codes || []).find((c) => c.code === e.code);
  const cells = [
    String(i + 1),
    e.label,
    e.text,
    e.start + "–" + e.end,
    e.origin === "model" ? Number(e.confidence).toFixed(2) : "",
    e.assertion + (e.assertion === e.beforeAssertion && e.assertion_cue ? " (" + e.assertion_cue + ")" : ""),
    e.section || "",
    e.code ? e.code + (chosen ? " " + chosen.display + (chosen.score < 1 ? " " + Number(chosen.score).toFixed(2) : "") : "") : "",
    (e.reasons || []).map(reasonText).join("; ") || (e.flagged ? "audit" : ""),
    e.origin === "added" ? "added" : (e.label !== e.before ? "relabelled from " + e.before : (e.accepted ? "accepted" : "model")),
  ];
  cells.forEach((c, k) => { tr.cells[k].textContent = c; });
}

function renderSpans() {
  const body = $("span-rows");
  state.rows = [];
  if (!state.nerTask) { body.replaceChildren(); return; }
  const frag = document.createDocumentFragment();
  state.work[state.nerTask].entities.forEach((e, i) => {
    const tr = document.createElement("tr");
    tr.dataset.index = String(i);
    for (let k = 0; k < 10; k++) tr.insertCell();
    tr.cells[5].className = "assertion";
    tr.cells[7].className = "code";
    tr.cells[8].className = "why";
    fillRow(tr, e, i);
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "delete";
    del.addEventListener("click", () => { setFocus(i, null); deleteFocused(); });
    tr.insertCell().appendChild(del);
    tr.addEventListener("click", () => setFocus(i, null));
    state.rows[i] = tr;
    frag.appendChild(tr);
  });
  body.replaceChildren(frag);
}

// One entity changed (accepted, relabelled, assertion, code): its mark and row only, not the whole note.
function refreshEntity(i) {
  const e = state.work[state.nerTask].entities[i];
  const mark = state.marks[i];
  if (mark) { mark.className = markClass(e, i); mark.title = markTitle(e); }
  if (state.rows[i]) fillRow(state.rows[i], e, i);
  renderSummary();
}

// Focus moves without re-rendering: the old and new items' classes change, the new one scrolls into view.
function setFocus(index, hint) {
  if (state.focus >= 0) {
    if (state.marks[state.focus]) state.marks[state.focus].classList.remove("focused");
    if (state.rows[state.focus]) state.rows[state.focus].classList.remove("focused");
  }
  if (state.hintFocus && state.hintFocus.el) state.hintFocus.el.classList.remove("focused");
  for (const el of document.querySelectorAll(".doc-task.focused")) el.classList.remove("focused");
  state.focus = index;
  state.hintFocus = hint;
  const el = index >= 0 ? state.marks[index] : (hint ? hint.el : null);
  if (index >= 0 && state.rows[index]) state.rows[index].classList.add("focused");
  if (el) { el.classList.add("focused"); el.scrollIntoView({ block: "nearest" }); }
}

function focusFlag(step) {
  const n = state.flags.length;
  if (!n) { setStatus("No flagged items in this note."); return; }
  state.flagAt = state.flagAt < 0 ? (step > 0 ? 0 : n - 1) : (state.flagAt + step + n) % n;
  const item = state.flags[state.flagAt];
  if (item.doc) {
    setFocus(-1, null);
    state.docTask = item.doc;
    const group = document.querySelector(".doc-task[data-task='" + CSS.escape(item.doc) + "']");
    if (group) { group.classList.add("focused"); group.scrollIntoView({ block: "nearest" }); }
    setStatus("Flagged document label (" + item.doc + "): Shift+digit sets it, a keeps it.");
  } else if (item.hint) {
    setFocus(-1, item.hint);
    setStatus("Possible missed " + item.hint.reason.label + ": a digit adds it as a span, a dismisses it.");
  } else {
    setFocus(item.index, null);
    const e = state.work[state.nerTask].entities[item.index];
    setStatus("Flagged span “" + e.text + "”: " + ((e.reasons || []).map(reasonText).join("; ") || "audit") + ".");
  }
  $("flag-summary").dataset.at = String(state.flagAt);
}

function selectionOffsets() {
  const sel = window.getSelection();
  if (!sel || sel.isCollapsed || sel.rangeCount === 0) return null;
  const box = $("note-text");
  const offsetOf = (node, offset) => {
    const el = node.nodeType === Node.TEXT_NODE ? node.parentElement : node;
    if (!box.contains(el)) return null;
    const seg = el.closest("[data-start]");
    if (!seg || !box.contains(seg)) return null;
    return Number(seg.dataset.start) + (node.nodeType === Node.TEXT_NODE ? offset : 0);
  };
  const a = offsetOf(sel.anchorNode, sel.anchorOffset);
  const b = offsetOf(sel.focusNode, sel.focusOffset);
  if (a === null || b === null) return null;
  let start = Math.min(a, b);
  let end = Math.max(a, b);
  const text = state.note.text;
  while (start < end && /\s/.test(text[start])) start++;
  while (end > start && /\s/.test(text[end - 1])) end--;
  return end > start ? { start, end } : null;
}

function addSelection(label) {
  const hint = state.hintFocus;
  const range = selectionOffsets() || (hint ? { start: hint.reason.start, end: hint.reason.end } : null);
  if (hint && range.start === hint.reason.start) hint.dismissed = true;
  if (!range || !state.nerTask) return false;
  const entities = state.work[state.nerTask].entities;
  const clash = entities.find((e) => e.start < range.end && range.start < e.end);
  if (clash) { setStatus("The selection overlaps the span “" + clash.text + "”; delete that span first.", true); return true; }
  entities.push({ label, start: range.start, end: range.end, text: state.note.text.slice(range.start, range.end), confidence: 1, origin: "added", accepted: true, before: label,
    assertion: "present", beforeAssertion: "present", code: "", beforeCode: "", codes: [] });
  entities.sort((x, y) => x.start - y.start);
  state.focus = entities.findIndex((e) => e.start === range.start);
  state.hintFocus = null;
  window.getSelection().removeAllRanges();
  setStatus("Added " + label + " span at " + range.start + "–" + range.end + ".");
  render();
  return true;
}

function deleteFocused() {
  if (state.hintFocus) { acceptFocused(); return; }  // a possible missed span: x dismisses it, as a does
  if (!state.nerTask || state.focus < 0) return;
  const entities = state.work[state.nerTask].entities;
  const [gone] = entities.splice(state.focus, 1);
  state.focus = Math.min(state.focus, entities.length - 1);
  setStatus("Deleted " + gone.label + " span at " + gone.start + "–" + gone.end + ".");
  render();
}

function moveFocus(step) {
  if (!state.nerTask) return;
  const n = state.work[state.nerTask].entities.length;
  if (!n) return;
  setFocus(state.focus < 0 ? (step > 0 ? 0 : n - 1) : (state.focus + step + n) % n, null);
}

// a: keep the focused item as the model gave it (a span, a document label) or dismiss a possible missed span
function acceptFocused() {
  const item = state.flags[state.flagAt];
  if (state.hintFocus) {
    state.hintFocus.dismissed = true;
    state.hintFocus.el.classList.add("dismissed");
    renderSummary();
    focusFlag(1);
  } else if (state.focus >= 0) {
    state.work[state.nerTask].entities[state.focus].accepted = true;
    refreshEntity(state.focus);
    if (item && item.index === state.focus) focusFlag(1); else moveFocus(1);
  } else if (item && item.doc) {
    state.work[item.doc].confirmed = true;
    renderSummary();
    focusFlag(1);
  }
}

function focused() {
  return state.nerTask && state.focus >= 0 ? state.work[state.nerTask].entities[state.focus] : null;
}

function cycleAssertion() {
  const e = focused();
  if (!e) { setStatus("Focus a span first (j / k).", true); return; }
  e.assertion = ASSERTIONS[(ASSERTIONS.indexOf(e.assertion) + 1) % ASSERTIONS.length];
  e.accepted = true;
  setStatus("Span " + e.start + "–" + e.end + " is now " + e.assertion + ".");
  refreshEntity(state.focus);
}

function openCodePicker() {
  const e = focused();
  if (!e) { setStatus("Focus a span first (j / k).", true); return; }
  const choice = $("code-choice");
  const options = [...(e.codes || []).map((c) => [c.code, c.code + " " + c.display + " (" + Number(c.score).toFixed(2) + ")"]), ["", "no code"]];
  choice.replaceChildren(...options.map(([value, text]) => { const o = document.createElement("option"); o.value = value; o.textContent = text; return o; }));
  choice.value = options.some(([v]) => v === e.code) ? e.code : "";
  $("code-other").value = options.some(([v]) => v === e.code) ? "" : e.code;
  $("code-picker-span").textContent = e.text;
  $("code-picker").hidden = false;
  choice.focus();
}

function closeCodePicker(apply) {
  const picker = $("code-picker");
  if (picker.hidden) return;
  picker.hidden = true;
  const e = focused();
  if (apply && e) {
    const other = $("code-other").value.trim().toUpperCase();
    e.code = other || $("code-choice").value;
    e.accepted = true;
    setStatus("Span " + e.start + "–" + e.end + " coded " + (e.code || "(none)") + ".");
    refreshEntity(state.focus);
  }
  $("note-text").focus();
}

function cycle(kind) {
  const tasks = state.note.results.filter((r) => r.kind === kind).map((r) => r.task);
  if (tasks.length < 2) return;
  const key = kind === "ner" ? "nerTask" : "docTask";
  state[key] = tasks[(tasks.indexOf(state[key]) + 1) % tasks.length];
  state.focus = -1;
  render();
}

async function submit() {
  if (!state.note || state.busy) return;
  const results = state.note.results.map((r) => {
    const w = state.work[r.task];
    return w.kind === "ner"
      ? { task: r.task, entities: w.entities.map((e) => ({ label: e.label, start: e.start, end: e.end, assertion: e.assertion, code: e.code })) }
      : { task: r.task, label: w.label };
  });
  const body = { lease_id: state.lease.lease_id, base_revision: state.note.revision, results, comment: $("comment").value.trim() || null };
  state.busy = true;
  try {
    const done = await api("POST", "/api/notes/" + encodeURIComponent(state.note.note_id) + "/decisions", body);
    const corrected = done.changes.filter((c) => c.action !== "accept").length;
    state.note = null;
    state.lease = null;
    setStatus("Saved: revision " + done.revision + ", " + corrected + " correction" + (corrected === 1 ? "" : "s") + " (decision " + done.decision_id.slice(0, 8) + ").");
  } catch (e) {
    setStatus("Not saved: " + e.message + (e.problems.length ? " — " + e.problems.join("; ") : ""), true);
    state.busy = false;
    return;
  }
  state.busy = false;
  const saved = $("status").textContent;
  await nextTask();
  if (!$("status").classList.contains("error")) setStatus(saved);
}

function onKey(ev) {
  const target = ev.target;
  if (!$("code-picker").hidden) {
    if (ev.key === "Enter") { ev.preventDefault(); closeCodePicker(true); }
    else if (ev.key === "Escape") { ev.preventDefault(); closeCodePicker(false); }
    return;
  }
  const typing = target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.tagName === "SELECT");
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit(); return; }
  if (typing || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  state.active = true;
  if (ev.key === "?") { $("help").hidden = !$("help").hidden; return; }
  if (ev.key === "n") { ev.preventDefault(); nextTask(); return; }
  if (!state.note) return;
  const digit = /^Digit([1-9])$/.exec(ev.code);
  if (digit && ev.shiftKey) {
    ev.preventDefault();
    if (!state.docTask) return;
    const label = labelsOf(state.docTask)[Number(digit[1]) - 1];
    if (label) { state.work[state.docTask].label = label; state.work[state.docTask].confirmed = true; setStatus(state.docTask + ": " + label); renderDocLabels(); renderSummary(); }
    return;
  }
  if (digit) {
    ev.preventDefault();
    if (!state.nerTask) return;
    const label = labelsOf(state.nerTask)[Number(digit[1]) - 1];
    if (!label) return;
    if (addSelection(label)) return;
    if (state.focus >= 0) {
      const e = state.work[state.nerTask].entities[state.focus];
      e.label = label;
      e.accepted = true;
      setStatus("Relabelled span " + e.start + "–" + e.end + " as " + label + ".");
      refreshEntity(state.focus);
    }
    return;
  }
  switch (ev.key) {
    case "j": ev.preventDefault(); moveFocus(1); break;
    case "k": ev.preventDefault(); moveFocus(-1); break;
    case "a": acceptFocused(); break;
    case "f": ev.preventDefault(); focusFlag(1); break;
    case "F": ev.preventDefault(); focusFlag(-1); break;
    case "x": case "Delete": case "Backspace": ev.preventDefault(); deleteFocused(); break;
    case "s": ev.preventDefault(); cycleAssertion(); break;
    case "i": ev.preventDefault(); openCodePicker(); break;
    case "t": cycle("ner"); break;
    case "c": cycle("classification"); break;
    case "Escape": setFocus(-1, null); window.getSelection().removeAllRanges(); $("help").hidden = true; break;
    default: break;
  }
}

function tickLease() {
  const el = $("lease");
  if (!state.lease) { el.textContent = ""; return; }
  const left = Math.max(0, Math.round(state.lease.expires_at - Date.now() / 1000));
  el.textContent = "lease " + Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
  el.className = "lease" + (left < 60 ? " expiring" : "");
}

async function renewLease() {
  if (!state.note || !state.lease || !state.active || state.busy) return;
  state.active = false;
  try {
    const claimed = await api("POST", "/api/tasks/" + encodeURIComponent(state.note.note_id) + "/claim");
    state.lease = claimed.lease;
  } catch (e) {
    setStatus("Lost the lease on this task: " + e.message, true);
  }
}

async function start() {
  const session = await api("GET", "/api/session");
  state.csrf = session.csrf_token;
  state.reviewer = session.reviewer_id;
  state.leaseSeconds = session.lease_seconds;
  $("who").textContent = session.reviewer_id;
  document.addEventListener("keydown", onKey);
  document.addEventListener("mousedown", () => { state.active = true; });
  for (const id of ["f-task", "f-label", "f-type"]) $(id).addEventListener("change", refreshQueue);
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", nextTask);
  $("code-apply").addEventListener("click", () => closeCodePicker(true));
  $("code-cancel").addEventListener("click", () => closeCodePicker(false));
  $("help-button").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
  $("logout").addEventListener("click", async () => {
    await releaseCurrent();
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": state.csrf, "Content-Type": "application/json" }, credentials: "same-origin" });
    location.href = "/login";
  });
  window.addEventListener("pagehide", () => { releaseCurrent(); });
  await refreshQueue();
  setInterval(refreshQueue, 5000);
  setInterval(tickLease, 1000);
  setInterval(renewLease, Math.max(5, state.leaseSeconds / 3) * 1000);
}

start().catch((e) => setStatus(e.message, true));
