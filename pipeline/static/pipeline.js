// pipeline's status pages, enhanced: every page reads and navigates without this script;
// with it, controls post to the JSON API, active pages update in place, and logs follow.
"use strict";
(() => {
  const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

  // -- controls: POSTs to the JSON API (same origin: the session cookie, or no token) --------
  async function post(url, body) {
    const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                body: JSON.stringify(body || {})});
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((answer.error && answer.error.message) || r.statusText);
    return answer;
  }

  function tell(el, text, bad) {
    if (!el) { if (bad) alert(text); return; }
    el.textContent = text;
    el.classList.toggle("bad", !!bad);
  }

  document.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-post]");
    if (!b) return;
    e.preventDefault();
    if (b.dataset.confirm && !confirm(b.dataset.confirm)) return;
    b.disabled = true;
    try {
      const answer = await post(b.dataset.post, b.dataset.body ? JSON.parse(b.dataset.body) : {});
      if (answer.run_id && b.dataset.go) { location.href = "/runs/" + answer.run_id; return; }
      await refresh();
    } catch (err) {
      tell(document.getElementById(b.dataset.result || ""), err.message, true);
    } finally {
      b.disabled = false;
    }
  });

  // A form[data-api] becomes a JSON body: "params" forms as {"params": {...}}, others as
  // {name: value}; each input is typed by its data-type; empty optional inputs are left out.
  function valueOf(input) {
    const type = input.dataset.type || input.type;
    if (input.type === "checkbox") return input.checked;
    const text = input.value.trim();
    if (text === "") return undefined;
    if (input.tagName === "SELECT") return JSON.parse(text);
    if (type === "integer") {
      const n = Number(text);
      if (!Number.isInteger(n)) throw new Error(`${input.name}: a whole number, please`);
      return n;
    }
    if (type === "number") {
      const n = Number(text);
      if (!Number.isFinite(n)) throw new Error(`${input.name}: a number, please`);
      return n;
    }
    if (type === "datetime-local") {
      // The browser's zone: what the person typed, as an instant with its offset.
      const at = new Date(text);
      if (isNaN(at)) throw new Error(`${input.name}: a date and time, please`);
      return at.toISOString();
    }
    return text;
  }

  document.addEventListener("submit", async (e) => {
    const form = e.target.closest("form[data-api]");
    if (!form) return;
    e.preventDefault();
    const result = form.querySelector(".result");
    if (!form.checkValidity()) { form.reportValidity(); return; }
    const values = {};
    try {
      for (const input of $$("[name]", form)) {
        if (input.type === "submit") continue;
        const value = valueOf(input);
        if (value !== undefined) values[input.name] = value;
      }
    } catch (err) { tell(result, err.message, true); return; }
    const body = form.dataset.api === "params" ? {params: values} : values;
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    tell(result, "sending…");
    try {
      const answer = await post(form.action, body);
      if (answer.run_id && form.dataset.go) { location.href = "/runs/" + answer.run_id; return; }
      tell(result, answer.run_ids ? `${answer.run_ids.length} runs queued` : "done");
      await refresh();
    } catch (err) {
      tell(result, err.message, true);
    } finally {
      if (button) button.disabled = false;
    }
  });

  // -- live pages: the sections marked data-live are fetched again and swapped in place ------
  const main = () => document.querySelector("main");

  async function refresh() {
    const url = new URL(location.href);
    url.searchParams.set("live", "1");
    const r = await fetch(url, {headers: {"Accept": "text/html"}});
    if (!r.ok) return;
    const next = new DOMParser().parseFromString(await r.text(), "text/html");
    for (const fresh of $$("[data-live]", next)) {
      const old = document.getElementById(fresh.id);
      if (!old) continue;
      if (fresh.dataset.live === "merge") merge(old, fresh); else old.replaceWith(fresh);
    }
    const nextMain = next.querySelector("main");
    if (nextMain) main().dataset.refresh = nextMain.dataset.refresh;
    document.title = next.title;
    filter();
  }

  // Children kept by id (a followed log keeps what it read), new ones added, states updated.
  function merge(old, fresh) {
    for (const child of [...fresh.children]) {
      const kept = child.id && document.getElementById(child.id);
      if (kept && old.contains(kept)) {
        // A step that ended since: its last lines are still to be read, once.
        const ended = kept.dataset.state === "running" && child.dataset.state === "done";
        kept.dataset.state = ended ? "finishing" : (child.dataset.state || kept.dataset.state);
        const summary = kept.querySelector("summary"), freshSummary = child.querySelector("summary");
        if (summary && freshSummary) summary.innerHTML = freshSummary.innerHTML;
        old.appendChild(kept);
      } else {
        old.appendChild(child);
      }
    }
  }

  (function tick() {
    const every = +(main() && main().dataset.refresh);
    if (every) {
      setTimeout(async () => {
        if (!document.hidden) await refresh().catch(() => {});
        tick();
      }, every * 1000);
    }
  })();

  // -- logs: follow, filter ------------------------------------------------------------------
  const filterBox = document.getElementById("log-filter");
  const followBox = document.getElementById("log-follow");
  for (const el of $$("[data-needs-script]")) el.hidden = false;

  function filter() {
    if (!filterBox) return;
    const needle = filterBox.value.trim().toLowerCase();
    let shown = 0, total = 0;
    for (const line of $$("#logs .ln")) {
      total++;
      const hide = needle !== "" && !line.textContent.toLowerCase().includes(needle);
      line.hidden = hide;
      if (!hide) shown++;
    }
    const count = document.getElementById("log-count");
    if (count) count.textContent = needle ? `${shown} of ${total} lines` : "";
  }
  if (filterBox) {
    filterBox.addEventListener("input", filter);
    filterBox.form.addEventListener("submit", (e) => { e.preventDefault(); filter(); });
  }

  async function pull(log) {
    const src = log.dataset.src;
    if (!src) return;
    const r = await fetch(`${src}?offset=${log.dataset.next || 0}`);
    if (!r.ok) return;
    const html = await r.text();
    const pre = log.querySelector("pre");
    if (html && pre) {
      const empty = pre.querySelector(".none");
      if (empty) empty.remove();
      pre.insertAdjacentHTML("beforeend", html);
      if (followBox && followBox.checked) pre.scrollTop = pre.scrollHeight;
    }
    log.dataset.next = r.headers.get("X-Log-Next") || log.dataset.next;
    if (r.headers.get("X-Log-Done") === "1") log.dataset.state = "done";
  }

  let pulling = false;
  setInterval(async () => {
    if (pulling || document.hidden) return;
    pulling = true;
    try {
      for (const log of $$("#logs details.log[data-state=running], "
                           + "#logs details.log[data-state=finishing]")) await pull(log);
      filter();
      if (followBox && followBox.checked) {
        const running = document.querySelector("#logs details.log[data-state=running]");
        if (running) { running.open = true; }
      }
    } catch (err) { /* the next tick tries again */ }
    pulling = false;
  }, 1000);

  // -- a job's strip of runs: a first tap shows the run, a second opens it ------------------
  let touched = false;
  document.addEventListener("pointerdown", (e) => { touched = e.pointerType === "touch"; });
  document.addEventListener("click", (e) => {
    const square = e.target.closest("a.sq");
    if (!square || !touched || square.classList.contains("armed")) return;
    e.preventDefault();
    for (const other of $$("a.sq.armed")) other.classList.remove("armed");
    square.classList.add("armed");
  });
})();
