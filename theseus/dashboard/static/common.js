// Helpers every page shares. Every name and value goes into the page as text (textContent),
// never as markup: a run named <script>...</script> shows as those characters.
"use strict";

const theseus = (window.theseus = window.theseus || {});

theseus.api = async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
  return body;
};

// el("td", {class: "num"}, "text", childNode, ...): attributes are set one by one, children
// that are not nodes become text nodes.
theseus.el = function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

theseus.fmt = {
  loss: (v) => (v === null || v === undefined ? "-" : typeof v === "number" ? v.toFixed(4) : String(v)),
  step: (step, total) => (step === null || step === undefined ? "-" : total ? `${step}/${total}` : String(step)),
  speed: (v) => (v === null || v === undefined ? "-" : Math.round(v).toLocaleString("en-US")),
  mfu: (v) => (v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%"),
  duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
    const s = Math.round(seconds);
    if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    return `${s}s`;
  },
  time(epoch) {
    if (!epoch) return "-";
    const d = new Date(epoch * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  },
  size(bytes) {
    let value = bytes;
    for (const unit of ["B", "KiB", "MiB", "GiB"]) {
      if (value < 1024) return unit === "B" ? `${bytes} B` : `${value.toFixed(1)} ${unit}`;
      value /= 1024;
    }
    return `${value.toFixed(1)} TiB`;
  },
};

theseus.runUrl = (id) => "/run?" + new URLSearchParams({ run: id }).toString();

// Repeats `task` every `ms` milliseconds, one at a time (a slow answer is not overtaken).
theseus.every = function every(ms, task) {
  let stopped = false;
  const loop = async () => {
    if (stopped) return;
    try {
      await task();
    } catch (error) {
      theseus.problem(error);
    }
    setTimeout(loop, ms);
  };
  loop();
  return () => (stopped = true);
};

theseus.problem = function problem(error) {
  const box = document.getElementById("problem");
  if (box) box.textContent = error ? String(error.message || error) : "";
};

theseus.stateBadge = (state, detail) =>
  theseus.el("span", { class: `state state-${state}`, title: detail || null }, state);
