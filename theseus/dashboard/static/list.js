// The run list: every run the dashboard sees, refreshed every 2 s; tick runs to compare them.
"use strict";

(function () {
  const { el, fmt } = window.theseus;
  const chosen = new Set();
  const body = document.querySelector("#runs tbody");
  const compare = document.getElementById("compare");

  compare.addEventListener("click", () => {
    const query = new URLSearchParams();
    for (const id of chosen) query.append("run", id);
    window.location.href = "/compare?" + query.toString();
  });

  function row(run) {
    const tick = el("input", {
      type: "checkbox",
      "aria-label": "compare " + run.name,
      checked: chosen.has(run.id),
      onchange: (event) => {
        if (event.target.checked) chosen.add(run.id);
        else chosen.delete(run.id);
        compare.disabled = chosen.size < 2;
      },
    });
    const where = run.project === "default" && run.group === "default" ? "" : `${run.project}/${run.group}`;
    return el(
      "tr",
      { "data-id": run.id },
      el("td", {}, tick),
      el("td", { class: "name" }, el("a", { href: window.theseus.runUrl(run.id) }, run.name), where ? el("span", { class: "muted" }, "  " + where) : null),
      el("td", {}, window.theseus.stateBadge(run.state, run.detail)),
      el("td", {}, run.host),
      el("td", { class: "num" }, fmt.step(run.step, run.total)),
      el("td", { class: "num" }, fmt.loss(run.loss)),
      el("td", { class: "num" }, fmt.loss(run.val_loss)),
      el("td", { class: "num" }, fmt.speed(run.tokens_per_s)),
      el("td", { class: "num" }, fmt.mfu(run.mfu)),
      el("td", { class: "num" }, fmt.duration(run.eta_s)),
      el("td", {}, fmt.time(run.started)),
    );
  }

  window.theseus.every(2000, async () => {
    const data = await window.theseus.api("/api/runs");
    body.replaceChildren(...data.runs.map(row));
    document.getElementById("roots").textContent = data.roots.join("  ·  ");
    document.getElementById("count").textContent = `${data.runs.length} run${data.runs.length === 1 ? "" : "s"}`;
    window.theseus.problem(null);
    document.body.dataset.ready = "1";
  });
})();
