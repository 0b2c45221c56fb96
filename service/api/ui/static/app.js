// Caviar's web UI: a studies list, a study page that follows the study's event stream, and a
// submit form. Plain ES modules, no build step; every number comes from the REST API.
import * as plot from "./plots.js";

const view = document.getElementById("view");
const TOKEN_KEY = "caviar-token";
const ACTIVE = ["queued", "running"];
const STATES = ["pending", "running", "completed", "stopped_early", "failed"];
let leave = () => {}; // what the current page does when the user navigates away

// ---- DOM and HTTP helpers ------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the page's CSP, a style attribute is not
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

class ApiError extends Error {
  constructor(status, problem) { super(problem?.detail || `HTTP ${status}`); this.status = status; this.problem = problem; }
}

function headers(extra = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, { method = "GET", body, type } = {}) {
  const r = await fetch(path, { method, body, headers: headers(type ? { "Content-Type": type } : {}) });
  if (r.status === 401) { askToken((await r.json().catch(() => ({}))).detail); throw new ApiError(401, null); }
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
  return { data: await r.json(), headers: r.headers, status: r.status };
}

function askToken(reason) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = localStorage.getItem(TOKEN_KEY) ? (reason || "the token was refused") : "";
  document.getElementById("token-input").focus();
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = document.getElementById("token-input").value.trim();
  if (!value) return;
  localStorage.setItem(TOKEN_KEY, value);
  document.getElementById("token-form").hidden = true;
  route();
});

// Server-Sent Events over fetch (EventSource cannot send the Authorization header), resuming
// with Last-Event-ID after a dropped connection; stops at study_finished or when aborted
async function follow(path, onEvent, signal) {
  let last = null;
  while (!signal.aborted) {
    try {
      const r = await fetch(path, { headers: headers(last ? { "Last-Event-ID": last, Accept: "text/event-stream" } : { Accept: "text/event-stream" }), signal });
      if (r.status === 401) { askToken(); return; }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let type = "message", data = "", id = null;
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const [field, ...rest] = line.split(":");
            const text = rest.join(":").replace(/^ /, "");
            if (field === "event") type = text; else if (field === "data") data += (data ? "\n" : "") + text; else if (field === "id") id = text;
          }
          if (id !== null) last = id;
          if (data) onEvent(type, JSON.parse(data));
          if (type === "study_finished") return;
        }
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

function throttle(fn, ms) {
  let timer = null, again = false;
  const run = async () => { again = false; try { await fn(); } finally { timer = setTimeout(() => { timer = null; if (again) run(); }, ms); } };
  return () => { if (timer) again = true; else run(); };
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const badge = (status) => h("span", { class: `badge ${status}` }, status.replace("_", " "));
const configText = (config) => Object.entries(config || {}).map(([k, v]) => `${k}=${typeof v === "number" ? plot.fmt(v) : v}`).join(" ");

function progress(study) {
  const c = study.trial_counts || {}, total = study.num_trials ?? study.definition?.budget?.num_trials ?? 0;
  const done = (c.completed || 0) + (c.stopped_early || 0) + (c.failed || 0);
  return h("span", { class: "progress", title: "done / of num_trials: running, stopped early, failed" },
    `${done} / ${total}`, h("small", {}, ` (${c.running || 0} running, ${c.stopped_early || 0} stopped early, ${c.failed || 0} failed)`));
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401) return h("p", { class: "muted" }, "Waiting for a token.");
  return h("p", { class: "error", role: "alert" }, err.message || String(err));
}

// ---- the studies list ----------------------------------------------------------------------

async function listPage(params) {
  const status = params.get("status") || "", offset = Number(params.get("offset") || 0), limit = 25;
  const filter = h("select", { "aria-label": "status filter", onchange: (e) => { location.hash = `#/?status=${e.target.value}`; } },
    ["", "queued", "running", "completed", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === status }, s || "all statuses")));
  const body = h("tbody");
  const pager = h("div", { class: "pager" });
  view.replaceChildren(h("div", { class: "toolbar" }, h("h1", {}, "Studies"), filter, h("a", { class: "button", href: "#/submit" }, "Submit a study")),
    h("table", { class: "studies" }, h("thead", {}, h("tr", {}, ["Name", "Owner", "Status", "Progress", "Best so far", "Created"].map((c) => h("th", {}, c)))), body), pager);
  const load = async () => {
    const q = new URLSearchParams({ offset, limit, view: "summary" }); // the listing shows no definition
    if (status) q.set("status", status);
    const { data } = await api(`/v1/studies?${q}`);
    body.replaceChildren(...data.items.map((s) => h("tr", { dataset: { study: s.id } },
      h("td", {}, h("a", { href: `#/studies/${s.id}` }, s.name), h("div", { class: "muted mono" }, s.id)),
      h("td", {}, s.owner), h("td", {}, badge(s.status)), h("td", {}, progress(s)),
      h("td", {}, s.best ? `${s.objective.metric} ${plot.fmt(s.best.value)}` : "–"), h("td", {}, when(s.created_at)))));
    if (!data.items.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No studies yet. Submit one.")));
    const nav = (o) => `#/?${new URLSearchParams({ ...(status ? { status } : {}), offset: o })}`;
    pager.replaceChildren(
      offset > 0 ? h("a", { href: nav(Math.max(0, offset - limit)) }, "← newer") : h("span"),
      h("span", { class: "muted" }, `${data.total ? offset + 1 : 0}–${offset + data.items.length} of ${data.total}`),
      offset + limit < data.total ? h("a", { href: nav(offset + limit) }, "older →") : h("span"));
  };
  try { await load(); } catch (err) { view.append(showError(err)); return; }
  const timer = setInterval(() => load().catch(() => {}), 5000);
  leave = () => clearInterval(timer);
}

// ---- a study -------------------------------------------------------------------------------

async function studyPage(id) {
  const controller = new AbortController();
  leave = () => controller.abort();
  const el = {
    head: h("div", { class: "study-head" }), best: h("section", { class: "card best" }),
    history: h("div", { class: "plot-box", "data-plot": "history" }), curves: h("div", { class: "plot-box", "data-plot": "curves" }),
    parallel: h("div", { class: "plot-box wide", "data-plot": "parallel" }), importance: h("div", { class: "plot-box", "data-plot": "importance" }),
    pareto: h("div", { class: "plot-box", "data-plot": "pareto" }), paretoCard: h("section", { class: "card", hidden: true }),
    trials: h("section", { class: "card trials" }), live: h("span", { class: "live", title: "following the study's event stream" }),
    steer: h("div", { class: "steer" }), children: h("span", { class: "muted" }, "–"), panda: h("section", { class: "card panda" }),
  };
  const timeToggle = h("input", { type: "checkbox", id: "by-time", onchange: () => drawHistory() });
  view.replaceChildren(el.head, el.panda, el.best,
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, "Optimization history ", h("label", { class: "small" }, timeToggle, " by wall time")), el.history),
      h("section", { class: "card" }, h("h2", {}, "Learning curves"), el.curves, h("p", { class: "legend" },
        Object.entries(plot.STATE_COLORS).filter(([s]) => s !== "pending").map(([s, c]) => h("span", {}, h("i", { style: `background:${c}` }), s.replace("_", " "))),
        h("span", {}, "× cut by the scheduler"), h("span", {}, "dashed: rungs"))),
      h("section", { class: "card wide" }, h("h2", {}, "Parallel coordinates (colour: value, yellow best)"), el.parallel),
      h("section", { class: "card" }, h("h2", {}, "Parameter importance"), el.importance), el.paretoCard),
    el.trials);

  let study = null, plots = null;
  const curveIndex = new Map();
  const drawHistory = () => plots && plot.history(el.history, plots.history, { byTime: timeToggle.checked, metric: plots.objective.metric });
  const drawCurves = throttle(async () => plots && plot.curves(el.curves, plots.curves), 250);

  const renderHead = () => {
    const s = study;
    const cancel = ACTIVE.includes(s.status) ? h("button", { class: "danger", onclick: async (e) => {
      const b = e.currentTarget;
      if (b.dataset.confirm !== "1") { b.dataset.confirm = "1"; b.textContent = "Confirm: cancel the study"; return; }
      b.disabled = true;
      try { study = (await api(`/v1/studies/${id}/cancel`, { method: "POST" })).data; renderHead(); } catch (err) { b.replaceWith(showError(err)); }
    } }, "Cancel study") : null;
    const steer = ACTIVE.includes(s.status) ? null : [
      h("button", { onclick: () => showRefine() }, "Refine…"), h("button", { onclick: () => showExtend() }, "Extend…")];
    el.head.replaceChildren(
      h("div", { class: "toolbar" }, h("h1", {}, s.name), badge(s.status), el.live, cancel, steer),
      el.steer,
      h("dl", { class: "facts" },
        h("dt", {}, "Study"), h("dd", { class: "mono" }, s.id), h("dt", {}, "Owner"), h("dd", {}, s.owner),
        h("dt", {}, "Trials"), h("dd", { "data-testid": "counts" }, progress(s)),
        h("dt", {}, (s.definition.objectives || []).length ? "Objectives" : "Objective"),
        h("dd", { "data-testid": "objectives" }, (s.definition.objectives || [s.objective]).map((o) => `${o.mode} ${o.metric}`).join(", ")),
        h("dt", {}, "Trainable"), h("dd", {}, s.trainable),
        h("dt", {}, "Sampler / scheduler"), h("dd", {}, `${s.definition.sampler?.type} / ${s.definition.scheduler?.type}`),
        h("dt", {}, "Created"), h("dd", {}, when(s.created_at)), h("dt", {}, "Finished"), h("dd", {}, when(s.finished_at)),
        s.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, s.error)] : null,
        s.parent_id ? [h("dt", {}, "Started from"), h("dd", {}, h("a", { href: `#/studies/${s.parent_id}`, "data-testid": "parent" }, s.parent_id),
          s.definition.warm_start ? ` (its best ${s.definition.warm_start.top_k} ran first)` : "")] : null,
        s.extended_at ? [h("dt", {}, "Extended"), h("dd", {}, when(s.extended_at))] : null,
        h("dt", {}, "Refined into"), h("dd", { "data-testid": "children" }, el.children),
        h("dt", {}, "Elsewhere"), h("dd", {},
          s.dashboard_url ? h("a", { href: s.dashboard_url, target: "_blank", rel: "noopener" }, "Ray job in the Ray dashboard") : h("span", { class: "muted" }, "no Ray job yet"),
          " · optuna-dashboard: ", h("code", {}, `caviar dashboard ${s.id}`))));
  };

  // coarse to fine: preview the narrowed space (a dry run), then create the refined study
  const showRefine = () => {
    const topK = h("input", { type: "number", min: 1, max: 100, value: 5, "aria-label": "top k" });
    const trials = h("input", { type: "number", min: 1, max: 10000, value: 16, "aria-label": "trials" });
    const out = h("div", { class: "preview" });
    const body = () => ({ top_k: Number(topK.value), num_trials: Number(trials.value) });
    const fail = (err) => out.replaceChildren(h("p", { class: "error", role: "alert" }, err.problem ? `${err.problem.field || ""} ${err.problem.detail}` : err.message));
    el.steer.replaceChildren(h("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const { data } = await api(`/v1/studies/${id}/refine?dry_run=true`, { method: "POST", body: JSON.stringify(body()), type: "application/json" });
        const range = (p) => (p ? (p.type === "categorical" ? p.choices.join(", ") : `${plot.fmt(p.low)} – ${plot.fmt(p.high)}${p.log ? " (log)" : ""}`) : "dropped");
        out.replaceChildren(h("table", { class: "kv", "data-testid": "narrowed" }, h("tr", {}, h("th", {}, "parameter"), h("th", {}, "before"), h("th", {}, "after")),
          Object.entries(data.narrowed).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, range(v.before)), h("td", {}, range(v.after))))),
        h("button", { type: "button", class: "primary", onclick: async () => {
          try { location.hash = `#/studies/${(await api(`/v1/studies/${id}/refine`, { method: "POST", body: JSON.stringify(body()), type: "application/json" })).data.id}`; } catch (err) { fail(err); }
        } }, "Create the refined study"));
      } catch (err) { fail(err); }
    } }, h("h2", {}, "Refine: search again, narrowed around the best"), h("label", {}, "top k ", topK), " ", h("label", {}, "trials ", trials), " ",
    h("button", { type: "submit" }, "Preview the narrowed space"), out));
  };
  const showExtend = () => {
    const more = h("input", { type: "number", min: 1, max: 10000, value: 8, "aria-label": "more trials" });
    const out = h("div");
    el.steer.replaceChildren(h("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      try {
        study = (await api(`/v1/studies/${id}/extend`, { method: "POST", body: JSON.stringify({ num_trials: Number(more.value) }), type: "application/json" })).data;
        el.steer.replaceChildren();
        route(); // the study runs again: follow it live
      } catch (err) { out.replaceChildren(h("p", { class: "error", role: "alert" }, err.problem ? err.problem.detail : err.message)); }
    } }, h("h2", {}, "Extend: more trials in this study (the sampler keeps its history)"), h("label", {}, "more trials ", more), " ", h("button", { type: "submit" }, "Extend"), out));
  };

  // panda mode: a person steers a running trial (POST .../adjust), and sees what was changed when
  const reported = new Set(); // trials the event stream has shown an epoch of (a cached trial list may not yet)
  const loadPanda = async () => {
    if (study.definition.mode !== "panda") { el.panda.replaceChildren(); return; }
    const [{ data: trainables }, { data: listed }] = await Promise.all([api("/v1/trainables"), api(`/v1/studies/${id}/trials`)]);
    const trials = listed.map((t) => (reported.has(t.trial_id) && !t.epochs ? { ...t, epochs: 1 } : t));
    const knobs = (trainables.find((t) => t.name === study.trainable) || { adjustable: [] }).adjustable;
    const details = await Promise.all(trials.map((t) => api(`/v1/studies/${id}/trials/${t.trial_id}`).then((r) => r.data)));
    const running = trials.filter((t) => t.state === "running");
    const trialSel = h("select", { "aria-label": "trial to adjust" }, running.map((t) => h("option", { value: t.trial_id }, `${t.trial_id} (epoch ${t.epochs})`)));
    const knobSel = h("select", { "aria-label": "knob" }, knobs.map((k) => h("option", { value: k }, k)));
    const value = h("input", { type: "text", size: 10, "aria-label": "new value" });
    const msg = h("span", { "aria-live": "polite" });
    el.panda.replaceChildren(...[h("h2", {}, "Panda mode: steer a running trial"),
      running.length && knobs.length ? h("form", { class: "toolbar", onsubmit: async (e) => {
        e.preventDefault();
        const v = Number(value.value);
        try {
          const { data } = await api(`/v1/studies/${id}/trials/${trialSel.value}/adjust`, { method: "POST", body: JSON.stringify({ [knobSel.value]: Number.isNaN(v) ? value.value : v }), type: "application/json" });
          msg.textContent = `adjustment ${data.id} accepted: applies after the current epoch`;
          loadPanda();
        } catch (err) { msg.replaceChildren(showError(err)); }
      } }, trialSel, knobSel, value, h("button", { type: "submit", class: "primary" }, "Adjust"), msg)
        : h("p", { class: "muted" }, knobs.length ? "No trial is running." : `${study.trainable} declares no adjustable knobs.`),
      trials.some((t) => t.epochs > 0) && knobs.length ? forkForm(trials, knobs) : null,
      h("table", { "data-testid": "interventions" }, h("thead", {}, h("tr", {}, ["Trial", "Changes", "By", "Asked", "Applied after epoch"].map((c) => h("th", {}, c)))),
        h("tbody", {}, details.flatMap((d) => d.interventions.map((i) => h("tr", {}, h("td", { class: "mono" }, d.trial_id), h("td", {}, configText(i.changes)),
          h("td", {}, i.by), h("td", {}, when(i.requested_at)), h("td", {}, i.after_epoch === null ? "pending" : String(i.after_epoch)))))))]
      .filter(Boolean)); // the DOM's replaceChildren would print a null
  };

  // "try something else from here": a new study from a trial's checkpoint at an epoch, with a change
  const forkForm = (trials, knobs) => {
    const trialSel = h("select", { "aria-label": "trial to fork" }, trials.filter((t) => t.epochs > 0).map((t) => h("option", { value: t.trial_id }, t.trial_id)));
    const epoch = h("input", { type: "number", min: 1, value: 1, size: 4, "aria-label": "from epoch" });
    const knobSel = h("select", { "aria-label": "fork knob" }, knobs.map((k) => h("option", { value: k }, k)));
    const value = h("input", { type: "text", size: 10, "aria-label": "fork value" });
    const msg = h("span");
    return h("form", { class: "toolbar", onsubmit: async (e) => {
      e.preventDefault();
      const v = Number(value.value);
      const changes = value.value.trim() ? { [knobSel.value]: Number.isNaN(v) ? value.value : v } : {};
      try {
        const { data } = await api(`/v1/studies/${id}/trials/${trialSel.value}/fork`, { method: "POST", body: JSON.stringify({ from_epoch: Number(epoch.value), changes }), type: "application/json" });
        location.hash = `#/studies/${data.id}`;
      } catch (err) { msg.replaceChildren(showError(err)); }
    } }, h("strong", {}, "Fork:"), trialSel, h("label", {}, "from epoch ", epoch), knobSel, value, h("button", { type: "submit" }, "Fork from here"), msg);
  };

  const loadChildren = async () => {
    const { data } = await api(`/v1/studies?parent_id=${id}&limit=20&view=summary`);
    el.children.replaceChildren(...(data.items.length ? data.items.flatMap((c, i) => [i ? ", " : "", h("a", { href: `#/studies/${c.id}` }, `${c.name} (${c.status})`)]) : ["–"]));
  };

  const loadBest = async () => {
    if (!study.best) { el.best.replaceChildren(h("h2", {}, "Best configuration"), h("p", { class: "muted" }, "No trial has reported yet.")); return; }
    const { data } = await api(`/v1/studies/${id}/best?k=1`);
    const b = data.items[0];
    if (!b) return;
    el.best.replaceChildren(h("h2", {}, "Best configuration"),
      h("p", {}, h("strong", { "data-testid": "best-value" }, `${data.objective.metric} = ${plot.fmt(b.value)}`), ` (trial ${b.trial_id})`),
      h("table", { class: "kv" }, Object.entries(b.config).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "number" ? plot.fmt(v, 6) : String(v))))),
      data.test_metrics ? h("p", {}, h("strong", {}, "Held-out test: "), Object.entries(data.test_metrics).map(([k, v]) => `${k} ${plot.fmt(v)}`).join(", "))
        : h("p", { class: "muted" }, ACTIVE.includes(study.status) ? "Held-out test metrics come when the study completes."
          : "No held-out test metrics (the trainable builds no model, or the best trial left no checkpoint)."));
  };

  const loadPlots = async () => {
    plots = (await api(`/v1/studies/${id}/plots`)).data;
    curveIndex.clear();
    plots.curves.items.forEach((c) => curveIndex.set(c.trial_id, c));
    drawHistory();
    plot.curves(el.curves, plots.curves);
    plot.parallel(el.parallel, plots.parallel, { mode: plots.objective.mode, metric: plots.objective.metric });
    const sampled = [];
    if (plots.curves.items.length < plots.curves.total) sampled.push(`${plots.curves.items.length} of ${plots.curves.total} curves`);
    if (plots.parallel.rows.length < plots.parallel.total) sampled.push(`${plots.parallel.rows.length} of ${plots.parallel.total} lines`);
    el.curves.title = sampled.length ? `Showing the best, the running and an even sample: ${sampled.join(", ")}` : "";
  };

  // several objectives: the Pareto front of the completed trials (GET .../pareto)
  const loadPareto = async () => {
    if (!study || !(study.definition.objectives || []).length) return;
    const { data } = await api(`/v1/studies/${id}/pareto`);
    el.paretoCard.hidden = false;
    el.paretoCard.replaceChildren(h("h2", {}, "Pareto front"), el.pareto);
    if (data.objectives.length === 2) plot.pareto(el.pareto, data);
    else el.pareto.replaceChildren(h("p", { class: "muted" }, `${data.objectives.length} objectives: the front is listed below.`));
    el.paretoCard.append(h("p", { class: "muted small", "data-testid": "pareto-summary" },
      `${data.front.length} on the front of ${data.trials_considered} completed trials (stopped-early ones are not compared)`),
      h("table", { class: "kv pareto" }, h("tr", {}, h("th", {}, "trial"), data.objectives.map((o) => h("th", {}, `${o.metric} (${o.mode})`))),
        data.front.slice(0, 20).map((p) => h("tr", {}, h("td", {}, p.trial_id), data.objectives.map((o) => h("td", {}, plot.fmt(p.values[o.metric])))))));
  };

  const loadImportance = async () => {
    try {
      const { data } = await api(`/v1/studies/${id}/importance`);
      plot.bars(el.importance, Object.entries(data.importances));
      el.importance.append(h("p", { class: "muted small" }, `${data.evaluator}, over ${data.trials_used}${data.trials_used < data.trials_measured ? ` (an even sample) of ${data.trials_measured}` : ""} ${data.states.join(" and ").replace("_", " ")} trials`));
    } catch (err) {
      el.importance.replaceChildren(h("p", { class: "muted" }, err.status === 409 ? "Needs at least 2 completed or stopped-early trials." : err.message));
    }
  };

  // the trials table: a page at a time, sorted and filtered by the server
  const table = { sort: "trial", order: "asc", state: "", offset: 0, limit: 50 };
  const COLS = [["trial", "Trial"], ["state", "State"], ["retries", "Retries"], ["node", "Node"], ["epochs", "Epochs"], ["best_value", "Best value"], [null, "Config"], ["started_at", "Started"]];
  const loadTrials = async () => {
    const q = new URLSearchParams({ sort: table.sort, order: table.order, offset: table.offset, limit: table.limit });
    if (table.state) q.set("state", table.state);
    const { data, headers: hd } = await api(`/v1/studies/${id}/trials?${q}`);
    const total = Number(hd.get("X-Total-Count") || data.length);
    const head = h("tr", {}, COLS.map(([key, label]) => key ? h("th", { class: "sortable", "aria-sort": table.sort === key ? (table.order === "asc" ? "ascending" : "descending") : "none",
      onclick: () => { table.order = table.sort === key && table.order === "asc" ? "desc" : "asc"; table.sort = key; table.offset = 0; loadTrials(); } },
      label, table.sort === key ? (table.order === "asc" ? " ▲" : " ▼") : "") : h("th", {}, label)));
    const stateFilter = h("select", { "aria-label": "trial state filter", onchange: (e) => { table.state = e.target.value; table.offset = 0; loadTrials(); } },
      ["", ...STATES].map((s) => h("option", { value: s, selected: s === table.state }, s ? s.replace("_", " ") : "all states")));
    el.trials.replaceChildren(h("div", { class: "toolbar" }, h("h2", {}, "Trials"), stateFilter,
      h("span", { class: "muted", "data-testid": "trials-total" }, `${total ? table.offset + 1 : 0}–${table.offset + data.length} of ${total}`),
      table.offset > 0 ? h("button", { onclick: () => { table.offset = Math.max(0, table.offset - table.limit); loadTrials(); } }, "← previous") : null,
      table.offset + table.limit < total ? h("button", { onclick: () => { table.offset += table.limit; loadTrials(); } }, "next →") : null),
    h("table", { class: "trials-table" }, h("thead", {}, head), h("tbody", {}, data.map((t) => h("tr", { dataset: { trial: t.trial_id } },
      h("td", { class: "mono" }, t.trial_id), h("td", {}, badge(t.state), t.error ? h("div", { class: "error small" }, t.error) : null),
      h("td", {}, t.retries), h("td", {}, t.node || "–"), h("td", {}, t.epochs), h("td", {}, plot.fmt(t.best_value)),
      h("td", { class: "config" }, configText(t.config)), h("td", {}, when(t.started_at)))))));
  };

  const refreshStudy = async () => { study = (await api(`/v1/studies/${id}`)).data; renderHead(); };
  const refreshAll = throttle(async () => { await Promise.allSettled([refreshStudy().then(loadBest).then(loadPareto), loadPlots(), loadTrials()]); }, 1500);
  const refreshImportance = throttle(loadImportance, 5000);

  try {
    await refreshStudy();
  } catch (err) { view.replaceChildren(showError(err)); return; }
  await Promise.allSettled([loadBest(), loadPlots(), loadImportance(), loadTrials(), loadChildren(), loadPanda(), loadPareto()]);

  if (!ACTIVE.includes(study.status)) { el.live.textContent = ""; return; }
  el.live.textContent = "● live";
  follow(`/v1/studies/${id}/events`, (type, data) => {
    if (type === "snapshot" || type === "study_finished") { study = data; renderHead(); }
    if (type === "epoch" && plots) { // the curve grows at once; the rest follows on the next refresh
      let c = curveIndex.get(data.trial_id);
      if (!c && plots.curves.items.length < 200) { c = { trial_id: data.trial_id, state: "running", values: [] }; plots.curves.items.push(c); curveIndex.set(c.trial_id, c); plots.curves.total += 1; }
      if (c) { c.values[data.epoch - 1] = data.metrics[plots.curves.metric] ?? null; for (let i = 0; i < c.values.length; i++) if (c.values[i] === undefined) c.values[i] = null; drawCurves(); }
    }
    if (["trial_started", "completed", "stopped_early", "failed", "retried", "new_best"].includes(type)) refreshAll();
    if (["adjust_requested", "adjusted", "trial_started"].includes(type)) loadPanda();
    if (type === "epoch" && study.definition.mode === "panda" && !reported.has(data.trial_id)) { reported.add(data.trial_id); loadPanda(); } // it can be forked now
    if (["completed", "stopped_early"].includes(type)) refreshImportance();
    if (type === "study_finished") { el.live.textContent = ""; refreshAll(); loadImportance(); }
  }, controller.signal);
}

// ---- submit --------------------------------------------------------------------------------

const EXAMPLE = `name: digits-quick
trainable: mlp_bn_softmax
dataset: {name: digits, validation_fraction: 0.2, seed: 0}
search_space: seven_key
fixed: {epochs: 8}
objective: {metric: val_accuracy, mode: max}
sampler: {type: tpe, seed: 0}
scheduler: {type: asha, max_t: 8, grace_period: 1, reduction_factor: 3}
budget: {num_trials: 12, max_concurrent_trials: 2}
`;

async function submitPage() {
  const text = h("textarea", { id: "definition", spellcheck: "false", rows: 18, "aria-label": "study definition (YAML or JSON)" }, EXAMPLE);
  const errors = h("div", { class: "errors", "aria-live": "polite" });
  const file = h("input", { type: "file", accept: ".yaml,.yml,.json", "aria-label": "upload a definition", onchange: async (e) => { const f = e.target.files[0]; if (f) text.value = await f.text(); } });
  const submit = h("button", { type: "submit", class: "primary" }, "Submit");
  const every = h("input", { type: "text", placeholder: "e.g. 30d", size: 8, "aria-label": "every" });
  const catalog = h("aside", { class: "catalog" });
  const form = h("form", { class: "submit", onsubmit: async (e) => {
    e.preventDefault();
    submit.disabled = true;
    errors.replaceChildren();
    const body = text.value;
    const type = /^\s*[{[]/.test(body) ? "application/json" : "application/yaml";
    try {
      if (every.value.trim()) { // a schedule: the definition, indented under `definition:` (YAML; JSON is YAML too)
        const doc = `every: ${JSON.stringify(every.value.trim())}\ndefinition:\n${body.split("\n").map((l) => `  ${l}`).join("\n")}\n`;
        await api("/v1/schedules", { method: "POST", body: doc, type: "application/yaml" });
        location.hash = "#/schedules";
        return;
      }
      const { data } = await api("/v1/studies", { method: "POST", body, type });
      location.hash = `#/studies/${data.id}`;
    } catch (err) {
      const p = err.problem;
      const list = p?.errors?.length ? p.errors : p ? [{ field: p.field || "body", message: p.detail }] : [{ field: "", message: err.message }];
      errors.replaceChildren(h("p", { class: "error", role: "alert" }, p ? `${p.title} (${p.status})` : "Not submitted"),
        h("ul", {}, list.map((x) => h("li", { "data-field": x.field }, h("code", { class: "field" }, x.field || "(definition)"), " ", x.message))));
    } finally { submit.disabled = false; }
  } }, h("label", { for: "definition" }, "Study definition, YAML or JSON (see ", h("a", { href: "/docs#/studies/submit_study_v1_studies_post" }, "the schema"), ")"),
  text, h("div", { class: "toolbar" }, file, h("label", {}, "run again every ", every, h("small", { class: "muted" }, " (optional: a schedule)")), submit), errors);
  view.replaceChildren(h("h1", {}, "Submit a study"), h("div", { class: "submit-grid" }, form, catalog));
  try {
    const [trainables, spaces] = await Promise.all([api("/v1/trainables"), api("/v1/search-spaces")]);
    catalog.replaceChildren(h("h2", {}, "Trainables"), h("ul", { "data-testid": "trainables" }, trainables.data.map((t) => h("li", {}, h("code", {}, t.name), " ", t.description.split("\n")[0],
      h("div", { class: "muted small" }, "metrics: ", t.metrics.join(", ")), h("details", {}, h("summary", {}, "knobs"), h("div", { class: "small mono" }, configText(t.knobs)))))),
    h("h2", {}, "Search-space presets"), h("ul", { "data-testid": "presets" }, spaces.data.map((s) => h("li", {}, h("code", {}, s.name), " ", s.description,
      h("div", { class: "muted small" }, Object.keys(s.parameters).join(", "))))));
  } catch (err) { catalog.replaceChildren(showError(err)); }
}

// ---- schedules (re-tuning) -------------------------------------------------------------------

async function schedulesPage() {
  const list = h("div");
  view.replaceChildren(h("div", { class: "toolbar" }, h("h1", {}, "Schedules"),
    h("span", { class: "muted" }, "a study run again every period, warm-started from the previous run (create one from Submit)")), list);
  const act = (sid, what) => async () => {
    try { await api(`/v1/schedules/${sid}${what === "delete" ? "" : `/${what}`}`, { method: what === "delete" ? "DELETE" : "POST" }); }
    catch (err) { list.prepend(showError(err)); }
    load();
  };
  const load = async () => {
    const { data } = await api("/v1/schedules");
    list.replaceChildren(...(data.length ? data.map((s) => h("section", { class: "card", dataset: { schedule: s.id } },
      h("div", { class: "toolbar" }, h("h2", {}, s.name), h("span", { class: "muted mono" }, s.id), h("span", {}, `every ${s.every}`),
        s.paused ? badge("paused") : h("span", {}, `next run ${when(s.next_run_at)}`),
        h("button", { onclick: act(s.id, s.paused ? "resume" : "pause") }, s.paused ? "Resume" : "Pause"),
        h("button", { class: "danger", onclick: act(s.id, "delete") }, "Delete")),
      s.last_error ? h("p", { class: "error" }, s.last_error) : null,
      h("table", {}, h("thead", {}, h("tr", {}, ["Run", "Status", "Best", "Previous best then", "Previous best today", "Drift", "Gain"].map((c) => h("th", {}, c)))),
        h("tbody", {}, s.runs.map((r) => h("tr", {}, h("td", {}, h("a", { href: `#/studies/${r.study_id}` }, when(r.started_at))),
          h("td", {}, r.status ? badge(r.status) : "deleted"), h("td", {}, plot.fmt(r.best_value)), h("td", {}, plot.fmt(r.previous_best_value)),
          h("td", {}, plot.fmt(r.reevaluated_value)), h("td", { class: "drift" }, r.drift === null ? "–" : (r.drift >= 0 ? "+" : "") + plot.fmt(r.drift)),
          h("td", {}, r.gain === null ? "–" : (r.gain >= 0 ? "+" : "") + plot.fmt(r.gain)))))))) : [h("p", { class: "muted" }, "No schedules.")]));
  };
  try { await load(); } catch (err) { list.replaceChildren(showError(err)); return; }
  const timer = setInterval(() => load().catch(() => {}), 3000);
  leave = () => clearInterval(timer);
}

// ---- routing -------------------------------------------------------------------------------

async function route() {
  leave();
  leave = () => {};
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const match = path.match(/^\/studies\/([A-Za-z0-9]+)$/);
  for (const a of document.querySelectorAll("nav a[data-nav]")) a.classList.toggle("active", a.dataset.nav === ({ "/submit": "submit", "/schedules": "schedules" }[path] || "list"));
  if (match) await studyPage(match[1]);
  else if (path === "/submit") await submitPage();
  else if (path === "/schedules") await schedulesPage();
  else await listPage(params);
  document.body.dataset.ready = path;
}

window.addEventListener("hashchange", route);
route();
