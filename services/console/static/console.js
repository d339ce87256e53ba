// The run page's live parts: one EventSource on the run's stream (the server blocks in XREAD; the
// browser never polls). Events build the task table and the timeline with textContent only; panels
// marked data-live are re-rendered by the server when an event says they changed.
"use strict";

(function () {
  const run = document.getElementById("run");
  if (!run) return;
  const tasks = new Map(); // task_id#attempt -> {row, cells, assigned, started}
  const seen = new Set();
  const tbody = document.querySelector("#tasks tbody");
  const timeline = document.getElementById("timeline");
  const counter = document.getElementById("event-count");
  const liveState = document.getElementById("live-state");
  const MAX_LINES = 400; // the timeline keeps the newest lines; the task table keeps every task
  let count = 0;

  function secs(a, b) {
    if (!a || !b) return "";
    const s = (Date.parse(b) - Date.parse(a)) / 1000;
    return s < 0 ? "" : s < 10 ? s.toFixed(2) + " s" : s.toFixed(1) + " s";
  }

  function task(ev) {
    const key = ev.task_id + "#" + (ev.attempt || 1);
    let t = tasks.get(key);
    if (!t) {
      const row = document.createElement("tr");
      const cells = {};
      for (const name of ["task", "agent", "worker", "attempt", "queued", "took", "state", "tokens", "cost", "progress"]) {
        cells[name] = document.createElement("td");
        cells[name].className = "c-" + name;
        row.appendChild(cells[name]);
      }
      const parts = ev.task_id.split(".");
      cells.task.textContent = parts.slice(1).join(".") || ev.task_id;
      cells.task.title = ev.task_id;
      cells.attempt.textContent = ev.attempt || 1;
      tbody.appendChild(row);
      t = { row, cells };
      tasks.set(key, t);
    }
    return t;
  }

  function setState(t, state) {
    t.cells.state.textContent = state;
    t.row.className = "t-" + state;
  }

  function onTask(ev) {
    if (!ev.task_id) return;
    const t = task(ev);
    switch (ev.type) {
      case "task.assigned":
        t.assigned = ev.created_at;
        if (ev.agent) t.cells.agent.textContent = ev.agent;
        else if (ev.intent) t.cells.agent.textContent = "(router: " + ev.intent + ")";
        setState(t, "queued");
        break;
      case "route.decided":
        t.cells.agent.textContent = ev.agent;
        break;
      case "task.started":
        t.started = ev.created_at;
        t.cells.agent.textContent = ev.agent;
        t.cells.worker.textContent = ev.sender;
        t.cells.queued.textContent = secs(t.assigned, ev.created_at);
        setState(t, "running");
        break;
      case "task.progress":
        t.cells.progress.textContent = (ev.percent != null ? Math.round(ev.percent) + "% " : "") + (ev.message || "");
        break;
      case "task.completed": {
        t.cells.took.textContent = secs(t.started, ev.created_at);
        const u = ev.usage || {};
        const tokens = (u.prompt_tokens || 0) + (u.completion_tokens || 0);
        t.cells.tokens.textContent = tokens ? tokens : "";
        t.cells.cost.textContent = u.cost != null ? "$" + u.cost.toFixed(4) : "";
        setState(t, "done");
        break;
      }
      case "task.failed":
        t.cells.took.textContent = secs(t.started, ev.created_at);
        t.cells.progress.textContent = ev.error || "";
        setState(t, ev.retryable ? "retrying" : "failed");
        break;
      case "task.input_required":
        t.cells.progress.textContent = "asks a person: " + (ev.question || "");
        break;
      case "review.verdict":
        t.cells.progress.textContent = (ev.accepted ? "accepted" : "rejected: ") + (ev.feedback || "");
        break;
    }
  }

  function summary(ev) {
    switch (ev.type) {
      case "run.started": return ev.workflow + " (" + ev.pattern + ")";
      case "task.assigned": return (ev.agent || "router: " + (ev.intent || "?")) + " · " + (ev.instruction || "").slice(0, 120);
      case "route.decided": return ev.agent + " · " + (ev.label || "") + " · " + Math.round(ev.confidence * 100) + "% by " + ev.classifier + (ev.reason ? " · " + ev.reason : "");
      case "task.started": return ev.agent + " on " + ev.sender;
      case "task.progress": return ev.agent + ": " + (ev.message || "");
      case "task.completed": return ev.agent + " wrote " + Object.keys(ev.outputs || {}).join(", ");
      case "task.failed": return (ev.agent || "") + ": " + ev.error;
      case "task.input_required": return (ev.agent || "") + " asks: " + ev.question;
      case "review.verdict": return ev.subtask + " " + (ev.accepted ? "accepted" : "rejected") + (ev.feedback ? ": " + ev.feedback : "");
      case "human.requested": return ev.question;
      case "human.received": return (ev.approved ? "approved" : "rejected") + (ev.text ? ": " + ev.text : "");
      case "run.completed": return "outputs: " + Object.keys(ev.outputs || {}).join(", ") + (ev.ended_by ? " (" + ev.ended_by + ")" : "");
      case "run.failed": case "run.cancelled": return ev.reason;
      default: return ev.key || "";
    }
  }

  function line(ev) {
    const li = document.createElement("li");
    li.className = "e-" + ev.type.replace(".", "-");
    const time = document.createElement("time");
    time.textContent = (ev.created_at || "").slice(11, 23);
    const type = document.createElement("strong");
    type.textContent = ev.type;
    const what = document.createElement("span");
    what.textContent = summary(ev);
    li.append(time, " ", type, " ", what);
    if (ev.attempt > 1) li.append(" (attempt " + ev.attempt + ")");
    timeline.appendChild(li);
    while (timeline.childElementCount > MAX_LINES) timeline.firstElementChild.remove();
  }

  let refreshTimer = null;
  function refreshPanels() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(async () => {
      for (const el of document.querySelectorAll("[data-live]")) {
        if (el.contains(document.activeElement) && document.activeElement.tagName === "TEXTAREA") continue;
        const resp = await fetch(el.dataset.live, { headers: { Accept: "text/html" }, credentials: "same-origin" });
        if (resp.ok) el.innerHTML = await resp.text(); // the server's own escaped fragment
      }
    }, 250);
  }

  const source = new EventSource(run.dataset.stream);
  source.onopen = () => { liveState.textContent = "live"; };
  source.onerror = () => { liveState.textContent = "reconnecting…"; };
  source.onmessage = (msg) => {
    const ev = JSON.parse(msg.data);
    if (ev.event_id && seen.has(ev.event_id)) return;
    if (ev.event_id) seen.add(ev.event_id);
    count += 1;
    counter.textContent = count + " events";
    onTask(ev);
    line(ev);
    refreshPanels();
  };
  source.addEventListener("end", () => {
    source.close();
    liveState.textContent = "ended";
    run.dataset.ended = "1";
    refreshPanels();
  });
  refreshPanels();
})();
