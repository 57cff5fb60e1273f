// Several runs' curves overlaid (by step or by tokens), polled every 2 s, with the config keys
// whose values differ between them.
"use strict";

(function () {
  const { el, api } = window.theseus;
  const ids = new URLSearchParams(window.location.search).getAll("run");
  const CHARTS = [
    ["loss", "train loss", "loss"],
    ["val_loss", "validation loss", "val_loss"],
    ["lr", "learning rate", "lr"],
    ["tokens_per_s", "tokens/s", "tokens_per_s"],
  ];
  let x = "step";
  let names = ids;

  document.getElementById("x").addEventListener("change", (event) => {
    x = event.target.value;
    document.getElementById("charts").replaceChildren();
    window.theseus.charts = {};
    refresh();
  });

  async function refresh() {
    const all = await Promise.all(ids.map((id) => api("/api/metrics?" + new URLSearchParams({ run: id, x }).toString())));
    for (const [key, title, name] of CHARTS) {
      const present = all.map((data, i) => [data.series[name], i]).filter(([s]) => s);
      if (!present.length) continue;
      let chart = window.theseus.charts[key];
      if (!chart) {
        const box = document.getElementById("charts").appendChild(el("div", { class: "chart", "data-chart": key }));
        chart = new window.theseus.LiveChart(box, key, title, x);
      }
      chart.update(present.map(([values, i]) => ({ label: names[i], values, color: window.theseus.color(i), points: name === "val_loss" })));
    }
    document.body.dataset.ready = "1";
  }

  async function showDiff() {
    const runs = await Promise.all(ids.map((id) => api("/api/run?" + new URLSearchParams({ run: id }).toString())));
    names = runs.map((r) => r.name);
    document.getElementById("title").textContent = "Compare " + names.join(" · ");
    document.getElementById("diffhead").replaceChildren(el("th", {}, "key"), ...names.map((n) => el("th", {}, n)));
    const diff = await api("/api/diff?" + new URLSearchParams(ids.map((id) => ["run", id])).toString());
    document.querySelector("#diff tbody").replaceChildren(
      ...diff.keys.map((row) => el("tr", {}, el("td", {}, row.key), ...row.values.map((v) => el("td", {}, v === null ? "—" : v)))),
    );
    if (!diff.keys.length) document.querySelector("#diff tbody").replaceChildren(el("tr", {}, el("td", {}, "(the same config)")));
  }

  showDiff()
    .then(() => window.theseus.every(2000, refresh))
    .catch(window.theseus.problem);
})();
