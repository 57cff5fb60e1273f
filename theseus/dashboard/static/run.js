// One run: its figures, live curves (polled every second), checkpoints, samples, log, config,
// and the actions on it (cancel a submitted run, copy the command that resumes it).
"use strict";

(function () {
  const { el, fmt, api } = window.theseus;
  const id = new URLSearchParams(window.location.search).get("run") || "";
  const q = (extra) => "?" + new URLSearchParams(Object.assign({ run: id }, extra || {})).toString();
  const ACTIVE = ["starting", "queued", "running"];
  // charts in order; a key no chart names (evaluation results, z_loss) gets a chart of its own
  const CHARTS = [
    ["loss", "loss", [["loss", "train"], ["val_loss", "validation"]]],
    ["lr", "learning rate", [["lr", "lr"]]],
    ["grad_norm", "grad norm", [["grad_norm", "grad norm"]]],
    ["tokens_per_s", "tokens/s", [["tokens_per_s", "tokens/s"]]],
    ["mfu", "MFU", [["mfu", "MFU"]]],
  ];
  const CHARTED = new Set(["tokens", ...CHARTS.flatMap((c) => c[2].map((s) => s[0]))]);
  let x = "step";
  let version = null;
  let run = null;

  document.getElementById("download").href = "/api/config" + q();
  document.getElementById("x").addEventListener("change", (event) => {
    x = event.target.value;
    version = null;
    document.getElementById("charts").replaceChildren();
    window.theseus.charts = {};
    refreshCurves();
  });

  function chartFor(key, title) {
    if (window.theseus.charts[key]) return window.theseus.charts[key];
    const box = document.getElementById("charts").appendChild(el("div", { class: "chart", "data-chart": key }));
    return new window.theseus.LiveChart(box, key, title, x);
  }

  async function refreshCurves() {
    const data = await api("/api/metrics" + q({ x, since: version || "" }));
    if (data.unchanged) return;
    version = data.version;
    const series = data.series;
    for (const [key, title, parts] of CHARTS) {
      const present = parts.filter(([name]) => series[name]);
      if (!present.length) continue;
      chartFor(key, title).update(
        present.map(([name, label], i) => ({ label, values: series[name], dash: i > 0, points: name === "val_loss" })),
      );
    }
    for (const name of Object.keys(series).sort()) {
      if (!CHARTED.has(name)) chartFor("extra:" + name, name).update([{ label: name, values: series[name], points: true }]);
    }
    const counts = data.counts.loss ? ` (${data.lines} lines; ${series.loss[0].length} of ${data.counts.loss} loss points drawn)` : "";
    document.getElementById("lines").textContent = counts;
    document.body.dataset.version = version;
  }

  function figure(label, value) {
    return el("div", {}, el("b", {}, value), el("span", {}, label));
  }

  function showRun(data) {
    run = data;
    document.title = `${data.name} · theseus`;
    document.getElementById("name").replaceChildren(data.name, " ", window.theseus.stateBadge(data.state, data.detail));
    document.getElementById("where").textContent = `${data.host} · ${data.folder}`;
    document.getElementById("figures").replaceChildren(
      figure("step", fmt.step(data.step, data.total)),
      figure("loss", fmt.loss(data.loss)),
      figure("val_loss", fmt.loss(data.val_loss)),
      figure("tokens/s", fmt.speed(data.tokens_per_s)),
      figure("MFU", fmt.mfu(data.mfu)),
      figure("ETA", fmt.duration(data.eta_s)),
      figure("started", fmt.time(data.started)),
      ...(data.detail ? [figure("why", data.detail)] : []),
    );
    document.getElementById("resume").textContent = data.resume;
    document.getElementById("cancel").hidden = !(data.submitted && ACTIVE.includes(data.state));
    if (!("config" in data)) return; // the parts that change seldom come with every 5th answer
    document.getElementById("config").textContent = data.config === null ? "(no config.yaml)" : data.config;
    document.querySelector("#checkpoints tbody").replaceChildren(
      ...data.checkpoints.map((c) =>
        el("tr", {}, el("td", { class: "num" }, c.step), el("td", {}, fmt.time(c.written)), el("td", { class: "num" }, fmt.size(c.size)),
          el("td", { class: "num" }, fmt.loss(c.loss)), el("td", { class: "num" }, fmt.loss(c.val_loss))),
      ),
    );
    document.getElementById("samples").replaceChildren(
      ...data.samples.flatMap((s) => [el("h2", {}, s.name), el("pre", {}, s.text)]),
    );
  }

  document.getElementById("copy").addEventListener("click", async () => {
    const text = document.getElementById("resume").textContent;
    try {
      await navigator.clipboard.writeText(text);
      document.getElementById("action").textContent = "copied";
    } catch (error) {
      const range = document.createRange(); // no clipboard (plain http on another host): select it
      range.selectNodeContents(document.getElementById("resume"));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      document.getElementById("action").textContent = "selected: press Ctrl-C to copy";
    }
  });

  document.getElementById("cancel").addEventListener("click", async () => {
    if (!run || !window.confirm(`Cancel ${run.name} on ${run.host}? It saves a checkpoint first when it can.`)) return;
    const button = document.getElementById("cancel");
    button.disabled = true;
    try {
      const done = await api("/api/cancel", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ run: id, confirm: run.name }),
      });
      document.getElementById("action").textContent = `cancelled ${done.cancelled}`;
    } catch (error) {
      window.theseus.problem(error);
    } finally {
      button.disabled = false;
    }
  });

  async function refreshLog() {
    const data = await api("/api/log" + q());
    const box = document.getElementById("log");
    const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    document.getElementById("logpath").textContent = data.path;
    if (box.textContent !== data.text) {
      box.textContent = data.text;
      if (atEnd) box.scrollTop = box.scrollHeight;
    }
  }

  window.theseus.every(1000, async () => {
    await refreshCurves();
    document.body.dataset.ready = "1";
  });
  let polls = 0;
  window.theseus.every(2000, async () => {
    showRun(await api("/api/run" + q(polls++ % 5 === 0 ? { full: "1" } : {})));
    document.body.dataset.shown = "1";
  });
  window.theseus.every(2000, refreshLog);
})();
