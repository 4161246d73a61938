// Verge console: live updates from the watch stream, API calls for the
// console's forms (with the CSRF token), confirmations, log tails and copy
// buttons. No dependencies; loaded with `defer`, no inline script.
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

  // ---- Live updates -------------------------------------------------------
  // The page names the change kinds that concern it; on any of them, the
  // page is read again and each element marked data-live is replaced by its
  // new version (unless someone is typing in it).

  const status = document.getElementById("live-status");
  const setStatus = (text) => { if (status) status.textContent = text; };
  let pending = null;

  async function refresh() {
    const live = document.querySelectorAll("[data-live][id]");
    if (live.length === 0) return;
    let response;
    try {
      response = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
    } catch (_) {
      return; // The controller is away; the stream's reconnect tries again.
    }
    if (response.redirected && new URL(response.url).pathname === "/login") {
      location.href = response.url;
      return;
    }
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const typing = document.activeElement?.closest("input, select, textarea");
    for (const element of live) {
      if (typing && element.contains(typing)) continue;
      const next = fresh.getElementById(element.id);
      if (next && next.innerHTML !== element.innerHTML) element.innerHTML = next.innerHTML;
    }
    document.body.dataset.refreshed = String(Date.now());
  }

  function schedule() {
    if (pending === null) pending = setTimeout(() => { pending = null; refresh(); }, 150);
  }

  // Follows the stream from `since` (the last change seen): a new stream
  // after a drop or a restart replays what the old one missed, or says
  // `relist` when it cannot, so no change is lost between the two.
  function watch(kinds, since) {
    let broken = false;
    let last = since;
    const query = "?kind=" + encodeURIComponent(kinds) + (since ? "&since=" + since : "");
    const stream = new EventSource("/api/v1/watch" + query);
    const seen = (event) => { if (event.lastEventId) last = event.lastEventId; };
    for (const kind of kinds.split(",")) {
      stream.addEventListener(kind, (event) => { seen(event); schedule(); });
    }
    stream.addEventListener("relist", (event) => { seen(event); schedule(); });
    stream.addEventListener("sync", (event) => { seen(event); setStatus("live"); });
    // A burst larger than the controller's queue per watcher ends the
    // stream (`dropped`): resume at once instead of waiting for the
    // browser's retry.
    stream.addEventListener("dropped", () => {
      stream.close();
      setTimeout(() => watch(kinds, last), 50 + Math.random() * 200);
    });
    stream.onopen = () => {
      setStatus("live");
      if (broken) { broken = false; schedule(); }
    };
    stream.onerror = () => {
      broken = true;
      setStatus("reconnecting…");
      // The browser retries a dropped connection by itself (with
      // Last-Event-ID), but gives up on an HTTP error (a restarting
      // controller, a full watch list): start over from the last change.
      if (stream.readyState === EventSource.CLOSED) {
        setTimeout(() => { refresh(); watch(kinds, last); }, 2000 + Math.random() * 2000);
      }
    };
  }

  const kinds = document.body.dataset.watch;
  if (kinds) watch(kinds);

  // ---- Confirmations ------------------------------------------------------

  function confirmed(text) {
    const dialog = document.getElementById("confirm");
    if (!dialog || typeof dialog.showModal !== "function") return Promise.resolve(window.confirm(text));
    document.getElementById("confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-ok")?.focus();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    });
  }

  // ---- Forms that call the API ---------------------------------------------
  // <form data-api="/api/v1/…" data-method="PUT" data-done="reload|token|goto:/x/{name}">
  // Fields become a JSON object: dotted names nest, data-type converts
  // (number, list = comma separated, bool = checkbox, map = KEY=VALUE lines),
  // empty fields are left out.

  function setPath(target, path, value) {
    const keys = path.split(".");
    let node = target;
    for (const key of keys.slice(0, -1)) node = node[key] ??= {};
    node[keys[keys.length - 1]] = value;
  }

  function valueOf(field) {
    const type = field.dataset.type;
    if (type === "bool") return field.checked;
    const text = field.value.trim();
    if (text === "") return undefined;
    switch (type) {
      case "number": return Number(text);
      case "list": return text.split(",").map((s) => s.trim()).filter((s) => s !== "");
      case "map": {
        const map = {};
        for (const line of text.split("\n")) {
          const at = line.indexOf("=");
          if (line.trim() === "") continue;
          if (at < 1) { map[line.trim()] = ""; continue; }
          map[line.slice(0, at).trim()] = line.slice(at + 1).trim();
        }
        return map;
      }
      case "json": try { return JSON.parse(text); } catch (_) { return text; }
      default: return text;
    }
  }

  function body(form) {
    const object = {};
    for (const field of form.querySelectorAll("input[name], select[name], textarea[name]")) {
      if (field.name === "csrf" || field.disabled || field.dataset.in === "url") continue;
      const value = valueOf(field);
      if (value !== undefined) setPath(object, field.name, value);
    }
    return object;
  }

  function clearErrors(form) {
    for (const slot of form.querySelectorAll(".form-error")) slot.textContent = "";
    for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  }

  // The API names the field it refuses (`placement.latency.max_ms`,
  // `regions[1]`); the message goes next to that field, else atop the form.
  function showError(form, error) {
    const field = error.field ?? "";
    const base = field.replace(/\[\d+\]$/, "");
    let slot = null;
    for (const name of [field, base]) {
      slot = name && form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (slot) {
        form.querySelector(`[name="${CSS.escape(name)}"]`)?.setAttribute("aria-invalid", "true");
        break;
      }
    }
    slot ??= form.querySelector(".form-error:not([data-error-for])");
    const text = field && !slot?.dataset.errorFor ? `${field}: ${error.message}` : error.message;
    if (slot) slot.textContent = text; else window.alert(text);
  }

  // `{name}` in data-api is the value of the form's field of that name.
  function target(form) {
    return form.dataset.api.replace(/\{(\w+)\}/g, (_, name) =>
      encodeURIComponent(form.querySelector(`[name="${name}"]`)?.value.trim() ?? ""));
  }

  async function send(form) {
    const method = form.dataset.method || "POST";
    const headers = { "X-CSRF-Token": csrf, Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin" };
    if (method !== "DELETE" && method !== "GET") {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body(form));
    }
    let response;
    try {
      response = await fetch(target(form), init);
    } catch (_) {
      return { error: { message: "The controller cannot be reached; try again when it is back." } };
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : {}; } catch (_) { json = null; }
    if (response.ok) return { ok: json ?? {} };
    if (json && json.error) return { error: json.error };
    return { error: { message: `The controller answered ${response.status} ${response.statusText}.` } };
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    event.preventDefault();
    clearErrors(form);
    for (const field of form.querySelectorAll('[data-in="url"]')) {
      if (field.value.trim() === "") { showError(form, { field: field.name, message: "required" }); return; }
    }
    if (form.dataset.confirm && !(await confirmed(form.dataset.confirm))) return;
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    const result = await send(form);
    buttons.forEach((b) => { b.disabled = false; });
    if (result.error) { showError(form, result.error); return; }
    const done = form.dataset.done || "reload";
    if (done.startsWith("goto:")) {
      location.href = done.slice(5).replace("{name}", encodeURIComponent(result.ok.name ?? ""));
    } else if (done === "token") {
      const output = document.getElementById(form.dataset.output);
      if (output) {
        output.querySelector("code").textContent = result.ok.token ?? "";
        output.hidden = false;
        output.querySelector("button")?.focus();
      }
      form.reset();
      refresh();
    } else {
      const note = form.querySelector(".form-ok");
      if (note) note.textContent = form.dataset.okText || "Done.";
      refresh();
    }
  });

  // ---- Log tails and copy buttons ---------------------------------------------

  document.addEventListener("click", async (event) => {
    const button = event.target instanceof Element ? event.target.closest("button") : null;
    if (!button) return;
    if (button.dataset.log) {
      const output = document.querySelector(button.dataset.target);
      if (!output) return;
      output.textContent = "Asking the node…";
      try {
        const response = await fetch(button.dataset.log, { credentials: "same-origin", headers: { Accept: "application/json" } });
        const json = await response.json();
        if (!response.ok) { output.textContent = json.error?.message ?? `Error ${response.status}`; return; }
        const head = json.truncated ? "(older lines not shown)\n" : "";
        output.textContent = json.lines.length ? head + json.lines.join("\n") : "(the log is empty)";
      } catch (_) {
        output.textContent = "The log could not be read; the controller may be restarting.";
      }
    } else if (button.dataset.copy) {
      const source = document.querySelector(button.dataset.copy);
      const text = source?.textContent ?? "";
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(source);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    }
  });
})();
