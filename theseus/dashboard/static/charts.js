// Line charts (uPlot, shipped in vendor/) that are redrawn in place as new points arrive.
"use strict";

(function () {
  const theseus = window.theseus;
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
  theseus.color = (i) => COLORS[i % COLORS.length];
  theseus.charts = {};

  // Several [xs, ys] series on one x axis (missing points are null, joined over by the line).
  theseus.aligned = function aligned(pairs) {
    if (pairs.length === 1) return [pairs[0][0], pairs[0][1]];
    return uPlot.join(pairs.map((p) => [p[0], p[1]]));
  };

  // A chart in `box` (its title and series labels are text); `update(data)` replaces its
  // points, rebuilding it only when the series change.
  theseus.LiveChart = class LiveChart {
    constructor(box, key, title, xLabel) {
      this.box = box;
      this.key = key;
      this.xLabel = xLabel;
      this.plot = null;
      this.signature = "";
      box.appendChild(theseus.el("h3", {}, title));
      this.area = box.appendChild(theseus.el("div", {}));
      theseus.charts[key] = this;
      new ResizeObserver(() => this.plot && this.plot.setSize(this.size())).observe(box);
    }

    size() {
      return { width: Math.max(200, this.box.clientWidth - 12), height: 220 };
    }

    // series: [{label, values: [xs, ys], dash?, color?, points?}]
    update(series) {
      const data = theseus.aligned(series.map((s) => s.values));
      const signature = JSON.stringify([this.xLabel, series.map((s) => [s.label, !!s.dash])]);
      if (this.plot && signature === this.signature) {
        this.plot.setData(data);
      } else {
        if (this.plot) this.plot.destroy();
        this.signature = signature;
        const options = Object.assign(this.size(), {
          scales: { x: { time: false } },
          axes: [{ label: this.xLabel }, { size: 60 }],
          cursor: { drag: { x: true, y: false } },
          series: [
            { label: this.xLabel },
            ...series.map((s, i) => ({
              label: s.label,
              stroke: s.color || theseus.color(i),
              width: 1.5,
              dash: s.dash ? [6, 4] : undefined,
              spanGaps: true,
              points: { show: !!s.points },
            })),
          ],
        });
        this.plot = new uPlot(options, data, this.area);
      }
      this.box.dataset.points = String(this.points(0));
    }

    // How many points series `i` draws (nulls are no point).
    points(i) {
      if (!this.plot) return 0;
      const ys = this.plot.data[i + 1] || [];
      let n = 0;
      for (const y of ys) if (y !== null && y !== undefined) n += 1;
      return n;
    }
  };
})();
