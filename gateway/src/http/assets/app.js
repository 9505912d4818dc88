// fieldgate status page: polls /api/v1/status and /api/v1/devices and keeps
// the tables up to date in place. Every string from the gateway or a device
// goes into the page as text (textContent / text nodes), never as markup.
"use strict";
(function () {
  const POLL_MS = 1000;
  const $ = (id) => document.getElementById(id);
  let commands = { enabled: false, tokenRequired: false };
  const rows = new Map(); // device name -> {tr, cells, setRow}

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }
  function setText(e, text) {
    if (e.textContent !== text) e.textContent = text;
  }
  function replaceChildren(e, children) {
    e.replaceChildren(...children.filter((c) => c));
  }
  function duration(s) {
    if (s === null || s === undefined) return "never";
    if (s < 1) return "< 1 s";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  function bytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }
  function show(v) {
    if (v === null || v === undefined) return "–";
    // Six significant digits on screen; the API has the exact value.
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
    return String(v);
  }

  function renderStatus(s) {
    commands = s.commands || commands;
    setText($("namespace"), s.namespace ? "· " + s.namespace : "");
    document.title = "fieldgate " + (s.namespace || "") + " – status";
    const h = $("health");
    setText(h, s.status);
    h.className = "badge " + (s.status === "ok" ? "ok" : "degraded");
    setText($("version"), s.version + (s.drivers ? " (" + s.drivers.join(", ") + ")" : ""));
    setText($("uptime"), duration(s.uptimeSeconds));
    const c = s.config || {};
    setText($("config"), (c.hash ? c.hash.slice(0, 12) : "?") + " · loaded " + (c.loadedAt || "?"));
    const r = c.lastReload;
    const reload = $("reload");
    if (!r) {
      setText(reload, "none since start");
      reload.className = "";
    } else {
      setText(reload, r.result + " at " + r.at);
      reload.className = r.result === "ok" ? "" : "errors";
    }
    replaceChildren($("reasons"), (s.reasons || []).map((x) => el("li", {}, x)));
    const errs = r && r.result !== "ok" ? r.errors || [] : [];
    replaceChildren($("reload-errors"), errs.map((e) => el("li", {}, "config not reloaded: " + e.text)));
    const tbody = $("sessions").tBodies[0];
    replaceChildren(tbody, (s.sessions || []).map((x) => {
      const up = el("span", { class: "badge " + (x.connected ? "ok" : "bad") }, x.connected ? "connected" : "disconnected");
      let store = x.storeMessages + " messages, " + bytes(x.storeBytes);
      if (x.storeMessages > 0) store += ", oldest " + duration(x.storeOldestAgeSeconds);
      return el("tr", { "data-session": x.id },
        el("td", { "data-label": "Session" }, x.id),
        el("td", { "data-label": "Broker" }, x.server),
        el("td", { "data-label": "Connected" }, up),
        el("td", { "data-label": "Waiting" }, store),
        el("td", { "data-label": "Dropped" }, String(x.dropped)));
    }));
    $("token-box").hidden = !(commands.enabled && commands.tokenRequired);
  }

  // The text the filter looks at: everything shown in the row.
  function haystack(d) {
    const parts = [d.name, d.driver, d.status, d.error || "", d.topic];
    for (const p of d.properties) {
      parts.push(p.name, show(p.value), p.unit || "", p.error || "");
    }
    if (Object.keys(d.errors || {}).length || d.error) parts.push("error", "errors");
    return parts.join(" ").toLowerCase();
  }

  function valuesOf(d) {
    return d.properties.filter((p) => p.value !== undefined).map((p) =>
      el("span", { class: "pv", "data-prop": p.name, title: p.description || null },
        el("span", { class: "k" }, p.name),
        el("span", { class: "v" }, show(p.value)),
        p.unit ? el("span", { class: "u" }, p.unit) : null));
  }

  function errorsOf(d) {
    const out = [];
    if (d.error) out.push(el("div", { class: "device-error" }, d.error));
    // While offline every property fails with the device's error: say it once.
    for (const [k, v] of Object.entries(d.errors || {})) {
      if (v !== d.error) out.push(el("div", {}, k + ": " + v));
    }
    return out;
  }

  function newRow(d) {
    const cells = {
      name: el("td", { class: "name", "data-label": "Device" }),
      driver: el("td", { class: "driver", "data-label": "Driver" }),
      status: el("td", { class: "status", "data-label": "Status" }),
      age: el("td", { class: "age", "data-label": "Last reading" }),
      values: el("td", { "data-label": "Values" }),
      errors: el("td", { class: "errors", "data-label": "Errors" }),
    };
    const tr = el("tr", { "data-device": d.name }, ...Object.values(cells));
    cells.name.appendChild(document.createTextNode(d.name));
    const row = { tr, cells, setRow: null, sig: "" };
    return row;
  }

  function updateRow(row, d) {
    // A device that did not answer in time keeps showing what it said last.
    if (d.status === "busy" && row.known) d = Object.assign({}, row.known, { status: "busy" });
    else if (d.status !== "busy") row.known = d;
    const c = row.cells;
    setText(c.driver, d.driver);
    const badge = el("span", { class: "badge " + d.status }, d.status);
    replaceChildren(c.status, [badge]);
    setText(c.age, d.lastReadingAgeSeconds === null ? "never" : d.lastReadingAgeSeconds < 1 ? "just now" : duration(d.lastReadingAgeSeconds) + " ago");
    c.age.className = "age" + (d.lastReading && d.lastReadingAgeSeconds > Math.max(10, 3 * d.syncIntervalSeconds) ? " stale" : "");
    const box = el("div", { class: "values" }, ...valuesOf(d));
    replaceChildren(c.values, [box]);
    replaceChildren(c.errors, errorsOf(d));
    const hasErrors = Object.keys(d.errors || {}).length > 0;
    row.tr.className = d.status + (hasErrors && d.status === "online" ? " has-errors" : "");
    const writable = d.properties.filter((p) => p.writable);
    if (commands.enabled && writable.length && !c.name.querySelector("button")) {
      const b = el("button", { type: "button", class: "set-open", "aria-expanded": "false" }, "Set…");
      b.addEventListener("click", () => toggleSet(row, b));
      c.name.appendChild(document.createTextNode(" "));
      c.name.appendChild(b);
    }
    row.device = d;
  }

  function toggleSet(row, button) {
    if (row.setRow) {
      row.setRow.remove();
      row.setRow = null;
      button.setAttribute("aria-expanded", "false");
      return;
    }
    button.setAttribute("aria-expanded", "true");
    const d = row.device;
    const fields = [];
    // The gateway validates (the $set rules); the browser only helps typing.
    const form = el("form", { class: "setform", "data-set": d.name, novalidate: "" });
    for (const p of d.properties.filter((q) => q.writable)) {
      let input;
      if (p.enum || p.type === "bool") {
        const options = p.enum || ["true", "false"];
        input = el("select", { name: p.name }, el("option", { value: "" }, "(unchanged)"),
          ...options.map((o) => el("option", { value: o }, o)));
      } else if (p.type === "string" || p.type === "bytes") {
        input = el("input", { name: p.name, type: "text" });
      } else {
        input = el("input", { name: p.name, type: "number", step: "any", min: p.min, max: p.max, inputmode: "decimal" });
      }
      input.setAttribute("placeholder", show(p.value));
      fields.push({ p, input });
      form.appendChild(el("label", {}, p.name + (p.unit ? " (" + p.unit + ")" : ""), input));
    }
    const result = el("div", { class: "result", role: "status" });
    form.appendChild(el("button", { type: "submit", class: "primary" }, "Apply"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const body = {};
      for (const { p, input } of fields) {
        const raw = input.value;
        if (raw === "") continue;
        if (p.enum || p.type === "string" || p.type === "bytes") body[p.name] = raw;
        else if (p.type === "bool") body[p.name] = raw === "true";
        else body[p.name] = Number(raw);
      }
      if (!Object.keys(body).length) {
        result.className = "result bad";
        setText(result, "Enter a value to set.");
        return;
      }
      sendSet(d.name, body, result);
    });
    const td = el("td", { colspan: "6" }, form, result);
    row.setRow = el("tr", { class: "setrow", "data-set-row": d.name }, td);
    row.tr.after(row.setRow);
  }

  async function sendSet(name, body, result) {
    result.className = "result";
    setText(result, "sending…");
    const headers = { "Content-Type": "application/json" };
    const token = $("token").value;
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const resp = await fetch("api/v1/devices/" + encodeURIComponent(name) + "/set", {
        method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin",
      });
      const text = await resp.text();
      let data = null;
      try { data = JSON.parse(text); } catch (e) { /* shown as text */ }
      if (resp.ok && data && data.ok) {
        result.className = "result ok";
        setText(result, "applied: " + JSON.stringify(data.applied));
      } else {
        result.className = "result bad";
        const errs = data && data.errors ? Object.entries(data.errors).map(([k, v]) => k + ": " + v).join("; ") : "";
        setText(result, "HTTP " + resp.status + ": " + (errs || (data && data.error) || text));
      }
    } catch (e) {
      result.className = "result bad";
      setText(result, "not sent: " + e);
    }
  }

  function renderDevices(list) {
    const tbody = $("devices").tBodies[0];
    const seen = new Set();
    const filter = $("filter").value.trim().toLowerCase().split(/\s+/).filter((w) => w);
    let shown = 0, offline = 0;
    let prev = null;
    for (const d of list) {
      seen.add(d.name);
      if (d.status === "offline" || d.status === "stopped") offline++;
      let row = rows.get(d.name);
      if (!row) {
        row = newRow(d);
        rows.set(d.name, row);
      }
      updateRow(row, d);
      const text = haystack(d);
      const visible = filter.every((w) => text.includes(w));
      row.tr.hidden = !visible;
      if (row.setRow) row.setRow.hidden = !visible;
      if (visible) shown++;
      // Keep the server's order (by name) with each set form under its row.
      const anchor = prev ? (prev.setRow || prev.tr).nextSibling : tbody.firstChild;
      if (anchor !== row.tr) tbody.insertBefore(row.tr, anchor);
      if (row.setRow && row.tr.nextSibling !== row.setRow) row.tr.after(row.setRow);
      prev = row;
    }
    for (const [name, row] of rows) {
      if (!seen.has(name)) {
        row.tr.remove();
        if (row.setRow) row.setRow.remove();
        rows.delete(name);
      }
    }
    setText($("counts"), "(" + list.length + " total, " + offline + " offline" +
      (filter.length ? ", " + shown + " shown" : "") + ")");
    $("empty").hidden = !(list.length && shown === 0);
  }

  let lastDevices = [];
  async function poll() {
    try {
      const [s, d] = await Promise.all([
        fetch("api/v1/status", { cache: "no-store" }).then((r) => r.json()),
        fetch("api/v1/devices", { cache: "no-store" }).then((r) => r.json()),
      ]);
      renderStatus(s);
      lastDevices = d.devices || [];
      renderDevices(lastDevices);
      $("conn").hidden = true;
      document.body.dataset.updated = String(Date.now());
    } catch (e) {
      $("conn").hidden = false;
    }
    setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("filter").addEventListener("input", () => renderDevices(lastDevices));
    const t = $("token");
    t.value = sessionStorage.getItem("fieldgate-token") || "";
    t.addEventListener("change", () => sessionStorage.setItem("fieldgate-token", t.value));
    poll();
  });
})();
