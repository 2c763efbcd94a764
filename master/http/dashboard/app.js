// herd dashboard: one page over /api/v1, live from one event stream (/api/v1/events).
// No build step, no libraries. State lives in a few plain objects; rendering is batched
// to one pass per animation frame, and only the visible page of the workers table is
// drawn, so 10,000 workers stay cheap.
"use strict";

(function () {
  const TOKEN_KEY = "herd-token";
  const WORKER_PAGE = 100;
  const TASK_PAGE = 50;
  /** Characters of a task's output the panel keeps. */
  const OUTPUT_KEEP = 1 << 20;
  const WINDOW_MS = 15 * 60 * 1000;
  const WORKER_STATES = ["Active", "Draining", "Inactive", "Pending", "Removed"];
  const TASK_STATES = ["queued", "assigned", "running", "succeeded", "failed", "cancelled"];
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  const $ = (id) => document.getElementById(id);

  // ---- state ----------------------------------------------------------------------

  let token = "";
  /** id -> worker object as the API gives it. */
  const workers = new Map();
  /** The master's clock minus ours, from the last as_of_ms seen. */
  let skew = 0;
  const view = { sort: "name", desc: false, filter: "", state: "", page: 0 };
  const tasksView = { state: "", tokens: [""], page: 0, next: "", rows: [] };
  /** The task shown in the panel, and its log stream. */
  const panel = { id: "", task: null, logs: null, lastOffset: -1 };
  const chart = { interval: 10000, samples: [], live: null, fromMaster: false };
  let events = null;
  /** The latest version of recent tasks, to count starts and ends once. */
  const recentTasks = new Map();
  /**
   * Events counted as they arrive, and the count at the last event of each worker and
   * task: a reply to a request sent before that event is older than it and is dropped.
   */
  let eventSeq = 0;
  const lastEvent = new Map();
  let loaded = false;

  // ---- helpers --------------------------------------------------------------------

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }

  function num(x) {
    if (x == null || isNaN(x)) return "0";
    const r = Math.round(x * 10) / 10;
    return Number.isInteger(r) ? String(r) : r.toFixed(1);
  }

  function now() {
    return Date.now() + skew;
  }

  function ago(ms) {
    if (!ms) return "never";
    const s = Math.max(0, (now() - ms) / 1000);
    if (s < 1) return "now";
    if (s < 60) return Math.floor(s) + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m ago";
    if (s < 86400) return Math.floor(s / 3600) + "h ago";
    return Math.floor(s / 86400) + "d ago";
  }

  function clock(ms) {
    if (!ms) return "–";
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function noteEvent(kind, id) {
    eventSeq++;
    const key = kind + ":" + id;
    lastEvent.delete(key);
    lastEvent.set(key, eventSeq);
    if (lastEvent.size > 50000) lastEvent.delete(lastEvent.keys().next().value);
  }

  /** Whether an event about `kind` `id` came after `since` (an eventSeq taken earlier). */
  function newer(kind, id, since) {
    return (lastEvent.get(kind + ":" + id) || 0) > since;
  }

  /** Task events may name a worker by id only: the name comes from the workers we hold. */
  function fillNames(t) {
    const name = (id) => (workers.get(id) || {}).name || "";
    if (!t.worker_name && t.worker_id) t.worker_name = name(t.worker_id);
    for (const a of t.history || []) if (!a.worker_name && a.worker_id) a.worker_name = name(a.worker_id);
    return t;
  }

  function toast(msg) {
    const t = $("toast");
    t.textContent = msg;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /**
   * One call to the API; the reply's JSON (or text). `ids`, when given, collects the
   * reply's X-Herd-Event-Id: the last event the master had sent when it answered.
   */
  async function api(method, path, body, ids) {
    const opts = { method, headers: token ? { Authorization: "Bearer " + token } : {} };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    if (res.status === 401) {
      showLogin("The token was refused.");
      throw new ApiError(401, "UNAUTHENTICATED", "unauthenticated");
    }
    const eventId = res.headers.get("X-Herd-Event-Id");
    if (ids && eventId !== null && eventId !== "") ids.push(Number(eventId));
    const type = res.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await res.json() : await res.text();
    if (!res.ok) {
      const msg = (data && data.error) || res.status + " " + res.statusText;
      // A worker's join token opens nothing here: ask for an operator token instead.
      if (res.status === 403 && /join token/.test(msg)) showLogin(msg);
      throw new ApiError(res.status, data && data.code, msg);
    }
    return data;
  }

  function dot(kind, word) {
    const k = String(word).toLowerCase();
    return `<span class="state ${kind}-${esc(k)}"><span class="dot" aria-hidden="true"></span>${esc(word)}</span>`;
  }

  function bar(used, total, unit) {
    const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
    const cls = pct >= 90 ? "hot" : pct >= 60 ? "warm" : "";
    return `<div class="meter" title="${num(used)} of ${num(total)}${unit}"><div class="fill ${cls}" style="width:${pct.toFixed(1)}%"></div></div><span class="mtext">${num(used)}/${num(total)}${unit}</span>`;
  }

  // ---- login ----------------------------------------------------------------------

  function readToken() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (m) {
      token = decodeURIComponent(m[1]);
      sessionStorage.setItem(TOKEN_KEY, token);
      const rest = location.hash.replace(/(^#|&)token=[^&]*/, "$1").replace(/^#&/, "#");
      history.replaceState(null, "", location.pathname + location.search + (rest === "#" ? "" : rest));
    } else {
      token = sessionStorage.getItem(TOKEN_KEY) || "";
    }
  }

  function showLogin(message) {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    if (events) { events.close(); events = null; }
    clearTimeout(retryTimer);
    closeLogs();
    $("app").hidden = true;
    $("task-panel").hidden = true;
    $("logout-button").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setLive("off");
    $("login-token").focus();
  }

  async function start() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout-button").hidden = false;
    loaded = false;
    const seen = new Set();
    const ids = [];
    try {
      await Promise.all([loadStatus(ids), loadHistory(), loadWorkers(seen, ids), loadTasks(ids)]);
    } catch (e) {
      if (e.status !== 401) {
        if ($("live-status").dataset.live !== "reconnecting") toast("Could not load: " + e.message);
        resyncSoon();
      }
      return;
    }
    // A reload after a lost connection: whatever the master no longer lists is gone.
    for (const id of [...workers.keys()]) if (!seen.has(id)) workers.delete(id);
    // The interval going on now is in no history sample yet: the newest tasks tell what
    // started and ended in it before the page came (the stream tells the rest).
    const live = liveSample();
    if (!tasksView.state && tasksView.page === 0) {
      for (const t of tasksView.rows) {
        if (t.started_ms && t.started_ms >= live.t_ms) live.tasks_started++;
        if (t.finished_ms && t.finished_ms >= live.t_ms && TERMINAL.has(t.state)) live.tasks_finished++;
      }
    }
    // Then the stream, from the oldest list read: every change since comes again, in
    // order, so nothing is missed between the lists and the stream.
    connectEvents(ids.length ? Math.min(...ids) : null);
    loaded = true;
    schedule();
    openFromHash();
  }

  // ---- loading --------------------------------------------------------------------

  async function loadStatus(ids) {
    const s = await api("GET", "/api/v1/status", undefined, ids);
    renderSummary(s);
  }

  let statusTimer = null;
  /** Task counts and the queue come from the master; refetched at most once a second, only after events. */
  function refreshStatusSoon() {
    if (statusTimer) return;
    statusTimer = setTimeout(() => {
      statusTimer = null;
      loadStatus().catch(() => {});
    }, 1000);
  }

  async function loadWorkers(seen, ids) {
    let pageToken = "";
    let first = true;
    do {
      // A small first page (what the table shows first, by name), then big ones.
      const size = first ? WORKER_PAGE : 1000;
      const q = `/api/v1/workers?all=true&page_size=${size}` + (pageToken ? "&page_token=" + encodeURIComponent(pageToken) : "");
      const since = eventSeq;
      const page = await api("GET", q, undefined, ids);
      for (const w of page.workers || []) {
        seen.add(w.id);
        if (!newer("worker", w.id, since)) putWorker(w);
      }
      pageToken = page.next_page_token || "";
      // Paint after the first page; the rest fills in behind it.
      if (first) { first = false; renderNow(); }
      else schedule();
    } while (pageToken);
    performance.mark("herd-workers-loaded");
  }

  function putWorker(w) {
    if (w.as_of_ms) skew = w.as_of_ms - Date.now();
    if (w.status === "Forgotten") {
      workers.delete(w.id);
      return;
    }
    const old = workers.get(w.id);
    if (old && old.as_of_ms && w.as_of_ms && old.as_of_ms > w.as_of_ms) return;
    w._received = Date.now();
    workers.set(w.id, w);
  }

  async function loadTasks(ids) {
    const v = tasksView;
    let q = "/api/v1/tasks?page_size=" + TASK_PAGE;
    if (v.state) q += "&state=" + encodeURIComponent(v.state);
    const pt = v.tokens[v.page];
    if (pt) q += "&page_token=" + encodeURIComponent(pt);
    const since = eventSeq;
    const page = await api("GET", q, undefined, ids);
    v.rows = (page.tasks || []).map((t) => (newer("task", t.id, since) && recentTasks.get(t.id)) || fillNames(t));
    for (const t of v.rows) if (!recentTasks.has(t.id)) recentTasks.set(t.id, t);
    v.next = page.next_page_token || "";
    renderTasks();
  }

  let tasksTimer = null;
  function reloadTasksSoon() {
    if (tasksTimer) return;
    tasksTimer = setTimeout(() => {
      tasksTimer = null;
      loadTasks().catch(() => {});
    }, 1000);
  }

  async function loadHistory() {
    const h = await api("GET", "/api/v1/history");
    chart.interval = h.interval_ms || 10000;
    chart.samples = h.samples || [];
    // Each sample covers the interval that ends at its t_ms: the one going on now began
    // at the last sample (or at the master's start), and events fill it in from there.
    const last = chart.samples[chart.samples.length - 1];
    chart.live = { t_ms: last ? last.t_ms : 0, tasks_started: 0, tasks_finished: 0 };
    schedule();
  }

  // ---- events ---------------------------------------------------------------------

  function setLive(state) {
    const el = $("live-status");
    el.dataset.live = state;
    el.textContent = { live: "live", connecting: "connecting", reconnecting: "reconnecting…", off: "offline" }[state] || state;
  }

  let retryTimer = null;
  let retryDelay = 1000;
  /** Loads everything again after a while: the way back from a lost event stream. */
  function resyncSoon() {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => { if (token || !$("app").hidden) start(); }, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 5000);
  }

  function connectEvents(from) {
    if (events) events.close();
    clearTimeout(retryTimer);
    setLive("connecting");
    let url = "/api/v1/events?token=" + encodeURIComponent(token);
    if (from != null && !isNaN(from)) url += "&last_event_id=" + from;
    const es = new EventSource(url);
    events = es;
    es.onopen = () => {
      setLive("live");
      retryDelay = 1000;
    };
    es.onerror = () => {
      if (es !== events) return;
      // Lost (the master restarted, the network dropped) or refused: rather than the
      // browser's own reconnect with Last-Event-ID, which a restarted master with new
      // event ids would answer with nothing, reload everything on a fresh stream.
      es.close();
      events = null;
      setLive("reconnecting");
      resyncSoon();
    };
    for (const type of ["worker", "task"]) {
      es.addEventListener(type, (ev) => receive(type, ev.data));
    }
    // Fell behind what the master keeps: reload everything on a fresh stream.
    es.addEventListener("resync", () => {
      if (es !== events) return;
      es.close();
      events = null;
      setLive("reconnecting");
      start();
    });
    // A master that sends its history samples as they are taken (`event: sample`, one
    // sample as in /api/v1/history) replaces the interval the page keeps by itself.
    es.addEventListener("sample", (ev) => {
      let sample;
      try { sample = JSON.parse(ev.data); } catch (_) { return; }
      chart.fromMaster = true;
      if (!chart.samples.some((p) => p.t_ms === sample.t_ms)) chart.samples.push(sample);
      chart.live = { t_ms: sample.t_ms, tasks_started: 0, tasks_finished: 0 };
      const cutoff = now() - WINDOW_MS;
      while (chart.samples.length && chart.samples[0].t_ms < cutoff) chart.samples.shift();
      schedule();
    });
  }

  function receive(type, text) {
    let data;
    try { data = JSON.parse(text); } catch (_) { return; }
    noteEvent(type, data.id);
    applyEvent(type, data);
  }

  function applyEvent(type, data) {
    if (type === "worker") {
      putWorker(data);
      schedule();
    } else if (type === "task") {
      onTask(data);
    }
  }

  function onTask(t) {
    fillNames(t);
    const prevTask = recentTasks.get(t.id);
    // Keep the holder's allocation and task list in step between worker events: only the
    // worker that held the task and the one that holds it now can change.
    const holders = new Set([t.worker_id, prevTask && prevTask.worker_id]);
    for (const wid of holders) {
      const w = wid && workers.get(wid);
      if (!w) continue;
      const i = (w.tasks || []).indexOf(t.id);
      const holds = t.worker_id === w.id && (t.state === "assigned" || t.state === "running");
      if (i >= 0 && !holds) {
        w.tasks.splice(i, 1);
        w.cpu.allocated = Math.max(0, w.cpu.allocated - t.cpu);
        w.memory_gb.allocated = Math.max(0, w.memory_gb.allocated - t.memory_gb);
        w.gpu.allocated = Math.max(0, w.gpu.allocated - t.gpu);
        if (w.disk_gb) w.disk_gb.allocated = Math.max(0, w.disk_gb.allocated - (t.disk_gb || 0));
      } else if (i < 0 && holds) {
        (w.tasks = w.tasks || []).push(t.id);
        w.cpu.allocated += t.cpu;
        w.memory_gb.allocated += t.memory_gb;
        w.gpu.allocated += t.gpu;
        if (w.disk_gb) w.disk_gb.allocated += t.disk_gb || 0;
      }
    }
    // The chart's live interval counts starts and ends.
    const prev = prevTask && prevTask.state;
    recentTasks.delete(t.id);
    recentTasks.set(t.id, t);
    if (recentTasks.size > 20000) recentTasks.delete(recentTasks.keys().next().value);
    // Only what happened in this interval: a fresh event stream may replay older events.
    const live = liveSample();
    if (t.state === "running" && prev !== "running" && t.started_ms >= live.t_ms) live.tasks_started++;
    if (TERMINAL.has(t.state) && !TERMINAL.has(prev) && t.finished_ms >= live.t_ms) live.tasks_finished++;

    // The tasks table (newest first): update in place, or place a task that now matches
    // the filter where it belongs on the first page.
    const v = tasksView;
    const idx = v.rows.findIndex((r) => r.id === t.id);
    const matches = !v.state || v.state === t.state;
    if (idx >= 0) {
      if (matches || panel.id === t.id) v.rows[idx] = t;
      else v.rows.splice(idx, 1);
    } else if (v.page === 0 && matches) {
      const last = v.rows[v.rows.length - 1];
      if (v.rows.length < TASK_PAGE || !v.next || t.submitted_ms >= last.submitted_ms) {
        let at = v.rows.findIndex((r) => r.submitted_ms < t.submitted_ms);
        if (at < 0) at = v.rows.length;
        v.rows.splice(at, 0, t);
        if (v.rows.length > TASK_PAGE) {
          v.rows.length = TASK_PAGE;
          // The page has grown past one: ask for it again, for a real next-page token.
          if (!v.next) { v.next = "more"; reloadTasksSoon(); }
        }
      }
    }
    if (panel.id === t.id) showTask(t);
    refreshStatusSoon();
    schedule();
  }

  // ---- rendering ------------------------------------------------------------------

  let frame = 0;
  function schedule() {
    if (!frame) frame = requestAnimationFrame(renderNow);
  }

  function renderNow() {
    if (frame) { cancelAnimationFrame(frame); frame = 0; }
    renderWorkerCounts();
    renderWorkers();
    renderTasks();
    renderCharts();
  }

  function renderSummary(s) {
    const tc = s.tasks || {};
    $("summary-tasks").innerHTML = TASK_STATES.map((k) =>
      `<div class="count" data-count="task-${k}"><span class="n" id="count-task-${k}">${tc[k] || 0}</span>${dot("task", k)}</div>`).join("");
    $("summary-queue").textContent = s.queue_length;
    const sel = $("scheduler-select");
    if (s.scheduler && ![...sel.options].some((o) => o.value === s.scheduler)) {
      sel.add(new Option(s.scheduler, s.scheduler));
    }
    if (document.activeElement !== sel) sel.value = s.scheduler;
  }

  /** Worker counts come from the workers we hold, so they change with every event. */
  function renderWorkerCounts() {
    const c = { Active: 0, Draining: 0, Inactive: 0, Pending: 0, Removed: 0 };
    for (const w of workers.values()) c[w.status] = (c[w.status] || 0) + 1;
    $("summary-workers").innerHTML = Object.keys(c).map((k) =>
      `<div class="count" data-count="worker-${k}"><span class="n" id="count-worker-${k}">${c[k]}</span>${dot("worker", k)}</div>`).join("");
  }

  function lastSeen(w) {
    if (w.status === "Active" || w.status === "Draining") return w.connected === false ? ago(w.last_heartbeat_ms) : "now";
    return ago(w.last_heartbeat_ms);
  }

  const sorters = {
    name: (w) => w.name,
    id: (w) => w.id,
    status: (w) => WORKER_STATES.indexOf(w.status),
    address: (w) => w.address,
    cpu: (w) => (w.cpu.total ? w.cpu.allocated / w.cpu.total : 0),
    memory: (w) => (w.memory_gb.total ? w.memory_gb.allocated / w.memory_gb.total : 0),
    gpu: (w) => w.gpu.total,
    disk: (w) => (w.disk_gb && w.disk_gb.total ? w.disk_gb.allocated / w.disk_gb.total : 0),
    usage: (w) => w.cpu.usage_percent,
    tasks: (w) => (w.tasks || []).length,
    seen: (w) => -(w.last_heartbeat_ms || 0),
  };

  function visibleWorkers() {
    const f = view.filter.toLowerCase();
    let list = [];
    for (const w of workers.values()) {
      if (view.state && w.status !== view.state) continue;
      if (f) {
        const labels = Object.entries(w.labels || {}).map(([k, v]) => k + "=" + v).join(" ");
        const hay = (w.name + " " + w.id + " " + w.address + " " + w.host + " " + labels).toLowerCase();
        if (!hay.includes(f)) continue;
      }
      list.push(w);
    }
    const key = sorters[view.sort] || sorters.name;
    const dir = view.desc ? -1 : 1;
    list.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x < y) return -dir;
      if (x > y) return dir;
      return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
    });
    return list;
  }

  /**
   * Puts `rows` ([key, html] pairs) into `tbody`, keeping every row whose html did not
   * change: a button stays the same element while others update around it.
   */
  function patchRows(tbody, rows, empty) {
    if (!rows.length) {
      if (tbody.dataset.empty !== empty) {
        tbody.innerHTML = empty;
        tbody.dataset.empty = empty;
      }
      return;
    }
    if (tbody.dataset.empty !== undefined) {
      tbody.innerHTML = "";
      delete tbody.dataset.empty;
    }
    const old = new Map();
    for (const tr of tbody.children) old.set(tr.dataset.key, tr);
    let at = tbody.firstElementChild;
    const tpl = document.createElement("template");
    for (const [key, html] of rows) {
      let tr = old.get(key);
      if (tr && tr._html === html) {
        old.delete(key);
      } else {
        tpl.innerHTML = html;
        const fresh = tpl.content.firstElementChild;
        fresh.dataset.key = key;
        fresh._html = html;
        if (tr) {
          old.delete(key);
          if (at === tr) at = fresh;
          tr.replaceWith(fresh);
        }
        tr = fresh;
      }
      if (tr !== at) tbody.insertBefore(tr, at);
      else at = at.nextElementSibling;
    }
    for (const tr of old.values()) tr.remove();
  }

  function renderWorkers() {
    const list = visibleWorkers();
    const pages = Math.max(1, Math.ceil(list.length / WORKER_PAGE));
    if (view.page >= pages) view.page = pages - 1;
    const from = view.page * WORKER_PAGE;
    const rows = list.slice(from, from + WORKER_PAGE);
    patchRows($("workers-body"), rows.map((w) => [w.id, workerRow(w)]),
      `<tr class="empty"><td colspan="12">${workers.size ? "No worker matches." : "No workers yet. Start one with <code>herd-worker --master HOST:50051</code>."}</td></tr>`);
    $("workers-count").textContent = `(${workers.size})`;
    // For whoever measures first paint (the tests do): the performance timeline.
    if (rows.length && !performance.getEntriesByName("herd-first-workers").length) {
      performance.mark("herd-first-workers");
    }
    $("workers-range").textContent = list.length ? `${from + 1}–${from + rows.length} of ${list.length}` : "0 of 0";
    $("workers-prev").disabled = view.page === 0;
    $("workers-next").disabled = view.page >= pages - 1;
    $("workers-pager").hidden = list.length <= WORKER_PAGE;
    for (const th of document.querySelectorAll("#workers-table th[data-sort]")) {
      if (th.dataset.sort === view.sort) th.setAttribute("aria-sort", view.desc ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    }
  }

  function workerRow(w) {
    const tasks = w.tasks || [];
    const draining = w.status === "Draining";
    const canDrain = w.status === "Active" || draining;
    const actions = [];
    if (canDrain) {
      actions.push(`<button type="button" class="small" data-drain="${esc(w.name)}" data-action="${draining ? "undrain" : "drain"}">${draining ? "Undrain" : "Drain"}</button>`);
    } else {
      actions.push(`<button type="button" class="small quiet" data-forget="${esc(w.name)}">Forget</button>`);
    }
    const usage = w.status === "Active" || draining
      ? `${num(w.cpu.usage_percent)}% cpu · ${num(w.memory_gb.in_use)} GB`
      : "–";
    return `<tr data-worker="${esc(w.name)}" data-id="${esc(w.id)}" data-status="${esc(w.status)}">` +
      `<td class="name">${esc(w.name)}</td>` +
      `<td class="mono">${esc(w.id)}</td>` +
      `<td>${dot("worker", w.status)}</td>` +
      `<td class="wide mono">${esc(w.address)}</td>` +
      `<td class="m">${bar(w.cpu.allocated, w.cpu.total, "")}</td>` +
      `<td class="m">${bar(w.memory_gb.allocated, w.memory_gb.total, " GB")}</td>` +
      `<td class="m wide">${w.gpu.total ? bar(w.gpu.allocated, w.gpu.total, "") : '<span class="muted">–</span>'}</td>` +
      `<td class="m wide">${w.disk_gb && w.disk_gb.total ? bar(w.disk_gb.allocated, w.disk_gb.total, " GB") : '<span class="muted">–</span>'}</td>` +
      `<td class="wide">${usage}</td>` +
      `<td class="tasks" title="${esc(tasks.join(" "))}">${tasks.length}${tasks.length && tasks.length <= 3
        ? " " + tasks.map((id) => `<a href="#task/${esc(id)}" class="mono">${esc(id)}</a>`).join(" ") : ""}</td>` +
      `<td class="seen" data-seen="${esc(w.id)}">${esc(lastSeen(w))}</td>` +
      `<td class="actions">${actions.join("")}</td></tr>`;
  }

  function request(t) {
    let s = num(t.cpu) + " cpu";
    if (t.memory_gb > 0) s += ", " + num(t.memory_gb) + " GB";
    if (t.gpu > 0) s += ", " + t.gpu + " gpu";
    if (t.disk_gb > 0) s += ", " + num(t.disk_gb) + " GB disk";
    if (t.gpu_ids && t.gpu_ids.length) s += " (gpu " + t.gpu_ids.join(",") + ")";
    return s;
  }

  function renderTasks() {
    const v = tasksView;
    const rows = v.rows;
    patchRows($("tasks-body"), rows.map((t) => [t.id,
      `<tr data-task="${esc(t.id)}" data-state="${esc(t.state)}" class="click${panel.id === t.id ? " selected" : ""}">` +
      `<td class="mono"><a href="#task/${esc(t.id)}">${esc(t.id)}</a></td>` +
      `<td class="wide">${esc(t.name || "–")}</td>` +
      `<td>${dot("task", t.state)}</td>` +
      `<td>${esc(t.worker_name || "–")}</td>` +
      `<td class="wide">${esc(request(t))}</td>` +
      `<td class="wide">${t.attempts}</td>` +
      `<td>${TERMINAL.has(t.state) && t.state !== "cancelled" ? esc(t.exit_code ?? "–") : "–"}</td>` +
      `<td class="wide">${esc(ago(t.submitted_ms))}</td>` +
      `<td class="cmd" title="${esc(t.command)}">${esc(t.image ? t.image + (t.command ? " · " + t.command : "") : t.command)}</td></tr>`]),
      `<tr class="empty"><td colspan="9">No tasks${v.state ? " " + esc(v.state) : ""}.</td></tr>`);
    $("tasks-range").textContent = `page ${v.page + 1}`;
    $("tasks-prev").disabled = v.page === 0;
    $("tasks-next").disabled = !v.next || v.next === "more";
  }

  // ---- chart ----------------------------------------------------------------------

  /** The sample being filled by events now; closed every interval by the local clock. */
  function liveSample() {
    if (!chart.live) {
      chart.live = { t_ms: now(), tasks_started: 0, tasks_finished: 0 };
    }
    return chart.live;
  }

  function clusterNow() {
    const s = { cpu_total: 0, cpu_allocated: 0, cpu_used: 0, memory_total_gb: 0, memory_allocated_gb: 0, memory_used_gb: 0 };
    for (const w of workers.values()) {
      if (w.status !== "Active" && w.status !== "Draining") continue;
      s.cpu_total += w.cpu.total;
      s.cpu_allocated += w.cpu.allocated;
      s.cpu_used += (w.cpu.usage_percent / 100) * w.cpu.total;
      s.memory_total_gb += w.memory_gb.total;
      s.memory_allocated_gb += w.memory_gb.allocated;
      s.memory_used_gb += w.memory_gb.in_use;
    }
    return s;
  }

  function closeInterval() {
    if (chart.fromMaster) return;
    const live = liveSample();
    chart.samples.push(Object.assign({}, clusterNow(), live, { t_ms: now() }));
    chart.live = { t_ms: now(), tasks_started: 0, tasks_finished: 0 };
    const cutoff = now() - WINDOW_MS;
    while (chart.samples.length && chart.samples[0].t_ms < cutoff) chart.samples.shift();
    schedule();
  }

  function series() {
    const pts = chart.samples.slice();
    const live = Object.assign({}, clusterNow(), liveSample(), { t_ms: now() });
    pts.push(live);
    return pts;
  }

  function path(pts, x, y, key) {
    return pts.map((p, i) => (i ? "L" : "M") + x(p.t_ms).toFixed(1) + "," + y(p[key] || 0).toFixed(1)).join("");
  }

  function drawLines(svg, pts, lines, unit) {
    const W = 400, H = 140, L = 34, B = 16, T = 6;
    const t1 = now(), t0 = t1 - WINDOW_MS;
    let max = 0;
    for (const p of pts) for (const l of lines) max = Math.max(max, p[l.key] || 0);
    max = max > 0 ? niceMax(max) : 1;
    const x = (t) => L + ((t - t0) / WINDOW_MS) * (W - L - 2);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    let out = axes(W, H, L, B, T, max, unit, t0, x);
    for (const l of lines) {
      if (l.area && pts.length) {
        const d = path(pts, x, y, l.key) + `L${x(pts[pts.length - 1].t_ms).toFixed(1)},${y(0)}L${x(pts[0].t_ms).toFixed(1)},${y(0)}Z`;
        out += `<path class="area ${l.cls}" d="${d}"/>`;
      }
      out += `<path class="line ${l.cls}" d="${path(pts, x, y, l.key)}"/>`;
    }
    svg.innerHTML = out;
  }

  function drawBars(svg, pts) {
    const W = 400, H = 140, L = 34, B = 16, T = 6;
    const t1 = now(), t0 = t1 - WINDOW_MS;
    // Per minute, counted back from now: bin k holds the samples of (now-(k+1)m, now-km].
    const bins = [];
    for (let k = 0; k < 15; k++) bins.push({ started: 0, finished: 0 });
    for (const p of pts) {
      const k = Math.floor((t1 - p.t_ms) / 60000);
      if (k < 0 || k >= 15) continue;
      bins[k].started += p.tasks_started || 0;
      bins[k].finished += p.tasks_finished || 0;
    }
    let max = 0;
    for (const e of bins) max = Math.max(max, e.started, e.finished);
    max = max > 0 ? niceMax(max) : 1;
    const x = (t) => L + ((t - t0) / WINDOW_MS) * (W - L - 2);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    const bw = (W - L - 2) / 15 / 2 - 1;
    let out = axes(W, H, L, B, T, max, "", t0, x);
    bins.forEach((e, k) => {
      const bx = x(t1 - (k + 1) * 60000) + 1;
      for (const [i, kind, n] of [[0, "started", e.started], [1, "finished", e.finished]]) {
        if (!n) continue;
        out += `<rect class="bar ${kind}" x="${(bx + i * (bw + 1)).toFixed(1)}" y="${y(n).toFixed(1)}" width="${bw.toFixed(1)}" height="${(y(0) - y(n)).toFixed(1)}"><title>${n} ${kind}</title></rect>`;
      }
    });
    svg.innerHTML = out;
  }

  function niceMax(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function axes(W, H, L, B, T, max, unit, t0, x) {
    let out = "";
    for (const f of [0, 0.5, 1]) {
      const yy = T + (1 - f) * (H - T - B);
      out += `<line class="grid" x1="${L}" x2="${W}" y1="${yy}" y2="${yy}"/>`;
      out += `<text class="tick" x="${L - 4}" y="${yy + 3}" text-anchor="end">${num(max * f)}${unit}</text>`;
    }
    for (const back of [15, 10, 5, 0]) {
      const xx = x(t0 + WINDOW_MS - back * 60000);
      out += `<text class="tick" x="${xx.toFixed(1)}" y="${H - 3}" text-anchor="${back === 0 ? "end" : back === 15 ? "start" : "middle"}">${back ? "-" + back + "m" : "now"}</text>`;
    }
    return out;
  }

  function renderCharts() {
    const pts = series();
    drawLines($("chart-cpu"), pts, [
      { key: "cpu_total", cls: "cap" },
      { key: "cpu_allocated", cls: "alloc", area: true },
      { key: "cpu_used", cls: "used" },
    ], "");
    drawLines($("chart-memory"), pts, [
      { key: "memory_total_gb", cls: "cap" },
      { key: "memory_allocated_gb", cls: "alloc", area: true },
      { key: "memory_used_gb", cls: "used" },
    ], "");
    drawBars($("chart-tasks"), pts);
  }

  // ---- the task panel -------------------------------------------------------------

  function openFromHash() {
    const m = /^#task\/(.+)$/.exec(location.hash);
    if (m) openTask(decodeURIComponent(m[1]));
    else hideTask();
  }

  async function openTask(id) {
    if (panel.id !== id) {
      closeLogs();
      panel.id = id;
      panel.task = null;
      $("task-output").textContent = "";
      $("task-error").textContent = "";
      $("task-id").textContent = id;
      $("task-state").textContent = "…";
      $("task-state").dataset.state = "";
    }
    $("task-panel").hidden = false;
    document.body.classList.add("with-panel");
    renderTasks();
    try {
      const since = eventSeq;
      const t = await api("GET", "/api/v1/tasks/" + encodeURIComponent(id));
      if (panel.id !== id) return;
      showTask(newer("task", id, since) ? recentTasks.get(id) || t : t);
      followLogs(id);
    } catch (e) {
      if (panel.id === id) $("task-error").textContent = e.message;
    }
  }

  function hideTask() {
    closeLogs();
    panel.id = "";
    panel.task = null;
    $("task-panel").hidden = true;
    document.body.classList.remove("with-panel");
    renderTasks();
  }

  function showTask(t) {
    fillNames(t);
    panel.task = t;
    $("task-id").textContent = t.id;
    const st = $("task-state");
    st.innerHTML = dot("task", t.state);
    st.dataset.state = t.state;
    $("task-name").textContent = t.name || "–";
    $("task-command").textContent = t.image ? t.image + (t.command ? "  sh -c " + t.command : "") : t.command;
    $("task-request").textContent = request(t);
    $("task-worker").textContent = t.worker_name ? `${t.worker_name} (${t.worker_id})` : "–";
    $("task-attempts").textContent = t.attempts;
    $("task-exit").textContent = TERMINAL.has(t.state) && t.state !== "cancelled" ? String(t.exit_code ?? "–") : "–";
    $("task-reason").textContent = t.reason || "–";
    const by = t.submitted_by ? ` by ${t.submitted_by}` : "";
    $("task-times").textContent = `submitted ${clock(t.submitted_ms)}${by} · started ${clock(t.started_ms)} · finished ${clock(t.finished_ms)}`;
    const cancel = $("cancel-button");
    cancel.disabled = TERMINAL.has(t.state);
    cancel.hidden = TERMINAL.has(t.state);
    $("task-history").innerHTML = (t.history || []).map((a) =>
      `<tr data-attempt="${a.attempt}"><td>${a.attempt}</td><td>${esc(a.worker_name || a.worker_id)}</td><td>${esc(a.outcome || "–")}</td>` +
      `<td>${a.finished_ms && a.exit_code != null ? esc(a.exit_code) : "–"}</td><td>${esc(a.reason || "")}</td><td>${clock(a.assigned_ms)}</td><td>${clock(a.finished_ms)}</td></tr>`).join("")
      || `<tr class="empty"><td colspan="7">Not placed yet.</td></tr>`;
  }

  function closeLogs() {
    if (panel.logs) { panel.logs.close(); panel.logs = null; }
    $("task-output-state").textContent = "";
    $("task-output-state").dataset.follow = "";
  }

  function followLogs(id) {
    if (panel.logs) return;
    panel.lastOffset = -1;
    panel.shown = 0;
    const out = $("task-output");
    out.textContent = "";
    const state = $("task-output-state");
    state.textContent = "following…";
    state.dataset.follow = "following";
    const es = new EventSource(`/api/v1/tasks/${encodeURIComponent(id)}/logs?follow=true&token=${encodeURIComponent(token)}`);
    panel.logs = es;
    es.addEventListener("output", (ev) => {
      const off = Number(ev.lastEventId);
      // A reconnect resends from the last id it saw: skip what is already shown.
      if (ev.lastEventId !== "" && off <= panel.lastOffset) return;
      if (ev.lastEventId !== "") panel.lastOffset = off;
      const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      out.append(ev.data);
      // The page keeps the last MiB or so (as the master does): a task that writes
      // gigabytes must not take the browser with it.
      panel.shown = (panel.shown || 0) + ev.data.length;
      if (panel.shown > 2 * OUTPUT_KEEP) {
        const text = out.textContent;
        out.textContent = "[… earlier output trimmed]\n" + text.slice(-OUTPUT_KEEP);
        panel.shown = OUTPUT_KEEP;
      }
      if (stick) out.scrollTop = out.scrollHeight;
    });
    const ended = (word, why) => {
      es.close();
      if (panel.logs === es) panel.logs = null;
      state.textContent = why ? word + ": " + why : word;
      state.dataset.follow = word;
    };
    es.addEventListener("end", () => ended("ended"));
    es.onerror = (ev) => {
      if (panel.logs !== es) return;
      // The master's own `error` event says why it stopped (e.g. no such task).
      if (ev.data) return ended("closed", ev.data);
      // The stream closed: once the task has ended, that is the end of its output
      // (whether or not an `end` event came); otherwise EventSource reconnects by itself.
      if (panel.task && panel.task.id === id && TERMINAL.has(panel.task.state)) return ended("ended");
      if (es.readyState === EventSource.CLOSED) ended("closed");
    };
  }

  // ---- actions --------------------------------------------------------------------

  async function submit(ev) {
    ev.preventDefault();
    const body = {
      name: $("submit-name").value.trim(),
      image: $("submit-image").value.trim(),
      command: $("submit-command").value,
      cpu: Number($("submit-cpu").value || 0),
      memory_gb: Number($("submit-memory").value || 0),
      gpu: Math.round(Number($("submit-gpu").value || 0)),
    };
    const result = $("submit-result");
    if (!body.command.trim() && !body.image) {
      result.className = "error";
      result.textContent = "Give a command or an image.";
      return;
    }
    const btn = $("submit-button");
    btn.disabled = true;
    try {
      const since = eventSeq;
      const t = await api("POST", "/api/v1/tasks", body);
      result.className = "ok";
      result.innerHTML = `Submitted <a href="#task/${esc(t.id)}" data-submitted="${esc(t.id)}">${esc(t.id)}</a> (${esc(t.state)}).`;
      if (!newer("task", t.id, since)) onTask(t);
      location.hash = "task/" + t.id;
    } catch (e) {
      result.className = "error";
      result.textContent = e.message;
    } finally {
      btn.disabled = false;
    }
  }

  async function drain(name, undrain) {
    try {
      const since = eventSeq;
      const w = await api(undrain ? "DELETE" : "POST", `/api/v1/workers/${encodeURIComponent(name)}/drain`);
      if (!newer("worker", w.id, since)) putWorker(w);
      schedule();
    } catch (e) {
      toast(`${undrain ? "Undrain" : "Drain"} ${name}: ${e.message}`);
    }
  }

  async function forget(name) {
    if (!confirm(`Forget worker ${name}? It will register anew if it comes back.`)) return;
    try {
      await api("DELETE", `/api/v1/workers/${encodeURIComponent(name)}`);
      for (const [id, w] of workers) if (w.name === name) workers.delete(id);
      schedule();
    } catch (e) {
      toast(`Forget ${name}: ${e.message}`);
    }
  }

  async function cancelTask() {
    const id = panel.id;
    if (!id) return;
    const btn = $("cancel-button");
    btn.disabled = true;
    try {
      const since = eventSeq;
      const t = await api("POST", "/api/v1/tasks/" + encodeURIComponent(id) + "/cancel");
      if (!newer("task", id, since)) onTask(t);
    } catch (e) {
      $("task-error").textContent = e.message;
      btn.disabled = false;
    }
  }

  // ---- wiring ---------------------------------------------------------------------

  function wire() {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      token = $("login-token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("login-token").value = "";
      start();
    });
    $("logout-button").addEventListener("click", () => showLogin(""));
    $("worker-filter").addEventListener("input", (ev) => { view.filter = ev.target.value.trim(); view.page = 0; schedule(); });
    $("worker-state-filter").addEventListener("change", (ev) => { view.state = ev.target.value; view.page = 0; schedule(); });
    $("workers-prev").addEventListener("click", () => { view.page = Math.max(0, view.page - 1); schedule(); });
    $("workers-next").addEventListener("click", () => { view.page++; schedule(); });
    const sortBy = (ev) => {
      const th = ev.target.closest("th[data-sort]");
      if (!th) return;
      if (ev.type === "keydown") {
        if (ev.key !== "Enter" && ev.key !== " ") return;
        ev.preventDefault();
      }
      if (view.sort === th.dataset.sort) view.desc = !view.desc;
      else { view.sort = th.dataset.sort; view.desc = false; }
      schedule();
    };
    const head = document.querySelector("#workers-table thead");
    head.addEventListener("click", sortBy);
    head.addEventListener("keydown", sortBy);
    $("workers-body").addEventListener("click", (ev) => {
      const d = ev.target.closest("button[data-drain]");
      if (d) { d.disabled = true; drain(d.dataset.drain, d.dataset.action === "undrain"); return; }
      const f = ev.target.closest("button[data-forget]");
      if (f) forget(f.dataset.forget);
    });
    $("task-state-filter").addEventListener("change", (ev) => {
      Object.assign(tasksView, { state: ev.target.value, tokens: [""], page: 0 });
      loadTasks().catch((e) => toast(e.message));
    });
    $("tasks-next").addEventListener("click", () => {
      const v = tasksView;
      if (!v.next || v.next === "more") return;
      v.tokens[v.page + 1] = v.next;
      v.page++;
      loadTasks().catch((e) => toast(e.message));
    });
    $("tasks-prev").addEventListener("click", () => {
      if (tasksView.page === 0) return;
      tasksView.page--;
      loadTasks().catch((e) => toast(e.message));
    });
    $("tasks-body").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-task]");
      if (!tr || ev.target.closest("a")) return;
      location.hash = "task/" + tr.dataset.task;
    });
    $("task-close").addEventListener("click", () => {
      history.replaceState(null, "", location.pathname + location.search);
      hideTask();
    });
    $("cancel-button").addEventListener("click", cancelTask);
    $("submit-form").addEventListener("submit", submit);
    $("scheduler-select").addEventListener("change", async (ev) => {
      try {
        const r = await api("PUT", "/api/v1/scheduler", { scheduler: ev.target.value });
        ev.target.value = r.scheduler;
        refreshStatusSoon();
      } catch (e) {
        toast("Scheduler: " + e.message);
        loadStatus().catch(() => {});
      }
    });
    window.addEventListener("hashchange", () => {
      if (/(?:^#|&)token=/.test(location.hash)) { readToken(); start(); return; }
      if (loaded) openFromHash();
    });
    // The local clock: "last seen" texts age, and the chart closes an interval. No requests.
    setInterval(() => {
      if (!loaded) return;
      for (const td of document.querySelectorAll("#workers-body td[data-seen]")) {
        const w = workers.get(td.dataset.seen);
        if (w) td.textContent = lastSeen(w);
      }
    }, 1000);
    setInterval(() => { if (loaded) closeInterval(); }, chart.interval);
  }

  wire();
  readToken();
  if (token) start();
  else {
    // No token: a master run with --insecure needs none; any other asks for one.
    fetch("/api/v1/status").then((r) => (r.ok ? start() : showLogin(""))).catch(() => showLogin(""));
  }
})();
