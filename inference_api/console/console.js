// fraudserve operator console: reads the API's admin JSON and draws it (SVG charts drawn here, no library).
// The admin key is typed once, kept in this tab's sessionStorage and sent only in the Authorization header of
// requests to this same origin; it never goes into a URL.
"use strict";

const KEY = "fraudserve.console.key";
const TRAFFIC_MS = 3000; // models and traffic
const FEATURES_MS = 6000; // freshness scans Redis: less often
const QUALITY_MS = 30000; // the report reads the score log
const COLOURS = ["#1f6feb", "#d9480f", "#2f855a", "#8e44ad", "#b7791f", "#0b7285", "#c2255c"];
const LABEL_COLOURS = { not_fraud: "#2f855a", suspicious: "#e0a100", highly_suspicious: "#c0392b", uncertain: "#8d96a5" };
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let timers = [];
const shown = {}; // panel id -> the JSON last drawn in it (redrawn only when it changes)

// --- DOM helpers: elements built with the DOM API (textContent, never HTML strings), so nothing is injected.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "style") Object.assign(el.style, value);
    else if (name === "on") for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function table(headers, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.num ? "num" : null }, x.text ?? x)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) =>
      h("td", { class: headers[i].num ? "num" : null }, c))))));
}

function replace(id, ...children) {
  $(id).replaceChildren(...children);
}

// --- Formatting, with units.
const num = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const rate = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(v < 10 ? 2 : 1)}/s`);
const ms = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(v < 10 ? 2 : 1)} ms`);
const pct = (v) => `${(100 * v).toFixed(1)} %`;

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  const short = (value) => String(+value.toFixed(1)); // 7 d, 1.5 h
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${short(seconds / 3600)} h`;
  return `${short(seconds / 86400)} d`;
}

const day = (iso) => (iso ? String(iso).slice(0, 10) : "–");

// --- The API.
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, {
    method: options.method || "GET",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    headers,
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(response.status, error.code || "http_error", error.message || response.statusText);
  }
  return body;
}

// --- Key handling.
function askForKey(message) {
  stop();
  $("panels").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("serving").textContent = "an admin key is needed";
  $("key").focus();
}

function onLogin(event) {
  event.preventDefault();
  const value = $("key").value.trim();
  $("key").value = "";
  if (!value) return;
  sessionStorage.setItem(KEY, value);
  $("login").hidden = true;
  start();
}

function forget() {
  sessionStorage.removeItem(KEY);
  askForKey("");
}

function handle(error) {
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
    const hadKey = sessionStorage.getItem(KEY) !== null;
    sessionStorage.removeItem(KEY);
    askForKey(hadKey ? `That key was refused (${error.status} ${error.code}): ${error.message}` : "");
    return;
  }
  const problem = $("problem");
  problem.hidden = false;
  problem.textContent = `Could not refresh: ${error.message}`;
}

// --- Charts.
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

// series: [{name, colour, points: [[x, y], ...]}]; x from xMin to xMax; xTick(x) -> label.
function lineChart({ series, xMin, xMax, yMax, yLabel, xLabel, xTicks, xTick, yTick, id }) {
  const W = 600, H = 230, L = 56, R = 12, T = 12, B = 42;
  const top = yMax ?? niceMax(Math.max(0, ...series.flatMap((x) => x.points.map((p) => p[1] ?? 0))));
  const sx = (x) => L + ((x - xMin) / (xMax - xMin || 1)) * (W - L - R);
  const sy = (y) => T + (1 - y / top) * (H - T - B);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${yLabel} by ${xLabel}`, id });
  for (let i = 0; i <= 4; i += 1) {
    const y = (top * i) / 4;
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }));
    svg.append(s("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end" }, yTick ? yTick(y) : String(+y.toFixed(3))));
  }
  for (const x of xTicks) {
    svg.append(s("text", { x: sx(x), y: H - B + 16, "text-anchor": "middle" }, xTick(x)));
  }
  svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(s("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, xLabel));
  svg.append(s("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(T + H - B) / 2})` }, yLabel));
  for (const line of series) {
    const points = line.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (points.length === 0) continue;
    const path = points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg.append(s("path", { d: path, fill: "none", stroke: line.colour, "stroke-width": 2, class: "series",
      "data-series": line.name }));
    for (const p of points) {
      svg.append(s("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.5, fill: line.colour },
        s("title", {}, `${line.name}: ${yTick ? yTick(p[1]) : p[1]}`)));
    }
  }
  const legend = h("div", { class: "legend" }, series.map((line) =>
    h("span", {}, h("span", { class: "swatch", style: { background: line.colour } }), line.name)));
  return h("div", { class: "chart" }, svg, legend);
}

// values: [[label, value, flagged]] drawn as horizontal bars, largest first as given.
function barChart(values, { unit = "", id } = {}) {
  const W = 600, row = 20, L = 190, R = 60;
  const H = row * values.length + 8;
  const top = niceMax(Math.max(0, ...values.map((v) => v[1])));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", id });
  values.forEach(([label, value, flagged], i) => {
    const y = 4 + i * row;
    const width = ((W - L - R) * value) / top;
    svg.append(s("text", { x: L - 6, y: y + 13, "text-anchor": "end" }, label));
    svg.append(s("rect", { x: L, y: y + 2, width: Math.max(width, 1).toFixed(1), height: row - 6,
      fill: flagged ? "#c0392b" : "#1f6feb" }, s("title", {}, `${label}: ${value.toFixed(4)}${unit}`)));
    svg.append(s("text", { x: L + width + 4, y: y + 13 }, `${value.toFixed(3)}${unit}`));
  });
  return h("div", { class: "chart" }, svg);
}

function labelMix(labels) {
  const total = Object.values(labels).reduce((a, b) => a + b, 0);
  if (!total) return "–";
  const bar = h("div", { class: "mix", role: "img", "aria-label": "label mix" },
    Object.entries(labels).filter(([, n]) => n > 0).map(([label, n]) =>
      h("span", { title: `${label}: ${pct(n / total)}`, style: { width: `${(100 * n) / total}%`,
        background: LABEL_COLOURS[label] || "#999" } })));
  const text = Object.entries(labels).filter(([, n]) => n > 0)
    .map(([label, n]) => `${label.replace("_", " ")} ${pct(n / total)}`).join(" · ");
  return h("div", {}, bar, h("small", {}, text));
}

// --- Panels.
function drawServing(serving) {
  const parts = [`${serving.model}: production v${serving.production ?? "–"}`];
  if (serving.candidate) parts.push(`candidate v${serving.candidate}`);
  parts.push(`canary ${serving.canary_percent} % of requests`);
  parts.push(`shadow ${serving.shadow ? "on" : "off"}`);
  $("serving").textContent = parts.join(" · ");
}

async function loadModels(serving) {
  const listing = await api("/v1/admin/models");
  const names = Object.keys(listing.models).sort();
  const details = await Promise.all(names.map((name) => api(`/v1/admin/models/${encodeURIComponent(name)}`)));
  const data = { names, details, loaded: serving ? serving.loaded : [] };
  const text = JSON.stringify(data);
  if (shown.models === text) return;
  shown.models = text;
  const loaded = new Set(data.loaded.map((m) => `${m.model}:${m.version}`));
  replace("models", ...names.map((name, i) => drawModel(name, details[i], loaded)));
}

function drawModel(name, detail, loaded) {
  const rows = detail.versions.slice().reverse().map((v) => {
    const m = v.manifest;
    const held = m.evaluation ? m.evaluation.model : null;
    const training = m.training;
    let state = "registered";
    if (detail.serving === v.version) state = "serving";
    else if (loaded.has(`${name}:${v.version}`)) state = "loaded";
    const production = v.aliases.includes("production");
    return [
      h("strong", {}, `v${v.version}`),
      h("span", {}, v.aliases.map((a) => h("span", { class: `alias ${a}` }, a))),
      m.flavor,
      m.feature_service,
      training ? `${day(training.data_start)} → ${day(training.data_end)} (${training.train_rows.toLocaleString()} rows)` : "–",
      held ? `ROC-AUC ${num(held.roc_auc)} · PR-AUC ${num(held.pr_auc)} · recall@1% FPR ${num(held.recall_at_1pct_fpr)}` : "–",
      source(m.params && m.params.source),
      h("span", { class: v.integrity === "ok" ? "ok" : "bad" }, v.integrity),
      h("span", { class: state === "serving" ? "ok" : null }, state),
      production ? "" : h("button", { type: "button", "data-action": "promote", "data-model": name,
        "data-version": v.version, disabled: busy, on: { click: () => promote(name, v.version) } }, `Promote v${v.version}`),
    ];
  });
  return h("div", { class: "model", "data-model": name },
    h("h3", {}, name, " ",
      h("button", { type: "button", "data-action": "rollback", "data-model": name,
        disabled: busy, on: { click: () => rollback(name) } }, "Roll back production")),
    detail.load_error ? h("p", { class: "error" }, `load error: ${detail.load_error}`) : null,
    table(["version", "aliases", "flavor", "feature service", "training data", "held-out metrics", "source",
      "integrity", "state", ""], rows));
}

// Where a version came from (the manifest keeps it for MLflow registrations): the URI, run and MLflow version.
function source(found) {
  if (!found || !found.uri) return "package";
  const details = [found.run_id ? `run ${found.run_id}` : null,
    found.mlflow_version ? `MLflow ${found.mlflow_version}` : null].filter(Boolean);
  return h("span", { class: "source", title: [found.uri, ...details].join(" · ") },
    h("code", {}, found.uri), details.length ? h("small", {}, ` (${details.join(", ")})`) : null);
}

function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

async function promote(name, version) {
  if (busy || !(await confirmAction(`Promote ${name} version ${version} to production? It serves every request at once.`))) return;
  await act(() => api(`/v1/admin/models/${encodeURIComponent(name)}/promote`, { method: "POST", body: { version } }));
}

async function rollback(name) {
  if (busy || !(await confirmAction(`Roll ${name} back to the version that was production before the current one?`))) return;
  await act(() => api(`/v1/admin/models/${encodeURIComponent(name)}/rollback`, { method: "POST" }));
}

let busy = false; // one promote or rollback at a time: their buttons are disabled while one runs

function setBusy(value) {
  busy = value;
  document.querySelectorAll("button[data-action]").forEach((button) => { button.disabled = value; });
}

async function act(call) {
  if (busy) return;
  setBusy(true);
  try {
    await call();
    await api("/v1/admin/reload", { method: "POST" }); // served now, not at the next poll
    shown.models = null;
    await refreshTraffic();
  } catch (error) {
    handle(error);
  } finally {
    setBusy(false);
  }
}

function drawTraffic(data) {
  const serving = data.serving;
  const role = (v) => {
    if (v.model !== serving.model) return "direct";
    if (v.version === serving.production) return "production";
    if (v.version === serving.candidate) return serving.canary_percent > 0 ? "canary" : "candidate";
    return "other";
  };
  const keys = [...new Set(data.series.flatMap((p) => Object.keys(p.per_second)))].sort();
  const oldest = Math.max(60, ...data.series.map((p) => p.ago_s));
  const series = keys.map((key, i) => ({
    name: `${key.replace(":", " v")} scores/s`,
    colour: COLOURS[i % COLOURS.length],
    points: data.series.map((p) => [-p.ago_s, p.per_second[key] ?? 0]),
  }));
  const ticks = [];
  const step = oldest > 180 ? 60 : oldest > 90 ? 30 : 15;
  for (let x = 0; x >= -oldest; x -= step) ticks.push(x);
  replace("traffic-chart", lineChart({ series, xMin: -oldest, xMax: 0, yLabel: "scores a second", xLabel:
    "seconds ago", xTicks: ticks, xTick: (x) => `${x} s`, yTick: (y) => `${+y.toFixed(2)}/s`, id: "traffic-svg" }));
  const rows = data.versions.map((v) => [
    `${v.model} v${v.version}`, role(v), rate(v.per_second), ms(v.p50_ms), ms(v.p99_ms), labelMix(v.labels),
  ]);
  replace("traffic", rows.length
    ? table(["version", "role", { text: "scores", num: true }, { text: "p50", num: true }, { text: "p99", num: true },
      "label mix"], rows)
    : h("p", { class: "note" }, data.seconds ? "no scores in this window" : "measuring: rates need two looks, a few seconds apart"));
  const errors = data.errors.map((e) => [e.code, String(e.count), rate(e.per_second)]);
  const statuses = data.statuses.map((e) => `${e.status}: ${rate(e.per_second)}`).join(" · ");
  replace("errors", errors.length
    ? table(["code", { text: "count", num: true }, { text: "rate", num: true }], errors)
    : h("p", { class: "note" }, "no errors in this window"),
  h("p", { class: "note" }, statuses ? `HTTP responses by status: ${statuses}` : ""));
}

async function refreshTraffic() {
  const data = await api("/v1/admin/console/traffic");
  drawServing(data.serving);
  drawTraffic(data);
  await loadModels(data.serving);
  $("problem").hidden = true;
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function refreshFeatures() {
  const data = await api("/v1/admin/console/features");
  const st = data.stream;
  const streamLine = st.error
    ? h("p", { class: "error" }, `stream: ${st.error}`)
    : h("p", {}, h("strong", {}, `Stream (${st.transport}): `),
      [st.lag !== undefined ? `lag ${st.lag.toLocaleString()} entries` : null,
        st.pending !== undefined ? `pending ${st.pending.toLocaleString()}` : null,
        st.length !== undefined ? `length ${st.length.toLocaleString()}` : null,
        `${st.per_second === null || st.per_second === undefined ? "–" : rate(st.per_second)} events processed`,
        `dead letters ${(st.counters.dead_letter || 0).toLocaleString()}`,
        `late ${(st.counters.late || 0).toLocaleString()}`].filter(Boolean).join(" · "));
  const rows = data.views.map((v) => [
    v.view, v.entity ?? "–", v.kind, v.ttl_s ? duration(v.ttl_s) : "–",
    v.kind === "on demand" ? "per request" : v.age_s === null ? "not online" : `${duration(v.age_s)} ago`,
    v.kind === "on demand" ? "" : h("span", { class: v.stale ? "stale" : v.age_s === null ? "bad" : "ok" },
      v.stale ? "older than TTL" : v.age_s === null ? "missing" : "fresh"),
  ]);
  replace("stream", streamLine);
  replace("features", table(["view", "entity", "kind", { text: "TTL", num: true }, { text: "newest row", num: true }, "state"], rows));
}

async function refreshQuality() {
  const report = await api("/v1/admin/console/quality?days=7");
  if (!report.versions.length) {
    replace("quality", h("p", { class: "note" }, `No scores logged in the last ${report.days} days.`));
    return;
  }
  replace("quality", h("p", { class: "note" }, `${report.rows.toLocaleString()} logged scores; ` +
    `${report.labels_known.toLocaleString()} transactions labelled; PSI ≥ ${report.psi_flag} flagged in red.`),
  ...report.versions.map((v) => drawQuality(v, report.psi_flag)));
}

function drawQuality(v, flag) {
  const q = v.quality;
  const days = v.days;
  const metrics = [["ROC-AUC", (d) => d.quality.roc_auc]];
  for (const name of Object.keys(q.at_thresholds)) {
    metrics.push([`precision @ ${name.replace("_", " ")}`, (d) => d.quality.at_thresholds[name]?.precision ?? null]);
    metrics.push([`recall @ ${name.replace("_", " ")}`, (d) => d.quality.at_thresholds[name]?.recall ?? null]);
  }
  const series = metrics.map(([name, pick], i) => ({
    name, colour: COLOURS[i % COLOURS.length], points: days.map((d, j) => [j, pick(d)]),
  }));
  const labelled = series.some((line) => line.points.some((point) => point[1] !== null && point[1] !== undefined));
  const quality = !labelled ? h("p", { class: "note" }, "No labelled transactions in these days yet: ROC-AUC, " +
    "precision and recall appear per day as labels land.") : lineChart({ series, xMin: 0, xMax: Math.max(days.length - 1, 1), yMax: 1, yLabel: "share (0–1)",
    xLabel: "day (UTC)", xTicks: days.map((_, j) => j), xTick: (j) => (days[j] ? days[j].day.slice(5) : ""),
    yTick: (y) => y.toFixed(2) });
  const psi = [];
  if (v.drift.score) psi.push(["(score)", v.drift.score.psi, v.drift.score.flagged]);
  for (const f of v.drift.features) psi.push([f.feature, f.psi, f.flagged]);
  psi.sort((a, b) => b[1] - a[1]);
  return h("div", { class: "quality-version", "data-version": v.version },
    h("h3", {}, `${v.model} v${v.version} `, h("small", {}, `(${v.feature_service})`)),
    h("p", {}, `${v.scores.toLocaleString()} scores; labelled ${q.labelled.toLocaleString()} (${q.positives} fraud); ` +
      `ROC-AUC ${num(q.roc_auc)}, PR-AUC ${num(q.pr_auc)}; uncertain ${v.uncertain_share === null ? "–" : pct(v.uncertain_share)}`),
    h("div", { class: "charts" },
      h("div", {}, h("h4", {}, "Labelled quality per day"), quality),
      h("div", {}, h("h4", {}, "Drift: PSI per feature, worst first"),
        psi.length ? barChart(psi.slice(0, 25)) : h("p", { class: "note" }, v.drift.note))));
}

// --- The refresh loop.
// A look that is still running when its next turn comes skips that turn: on a slow API the page never piles up
// requests (each holds a server thread) behind the ones it is already waiting for.
function every(ms, fn) {
  let running = false;
  const run = async () => {
    if (running) return;
    running = true;
    try {
      await fn();
    } catch (error) {
      handle(error);
    } finally {
      running = false;
    }
  };
  run();
  timers.push(setInterval(run, ms));
}

function stop() {
  timers.forEach(clearInterval);
  timers = [];
}

async function start() {
  stop();
  try {
    await refreshTraffic(); // the first call says whether a key is needed
  } catch (error) {
    handle(error);
    return;
  }
  $("panels").hidden = false;
  $("forget").hidden = sessionStorage.getItem(KEY) === null;
  timers.push(setTimeout(() => every(TRAFFIC_MS, refreshTraffic), TRAFFIC_MS)); // the first look was just made
  every(FEATURES_MS, refreshFeatures);
  every(QUALITY_MS, refreshQuality);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", onLogin);
  $("forget").addEventListener("click", forget);
  start();
});
