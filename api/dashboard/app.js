// The Arceus dashboard: the cluster, its jobs, and a job's live curves and stage figures.
// Every action calls the same REST API that curl uses; live updates come from the job's
// Server-Sent Events feed (GET /api/jobs/<id>/events), with no polling loop.
"use strict";

const FINAL = ["completed", "failed", "stopped"];
const COLORS = { train: "#3a5bd9", val: "#d9643a", step: "#7a54c7" };
const view = document.getElementById("view");
let current = null; // the job page's state while it is shown

// ------------------------------------------------------------------ helpers
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else if (v !== false && v != null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null) e.append(c instanceof Node ? c : String(c));
  return e;
}
const num = (v, digits = 3) => (Number.isFinite(v) ? (+v.toFixed(digits)).toLocaleString() : "–");
const pct = (v) => (Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : "–");
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const mb = (bytes) => (Number.isFinite(bytes) ? `${(bytes / 1e6).toFixed(2)} MB` : "–");
const badge = (text, cls) => h("span", { class: `badge ${cls || text}` }, text);

function notice(message, bad = true) {
  const n = document.getElementById("notice");
  n.textContent = message;
  n.className = bad ? "bad" : "";
  n.hidden = !message;
  if (message && !bad) setTimeout(() => { if (n.textContent === message) n.hidden = true; }, 4000);
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new Error(`cannot reach the Arceus API: ${e.message}`);
  }
  const reply = await resp.json().catch(() => ({}));
  if (resp.status === 401) throw new Unauthorized(reply.message || "sign in");
  if (!resp.ok) throw new Error(`${method} ${path}: ${resp.status} ${reply.message || resp.statusText}`);
  return reply;
}

// An action button: runs fn, shows the API's answer or error.
async function act(button, fn) {
  button.disabled = true;
  try {
    const reply = await fn();
    if (reply && reply.message) notice(reply.message, false);
  } catch (e) {
    handle(e);
  } finally {
    button.disabled = false;
  }
}

function handle(e) {
  if (e instanceof Unauthorized) return showLogin();
  notice(e.message);
}

// ------------------------------------------------------------------ sign-in
function showLogin() {
  leaveJob();
  view.replaceChildren(document.getElementById("login").content.cloneNode(true));
  document.getElementById("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/api/session", { token: document.getElementById("token").value });
      notice("");
      route();
    } catch (e) {
      notice(e.message);
    }
  });
}

document.getElementById("signout").addEventListener("click", async () => {
  await api("DELETE", "/api/session").catch(() => {});
  showLogin();
});

// ------------------------------------------------------------------ cluster & jobs
async function showHome() {
  leaveJob();
  const [cluster, devices, page] = await Promise.all([
    api("GET", "/api/cluster"), api("GET", "/api/devices"), api("GET", "/api/jobs?limit=1"),
  ]);
  const latest = await api("GET", `/api/jobs?offset=${Math.max(0, page.total - 50)}&limit=50`);
  const jobs = latest.jobs.slice().reverse();
  showCluster(cluster);
  const serving = {};
  for (const j of jobs) {
    if (["ready", "training", "initializing", "recovering"].includes(j.status)) {
      for (const s of j.plan || []) serving[s.device_id] = { job: j.job_id, stage: s.stage, layers: [s.start_layer, s.end_layer] };
    }
  }
  const deviceRows = devices.devices.map((d) => {
    const s = serving[d.device_id];
    return h("tr", { "data-device": d.device_id },
      h("td", {}, d.name || d.device_id), h("td", {}, d.host || "–"), h("td", {}, d.torch_device || "–"),
      h("td", {}, d.queue),
      h("td", {}, d.alive ? badge("alive") : badge("dead"), " ",
        h("span", { class: "muted" }, d.last_seen_s != null ? `${d.last_seen_s.toFixed(1)} s ago` : "never")),
      h("td", {}, s ? h("a", { href: `#/jobs/${s.job}` }, s.job) : "–"),
      h("td", { class: "num" }, s ? `${s.stage} [${s.layers[0]}, ${s.layers[1]})` : "–"),
      h("td", { class: "num" }, d.memory_gb ? `${d.memory_gb.toFixed(1)} GB` : "–"),
      h("td", {}, d.accelerator || "–"));
  });
  const jobRows = jobs.map((j) => h("tr", { "data-job": j.job_id },
    h("td", {}, h("a", { href: `#/jobs/${j.job_id}` }, j.job_id)),
    h("td", {}, badge(j.status)),
    h("td", {}, describeModel(j.model_config)), h("td", {}, j.dataset_config.name),
    h("td", {}, when(j.created_at)), h("td", {}, FINAL.includes(j.status) ? when(j.updated_at) : "–"),
    h("td", { class: "num" }, j.latest_metrics ? pct(j.latest_metrics.val_accuracy) : "–")));
  const textarea = h("textarea", { id: "job-json", spellcheck: "false" }, JSON.stringify(SEED_JOB, null, 2));
  const create = h("button", { id: "create-job", onclick: (ev) => act(ev.target, async () => {
    let body;
    try { body = JSON.parse(textarea.value); } catch (e) { throw new Error(`the job is not JSON: ${e.message}`); }
    const reply = await api("POST", "/api/jobs", body);
    location.hash = `#/jobs/${reply.job_id}`;
    return reply;
  }) }, "Create job");
  view.replaceChildren(
    h("h1", {}, "Cluster"),
    h("section", { class: "card" },
      h("div", { class: "actions" }, h("h2", {}, `Devices (${devices.devices.filter((d) => d.alive).length} alive of ${devices.devices.length})`),
        h("button", { class: "secondary", onclick: () => route() }, "Refresh")),
      devices.devices.length ? h("div", { class: "scroll" }, h("table", { id: "devices" },
        h("thead", {}, h("tr", {}, ["Device", "Host", "Torch device", "Queue", "Liveness", "Job", "Stage [layers)", "Memory", "Accelerator"]
          .map((t, i) => h("th", { class: i >= 6 && i <= 7 ? "num" : "" }, t)))),
        h("tbody", {}, deviceRows)))
        : h("p", { class: "muted" }, "No devices yet: run `arceus worker --join <this API>` on each machine.")),
    h("section", { class: "card" },
      h("h2", {}, page.total > 50 ? `Jobs (the 50 newest of ${page.total})` : `Jobs (${page.total})`),
      jobs.length ? h("div", { class: "scroll" }, h("table", { id: "jobs" },
        h("thead", {}, h("tr", {}, ["Job", "Status", "Model", "Dataset", "Created", "Finished", "Val acc"]
          .map((t) => h("th", {}, t)))),
        h("tbody", {}, jobRows))) : h("p", { class: "muted" }, "No jobs yet.")),
    h("section", { class: "card" }, h("h2", {}, "New job"),
      h("p", { class: "muted" }, "The body of POST /api/jobs (the original Arceus job)."), textarea,
      h("div", { class: "actions", style: "margin-top:.6rem" }, create)));
}

const SEED_JOB = {
  model_config: { layer_sizes: [784, 128, 64, 10] },
  dataset_config: { name: "MNIST", batch_size: 256, val_batch_size: 1000, normalize: { mean: [0.1307], std: [0.3081] } },
};

function describeModel(m) {
  if (m.layer_sizes) return `MLP ${m.layer_sizes.join("-")}`;
  if (m.layers) return `${m.layers.length} layers`;
  return "model";
}

function showCluster(cluster) {
  const flower = document.getElementById("flower");
  flower.hidden = !cluster.flower_url;
  if (cluster.flower_url) flower.href = cluster.flower_url;
  document.getElementById("signout").hidden = !cluster.token_required;
}

// ------------------------------------------------------------------ a job
function leaveJob() {
  if (current && current.source) current.source.close();
  current = null;
}

async function showJob(jobId) {
  leaveJob();
  const state = { jobId, epochs: new Map(), stages: new Map(), steps: [], cursor: "", source: null, job: null,
    refreshing: false, again: false };
  current = state;
  const [job, metrics, cluster, openapi] = await Promise.all([
    api("GET", `/api/jobs/${jobId}`), api("GET", `/api/jobs/${jobId}/metrics`), api("GET", "/api/cluster"),
    api("GET", "/api/openapi.json"),
  ]);
  if (current !== state) return;
  showCluster(cluster);
  for (const e of metrics.epochs) state.epochs.set(e.epoch, e);
  for (const s of metrics.stages) state.stages.set(`${s.epoch}:${s.stage}`, s);
  view.replaceChildren(jobSkeleton(jobId, openapi));
  setJob(job);
  follow(state);
}

function jobSkeleton(jobId, openapi) {
  const props = ((openapi.components || {}).schemas || {}).Train || {};
  const choices = (name, fallback) => ((props.properties || {})[name] || {}).enum || fallback;
  const field = (name, label, attrs) => h("label", {}, label, h("input", { name, ...attrs }));
  const select = (name, label, options, value) => h("label", {}, label,
    h("select", { name }, options.map((o) => h("option", { value: o, selected: o === value }, o))));
  const trainForm = h("form", { class: "inline", id: "train-form", onsubmit: (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const body = { epochs: +f.get("epochs"), learning_rate: +f.get("learning_rate"),
      micro_batches: +f.get("micro_batches"), wire: f.get("wire"), schedule: f.get("schedule") };
    act(ev.submitter || ev.target.querySelector("button"), async () => {
      const reply = await api("POST", `/api/network/train/${jobId}`, body);
      refollow();
      return reply;
    });
  } },
  field("epochs", "Epochs", { type: "number", min: 1, max: 10000, value: 10, required: true }),
  field("learning_rate", "Learning rate", { type: "number", step: "any", min: 0, value: 0.1, required: true }),
  field("micro_batches", "Micro-batches", { type: "number", min: 1, max: 1024, value: 1, required: true }),
  select("wire", "Wire", choices("wire", ["auto", "fp32", "fp16", "int8"]), "auto"),
  select("schedule", "Schedule", choices("schedule", ["gpipe", "1f1b"]), "gpipe"),
  h("button", { type: "submit", id: "train" }, "Train"));
  return h("div", { id: "job", "data-job": jobId },
    h("h1", {}, h("span", {}, `Job ${jobId}`), h("span", { id: "status" })),
    h("div", { id: "error" }),
    h("div", { class: "progress" }, h("span", { id: "progress-text", class: "muted" }, ""),
      h("div", { class: "bar" }, h("div", { id: "progress-bar" }))),
    h("section", { class: "card" }, h("h2", {}, "Actions"),
      h("div", { class: "actions", style: "margin-bottom:.8rem" },
        h("button", { id: "initialize", onclick: (ev) => act(ev.target, async () => {
          notice("initializing: every device's worker loads its shard…", false);
          const reply = await api("POST", `/api/network/initialize/${jobId}`, {});
          refollow();
          return reply;
        }) }, "Initialize"),
        h("button", { id: "stop", class: "danger", onclick: (ev) => act(ev.target,
          () => api("POST", `/api/network/stop/${jobId}`)) }, "Stop"),
        h("button", { id: "delete", class: "danger", onclick: (ev) => {
          if (!confirm(`Delete job ${jobId} and its checkpoints?`)) return;
          act(ev.target, async () => {
            const reply = await api("DELETE", `/api/jobs/${jobId}`);
            location.hash = "#/";
            return reply;
          });
        } }, "Delete"),
        h("a", { id: "download", hidden: true }, "Download model")),
      trainForm),
    h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, "Loss per epoch"), h("div", { id: "chart-loss" })),
      h("section", { class: "card" }, h("h2", {}, "Accuracy per epoch"), h("div", { id: "chart-accuracy" })),
      h("section", { class: "card" }, h("h2", {}, "Training loss per step"), h("div", { id: "chart-steps" }))),
    h("section", { class: "card", style: "margin-top:1rem" }, h("h2", {}, "Stages (latest epoch)"),
      h("div", { class: "scroll", id: "stages" })),
    h("section", { class: "card" }, h("h2", {}, "Plan"), h("div", { class: "scroll", id: "plan" })),
    h("section", { class: "card" }, h("h2", {}, "Checkpoints and recoveries"), h("div", { id: "durability" })),
    h("section", { class: "card" }, h("h2", {}, "Config"), h("pre", { id: "config" })));
}

function setJob(job) {
  const state = current;
  if (!state || state.jobId !== job.job_id) return;
  state.job = job;
  document.getElementById("status").replaceChildren(badge(job.status));
  const error = document.getElementById("error");
  error.replaceChildren(...(job.error ? [h("div", { class: "error", id: "job-error" }, job.error)] : []));
  document.getElementById("config").textContent = ["model_config", "dataset_config", "train_config"]
    .map((k) => `${k}: ${job[k] ? JSON.stringify(job[k], null, 1).replace(/\n\s*/g, " ") : "(not trained yet)"}`)
    .join("\n");
  const plan = job.plan || [];
  const costs = job.cost_model ? [h("p", { class: "muted", id: "cost-model" }, `Layer costs: ${job.cost_model}`)] : [];
  document.getElementById("plan").replaceChildren(...(plan.length ? [h("table", {},
    h("thead", {}, h("tr", {}, ["Stage", "Layers", "Device", "Parameters", "Training MFLOP/sample", "Memory (est.)",
      "Compute ms/batch (est.)", "Link to next (auto wire)"]
      .map((t, i) => h("th", { class: i >= 3 && i < 7 ? "num" : "" }, t)))),
    h("tbody", {}, plan.map((s) => h("tr", {},
      h("td", {}, s.stage), h("td", {}, `[${s.start_layer}, ${s.end_layer})`), h("td", {}, deviceName(job, s.device_id)),
      h("td", { class: "num" }, (s.params || 0).toLocaleString()), h("td", { class: "num" }, num((s.flops || 0) / 1e6, 3)),
      h("td", { class: "num" }, mb(s.memory_bytes)),
      h("td", { class: "num", title: "from the stage's layer costs (below the table) and its device's measured GFLOP/s" },
        s.expected_ms == null ? "–" : num(s.expected_ms, s.expected_ms < 1 ? 3 : 1)),
      h("td", { class: "link", title: s.link ? s.link.reason : "" },
        s.link ? `${s.link.wire} (${num(s.link.ms[s.link.wire], 2)} ms a batch)` : "–"))))), ...costs]
    : [h("p", { class: "muted" }, "Not planned yet: Initialize partitions the layers over the devices.")]));
  const download = document.getElementById("download");
  download.hidden = !(job.checkpoints || []).length;
  download.href = `/api/jobs/${job.job_id}/model`;
  const busy = ["initializing", "training", "recovering"].includes(job.status);
  document.getElementById("stop").disabled = !["training", "recovering"].includes(job.status);
  document.getElementById("initialize").disabled = busy;
  document.getElementById("train").disabled = busy || job.status === "created";
  document.getElementById("delete").disabled = busy;
  const cps = (job.checkpoints || []).map((c) => h("li", {}, `step ${c.step} (epoch ${c.epoch}${c.batch ? `, batch ${c.batch}` : ""})`,
    c.metrics && Number.isFinite(c.metrics.val_accuracy) ? `, val acc ${pct(c.metrics.val_accuracy)}` : ""));
  const recs = (job.recoveries || []).map((r) => h("li", {}, `device ${r.device_lost} (stage ${r.stage_lost}) lost at step ` +
    `${r.at_step}${r.cause ? ` (${r.cause})` : ""}; resumed from step ${r.resumed_from_step} after ${num(r.seconds, 1)} s (${r.steps_redone} steps redone)`));
  document.getElementById("durability").replaceChildren(
    cps.length ? h("ul", { id: "checkpoints" }, cps) : h("p", { class: "muted" }, "No checkpoint yet (one is saved every epoch)."),
    recs.length ? h("ul", { id: "recoveries" }, recs) : h("p", { class: "muted" }, "No recoveries."));
  setProgress(job.progress);
  draw();
}

function deviceName(job, id) {
  const d = (job.devices || []).find((x) => x.device_id === id);
  return d ? `${d.name || id} (${d.host || "?"}, ${d.torch_device || "?"})` : id || "–";
}

function setProgress(p) {
  const text = document.getElementById("progress-text"), bar = document.getElementById("progress-bar");
  if (!p || !text) return;
  if (p.step) {
    text.textContent = `epoch ${p.epoch}, step ${p.step}/${p.steps}, loss ${num(p.loss, 4)}, acc ${pct(p.accuracy)}`;
    bar.style.width = `${(100 * p.step) / p.steps}%`;
  } else if (p.epoch) {
    text.textContent = `epoch ${p.epoch}${p.epochs ? `/${p.epochs}` : ""} done`;
    bar.style.width = p.epochs ? `${(100 * p.epoch) / p.epochs}%` : "100%";
  }
}

function draw() {
  const state = current;
  if (!state || !document.getElementById("chart-loss")) return;
  const epochs = [...state.epochs.values()].sort((a, b) => a.epoch - b.epoch);
  const series = (field, name, color) => ({ name, color, points: epochs.map((e) => [e.epoch, e[field]]) });
  Charts.line(document.getElementById("chart-loss"),
    [series("train_loss", "train", COLORS.train), series("val_loss", "validation", COLORS.val)],
    { xLabel: "epoch", dots: true, integerX: true, empty: "the first epoch is not done yet" });
  Charts.line(document.getElementById("chart-accuracy"),
    [series("train_accuracy", "train", COLORS.train), series("val_accuracy", "validation", COLORS.val)],
    { xLabel: "epoch", dots: true, integerX: true, empty: "the first epoch is not done yet" });
  Charts.line(document.getElementById("chart-steps"), [{ name: "training loss", color: COLORS.step, points: state.steps }],
    { xLabel: "step", dots: state.steps.length < 40, empty: "no steps yet" });
  drawStages(state, epochs);
}

function drawStages(state, epochs) {
  const last = {};
  for (const s of state.stages.values()) if (!last[s.stage] || s.epoch >= last[s.stage].epoch) last[s.stage] = s;
  const rows = Object.values(last).sort((a, b) => a.stage - b.stage);
  const plan = (state.job && state.job.plan) || [];
  const samples = (epoch) => (state.epochs.get(epoch) || {}).samples;
  document.getElementById("stages").replaceChildren(rows.length ? h("table", { id: "stage-table" },
    h("thead", {}, h("tr", {}, ["Stage", "Epoch", "Utilization", "Compute s", "Wait s", "Codec s", "Sent",
      "Wire ratio", "TFLOP/s", "Peak memory"].map((t, i) => h("th", { class: i ? "num" : "" }, t)))),
    h("tbody", {}, rows.map((s) => {
      const flops = (plan.find((p) => p.stage === s.stage) || {}).flops;
      const tflops = flops && samples(s.epoch) && s.compute_s > 0 ? (flops * samples(s.epoch)) / s.compute_s / 1e12 : NaN;
      return h("tr", { "data-stage": s.stage },
        h("td", {}, s.stage), h("td", { class: "num" }, s.epoch), h("td", { class: "num" }, pct(s.utilization)),
        h("td", { class: "num" }, num(s.compute_s, 2)), h("td", { class: "num" }, num(s.wait_s, 2)),
        h("td", { class: "num" }, num(s.codec_s, 2)), h("td", { class: "num" }, mb(s.bytes_wire)),
        h("td", { class: "num" }, s.bytes_wire ? `${num(s.bytes_raw / s.bytes_wire, 2)}x` : "–"),
        h("td", { class: "num" }, num(tflops, 4)), h("td", { class: "num" }, `${num(s.peak_rss_mb, 0)} MiB`));
    }))) : h("p", { class: "muted" }, "Each stage reports its figures at the end of every epoch."));
}

// The job's feed: every state change, progress step, epoch and stage row as it happens. It
// replays the job's story first, so the curves fill in; an EventSource resumes by itself.
function follow(state) {
  const url = `/api/jobs/${state.jobId}/events` + (state.cursor ? `?after=${encodeURIComponent(state.cursor)}` : "");
  const source = new EventSource(url);
  state.source = source;
  let pending = false;
  const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } };
  source.onmessage = async (msg) => {
    if (current !== state) return source.close();
    if (msg.lastEventId) state.cursor = msg.lastEventId;
    const ev = JSON.parse(msg.data);
    if (ev.type === "epoch") { state.epochs.set(ev.epoch, ev); setProgress({ epoch: ev.epoch, epochs: ev.epochs }); redraw(); }
    else if (ev.type === "stage") { state.stages.set(`${ev.epoch}:${ev.stage}`, ev); redraw(); }
    else if (ev.type === "progress") {
      if (ev.job_step) {
        // A recovery's run redoes the steps after its checkpoint: theirs replace the lost run's.
        while (state.steps.length && state.steps[state.steps.length - 1][0] >= ev.job_step) state.steps.pop();
        state.steps.push([ev.job_step, ev.loss]);
      }
      setProgress(ev);
      redraw();
    } else if (ev.type === "state") {
      // A new training (not a recovery's run) starts its curves afresh, as /metrics does; new
      // weights, or a checkpoint's, count steps again.
      if (ev.status === "initializing" || (ev.new_run && ev.from !== "recovering")) {
        state.epochs.clear();
        state.stages.clear();
        if (ev.status === "initializing") state.steps = [];
        redraw();
      }
      document.getElementById("status").replaceChildren(badge(ev.status));
      refreshJob(state);
    } else if (ev.type === "end") {
      source.close();
      state.source = null;
      refreshJob(state);
    }
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED && current === state) {
      // Refused (e.g. too many feeds open, or signed out): try again in a while, from where we were.
      setTimeout(() => { if (current === state && state.source === source) follow(state); }, 5000);
    }
  };
}

function refollow() {
  const state = current;
  if (state && !state.source) follow(state);
}

// One GET at a time per page; a state change during it asks for one more after it.
async function refreshJob(state) {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    do {
      state.again = false;
      const job = await api("GET", `/api/jobs/${state.jobId}`);
      if (current === state) setJob(job);
    } while (state.again && current === state);
  } catch (e) {
    handle(e);
  } finally {
    state.refreshing = false;
  }
}

// ------------------------------------------------------------------ routing
async function route() {
  const m = location.hash.match(/^#\/jobs\/([^/]+)$/);
  try {
    if (m) await showJob(decodeURIComponent(m[1]));
    else await showHome();
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin();
    view.replaceChildren(h("div", { class: "error" }, e.message), h("a", { href: "#/" }, "Back to the cluster"));
  }
}

window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => { if (!document.hidden && !current) route(); });
route();
