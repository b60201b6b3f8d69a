// The dashboard's only script. It asks for an API key once, keeps it in sessionStorage
// (this tab only), and loads every piece of stored data with the key in a header:
// server-rendered fragments under /dashboard/fragments/ and the JSON API itself.
// Text from the API is only ever set with textContent; fragments are escaped by the server.
"use strict";

(() => {
  const KEY_SLOT = "pfp.apiKey";
  const POLL_MS = 1000;
  const $ = (id) => document.getElementById(id);
  const state = {
    bucket: "hour", queue: "uncertainty", selectedJob: null, admin: null, timer: null, polling: false,
  };

  const key = () => sessionStorage.getItem(KEY_SLOT);

  class HttpError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function call(path, options = {}) {
    const headers = { "X-API-Key": key() || "", ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (_) { /* not JSON: keep the status text */ }
      throw new HttpError(response.status, detail);
    }
    return response;
  }

  function showNotice(target, message) {
    const p = document.createElement("p");
    p.className = "empty-note";
    p.textContent = message;
    target.replaceChildren(p);
  }

  // A 401 anywhere means the key is gone or wrong: back to the prompt.
  function handleError(err, target) {
    if (err instanceof HttpError && err.status === 401) {
      disconnect("The key was refused: " + err.message);
      return;
    }
    if (target) showNotice(target, err instanceof HttpError && err.status === 403
      ? "This needs an admin key: " + err.message
      : "Could not load: " + err.message);
  }

  function applyBars(root) {
    // Widths go through the CSSOM: the page's CSP refuses inline style attributes.
    root.querySelectorAll(".bar-fill[data-progress]").forEach((el) => {
      el.style.width = Math.round(100 * Math.max(0, Math.min(1, Number(el.dataset.progress)))) + "%";
    });
  }

  async function loadFragment(name, query = "") {
    const target = $(name);
    try {
      const response = await call(`/dashboard/fragments/${name}${query}`);
      target.innerHTML = await response.text();
      applyBars(target);
      return true;
    } catch (err) {
      handleError(err, target);
      return false;
    }
  }

  async function loadActive() {
    const ok = await loadFragment("active");
    const node = document.querySelector("[data-served-version]");
    if (ok && node) {
      const served = node.dataset.servedVersion;
      $("served-pill").textContent = served ? `serving v${served}` : "no model loaded";
    }
    return ok;
  }

  const loadVersions = () => loadFragment("versions");
  const loadStats = () => loadFragment("stats", `?bucket=${state.bucket}`);
  const loadReview = () => loadFragment("review", `?queue=${state.queue}`);

  async function loadJobs() {
    const query = state.selectedJob ? `?selected=${encodeURIComponent(state.selectedJob)}` : "";
    return loadFragment("jobs", query);
  }

  // A job waiting for reviews is polled too: its row changes when the gate decides.
  const UNFINISHED = ["queued", "running", "pending_review"];

  // Every second: the newest job (has a new one arrived?) and each unfinished job shown, from
  // the JSON API; progress and stage are written into the table in place. The fragment, with
  // its loss curves, is reloaded only when a job appears, changes status or records a curve.
  async function pollJobs() {
    if (state.admin !== true || state.polling) return;
    state.polling = true;
    try {
      const rows = [...document.querySelectorAll("tr[data-job-id]")];
      const [newest] = await (await call("/jobs?limit=1")).json();
      let reload = Boolean(newest) && (rows.length === 0 || rows[0].dataset.jobId !== newest.id);
      let finished = false;
      for (const row of rows.filter((r) => UNFINISHED.includes(r.dataset.status))) {
        const job = await (await call(`/jobs/${encodeURIComponent(row.dataset.jobId)}`)).json();
        if (job.status !== row.dataset.status
            || Object.keys(job.history || {}).join("+") !== row.dataset.curves) {
          reload = true;
          finished = finished || !UNFINISHED.includes(job.status);
          continue;
        }
        const pct = Math.round(100 * job.progress);
        const fill = row.querySelector(".bar-fill");
        fill.dataset.progress = String(job.progress);
        fill.style.width = pct + "%";
        row.querySelector(".bar").setAttribute("aria-valuenow", String(pct));
        row.querySelector('[data-field="percent"]').textContent = pct + "%";
        row.querySelector('[data-field="stage"]').textContent = job.stage;
      }
      if (reload) await loadJobs();
      if (finished) {  // a published candidate changes the active model and the versions
        loadActive();
        loadVersions();
      }
    } catch (err) {
      if (err instanceof HttpError && err.status === 404) loadJobs();  // a job row vanished
      else handleError(err, null);
    } finally {
      state.polling = false;
    }
  }

  async function loadAll() {
    const ok = await loadActive();
    if (!ok) return;
    loadVersions();
    // The admin-only panels tell which key this is.
    const jobsOk = await loadJobs();
    state.admin = jobsOk;
    $("role-pill").textContent = jobsOk ? "admin key" : "label key · read-only";
    if (jobsOk) {
      loadStats();
      loadReview();
    } else {
      showNotice($("stats"), "Traffic charts need an admin key.");
      showNotice($("review"), "The review queues need an admin key.");
    }
    if (state.timer === null) state.timer = setInterval(pollJobs, POLL_MS);
  }

  function connect() {
    $("connect").hidden = true;
    $("main").hidden = false;
    $("session").hidden = false;
    loadAll();
  }

  function disconnect(message) {
    sessionStorage.removeItem(KEY_SLOT);
    if (state.timer !== null) clearInterval(state.timer);
    Object.assign(state, { timer: null, admin: null, selectedJob: null });
    for (const id of ["active", "jobs", "versions", "stats", "review"]) {
      $(id).textContent = "Loading…";
    }
    $("label-result").hidden = true;
    $("main").hidden = true;
    $("session").hidden = true;
    $("connect").hidden = false;
    $("connect-error").textContent = message || "";
    $("api-key").value = "";
    $("api-key").focus();
  }

  async function labelText(event) {
    event.preventDefault();
    const text = $("label-text").value;
    $("label-error").textContent = "";
    $("label-submit").disabled = true;
    try {
      const response = await call("/label", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text }),
      });
      showResult(await response.json());
      if (state.admin) loadStats();
    } catch (err) {
      if (err instanceof HttpError && err.status === 401) handleError(err, null);
      else $("label-error").textContent = `${err.status || ""} ${err.message}`.trim();
    } finally {
      $("label-submit").disabled = false;
    }
  }

  function showResult(result) {
    $("result-label").textContent = result.label;
    $("result-confidence").textContent = (100 * result.confidence).toFixed(1) + "%";
    $("result-version").textContent = "v" + result.model_version;
    $("result-id").textContent = "#" + result.id;
    const rows = Object.entries(result.scores).sort((a, b) => b[1] - a[1]).map(([label, p]) => {
      const row = document.createElement("div");
      row.className = "score-row";
      const name = document.createElement("span");
      name.className = "score-name";
      name.textContent = label;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.className = "bar-fill" + (label === result.label ? "" : " dim");
      fill.style.width = (100 * p).toFixed(1) + "%";
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "score-value";
      value.textContent = p.toFixed(3);
      row.append(name, bar, value);
      return row;
    });
    $("result-scores").replaceChildren(...rows);
    $("label-result").hidden = false;
  }

  async function activate(version, button) {
    $("activate-error").textContent = "";
    if (!window.confirm(`Serve model v${version}? Every API process swaps to it.`)) return;
    button.disabled = true;
    try {
      await call(`/models/${encodeURIComponent(version)}/activate`, { method: "POST" });
      await Promise.all([loadVersions(), loadActive()]);
    } catch (err) {
      button.disabled = false;
      if (err instanceof HttpError && err.status === 401) handleError(err, null);
      else $("activate-error").textContent = `Could not activate v${version}: ${err.message}`;
    }
  }

  // A review answer: a label or a skip for one item, or filling the uncertainty queue; the
  // fragment then shows the next open item. A refusal (labeled meanwhile by someone else,
  // say) is shown, and the queue reloaded.
  async function answerReview(button) {
    $("review-error").textContent = "";
    const item = button.dataset.itemId || button.dataset.reviewSkip;
    let path;
    let body;
    if (button.dataset.reviewLabel !== undefined) {
      path = `/review/items/${encodeURIComponent(item)}/label`;
      body = { label: button.dataset.reviewLabel, via: "dashboard" };
    } else if (button.dataset.reviewSkip !== undefined) {
      path = `/review/items/${encodeURIComponent(item)}/skip`;
      body = { via: "dashboard" };
    } else {
      path = "/review/queues/uncertainty/fill";
      body = { size: Number(button.dataset.reviewFill) };
    }
    $("review").querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      await call(path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (err) {
      if (err instanceof HttpError && err.status === 401) {
        handleError(err, null);
        return;
      }
      $("review-error").textContent = `${err.status || ""} ${err.message}`.trim();
    }
    await loadReview();
  }

  // The review card on one queue: its button selected, its next item loaded.
  function showQueue(queue) {
    state.queue = queue;
    document.querySelectorAll("[data-queue]").forEach((b) =>
      b.classList.toggle("selected", b.dataset.queue === queue));
    $("review-error").textContent = "";
    if (state.admin) loadReview();
  }

  // Keys answer the item shown, as in `pfp review`: 1-9 a class, s skip. Not while typing.
  function reviewKey(event) {
    if (state.admin !== true || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, textarea, select")) return;
    const button = $("review").querySelector(`button[data-key="${CSS.escape(event.key)}"]`);
    if (button && !button.disabled) {
      event.preventDefault();
      answerReview(button);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("connect-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("api-key").value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY_SLOT, value);
      connect();
    });
    $("forget-key").addEventListener("click", () => disconnect(""));
    $("label-form").addEventListener("submit", labelText);
    $("versions").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-activate]");
      if (button) activate(button.dataset.activate, button);
    });
    $("jobs").addEventListener("click", (event) => {
      if (event.target.closest("a[data-review-job]")) {  // to the review card, its queue
        showQueue("disagreement");
        return;
      }
      const row = event.target.closest("tr[data-job-id]");
      if (!row) return;
      state.selectedJob = row.dataset.jobId;
      loadJobs();
    });
    $("review").addEventListener("click", (event) => {
      const button = event.target.closest(
        "button[data-review-label], button[data-review-skip], button[data-review-fill]");
      if (button && !button.disabled) answerReview(button);
    });
    document.addEventListener("keydown", reviewKey);
    document.querySelectorAll("[data-queue]").forEach((button) => {
      button.addEventListener("click", () => showQueue(button.dataset.queue));
    });
    document.querySelectorAll("[data-bucket]").forEach((button) => {
      button.addEventListener("click", () => {
        state.bucket = button.dataset.bucket;
        document.querySelectorAll("[data-bucket]").forEach((b) =>
          b.classList.toggle("selected", b === button));
        if (state.admin) loadStats();
      });
    });
    if (key()) connect();
    else $("api-key").focus();
  });
})();
