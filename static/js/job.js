// The job page's training curve: train and validation loss, validation accuracy and the eval score by step.
// The points so far come with the page (a finished job's chart is drawn at once); while the job
// runs, only the points written since the last fetch are fetched every 2 s and merged by step.
// Every step is kept; Chart.js's decimation draws a long run at the width of the chart.
(function () {
  "use strict";
  var canvas = document.getElementById("loss-chart");
  var initial = document.getElementById("loss-chart-data");
  if (!canvas || !initial || typeof Chart === "undefined") return;
  var empty = document.getElementById("loss-chart-empty");
  // `order`: the evaluations are drawn over the train loss, whose every-step line would hide them.
  var SERIES = [
    { key: "train_loss", label: "Train loss", color: "#4f46e5", axis: "loss", radius: 0, order: 1 },
    { key: "valid_loss", label: "Validation loss", color: "#b45309", axis: "loss", radius: 4, order: 0 },
    { key: "accuracy", label: "Validation accuracy", color: "#15803d", axis: "accuracy", radius: 4, order: 0 },
    // A fine-tune scored by an eval: the share of its items that passed, at each epoch's end.
    { key: "eval_score", label: "Eval score", color: "#be185d", axis: "accuracy", radius: 4, order: 0 },
  ];
  var POLL_MS = 2000;

  var chart = new Chart(canvas, {
    type: "line",
    data: {
      datasets: SERIES.map(function (s) {
        return {
          label: s.label, data: [], yAxisID: s.axis, borderColor: s.color, backgroundColor: s.color,
          borderWidth: 2, pointRadius: s.radius, tension: 0.2, order: s.order,
          pointBorderColor: "#fff", pointBorderWidth: s.radius ? 1.5 : 0,
          clip: 8, // a score of 1 sits on the top edge: its line and points are drawn whole
        };
      }),
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true, // points arrive sorted by step, unique
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "Step" }, ticks: { precision: 0 } },
        loss: { type: "linear", position: "left", title: { display: true, text: "Loss" } },
        accuracy: {
          type: "linear", position: "right", min: 0, max: 1, display: false,
          title: { display: true, text: "Accuracy, eval score" }, grid: { drawOnChartArea: false },
        },
      },
      plugins: {
        // Past a few pixels a point, min/max decimation keeps every spike while drawing less.
        decimation: { enabled: true, algorithm: "min-max" },
        // Series without points (e.g. accuracy for a generation model) stay out of the legend.
        legend: { labels: {
          filter: function (item, data) { return data.datasets[item.datasetIndex].data.length > 0; },
          sort: function (a, b) { return a.datasetIndex - b.datasetIndex; }, // as listed, whatever the drawing order
        } },
      },
    },
  });

  var points = new Map(); // step → the merged point; a retried attempt's later value wins
  var state = JSON.parse(initial.textContent);
  var cursor = state.cursor || "";
  var finished = state.is_finished;
  var timer = null;

  function merge(list) {
    list.forEach(function (p) {
      var known = points.get(p.step);
      points.set(p.step, known ? Object.assign(known, p) : p);
    });
  }

  function draw() {
    var ordered = Array.from(points.values()).sort(function (a, b) { return a.step - b.step; });
    SERIES.forEach(function (s, i) {
      chart.data.datasets[i].data = ordered
        .filter(function (p) { return typeof p[s.key] === "number"; })
        .map(function (p) { return { x: p.step, y: p[s.key] }; });
    });
    chart.options.scales.accuracy.display =
      chart.data.datasets[2].data.length > 0 || chart.data.datasets[3].data.length > 0;
    chart.update();
    if (empty) empty.hidden = ordered.length > 0;
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  function refresh() {
    var url = canvas.dataset.metricsUrl + (cursor ? "?after=" + encodeURIComponent(cursor) : "");
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status >= 400 && response.status < 500) return null; // gone or logged out: stop
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (body) {
        if (!body) return;
        merge(body.data);
        cursor = body.cursor || cursor;
        draw();
        finished = body.is_finished;
        if (!finished) schedule(POLL_MS);
      })
      .catch(function () { schedule(POLL_MS * 2.5); }); // a network blip: try again, more slowly
  }

  merge(state.points);
  draw();
  if (!finished) schedule(POLL_MS);

  // Each time the status card is refreshed, the curve is too, so that the two tell the same step
  // (and once the job has finished, its last points come at once, not at the next tick).
  document.body.addEventListener("htmx:afterSettle", function () {
    if (!finished) schedule(0); // one fetch however many parts settled: schedule() replaces the last
  });
})();
