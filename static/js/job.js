// The job page's training curve: train and validation loss and validation accuracy by step.
// Fetches the metric points as JSON and redraws every 2 s until the job has finished.
(function () {
  "use strict";
  var canvas = document.getElementById("loss-chart");
  if (!canvas || typeof Chart === "undefined") return;
  var empty = document.getElementById("loss-chart-empty");
  var SERIES = [
    { key: "train_loss", label: "Train loss", color: "#4f46e5", axis: "loss", radius: 0 },
    { key: "valid_loss", label: "Validation loss", color: "#b45309", axis: "loss", radius: 3 },
    { key: "accuracy", label: "Validation accuracy", color: "#15803d", axis: "accuracy", radius: 3 },
  ];

  var chart = new Chart(canvas, {
    type: "line",
    data: {
      datasets: SERIES.map(function (s) {
        return {
          label: s.label, data: [], yAxisID: s.axis, borderColor: s.color, backgroundColor: s.color,
          borderWidth: 2, pointRadius: s.radius, tension: 0.2,
        };
      }),
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "Step" }, ticks: { precision: 0 } },
        loss: { type: "linear", position: "left", title: { display: true, text: "Loss" } },
        accuracy: {
          type: "linear", position: "right", min: 0, max: 1, display: false,
          title: { display: true, text: "Accuracy" }, grid: { drawOnChartArea: false },
        },
      },
      plugins: {
        // Series without points (e.g. accuracy for a generation model) stay out of the legend.
        legend: { labels: { filter: function (item, data) { return data.datasets[item.datasetIndex].data.length > 0; } } },
      },
    },
  });

  function draw(points) {
    SERIES.forEach(function (s, i) {
      chart.data.datasets[i].data = points
        .filter(function (p) { return typeof p[s.key] === "number"; })
        .map(function (p) { return { x: p.step, y: p[s.key] }; });
    });
    chart.options.scales.accuracy.display = chart.data.datasets[2].data.length > 0;
    chart.update();
    if (empty) empty.hidden = points.length > 0;
  }

  function refresh() {
    fetch(canvas.dataset.metricsUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status >= 400 && response.status < 500) return null; // gone or logged out: stop
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (body) {
        if (!body) return;
        draw(body.data);
        if (!body.is_finished) setTimeout(refresh, 2000);
      })
      .catch(function () { setTimeout(refresh, 5000); }); // a network blip: try again, more slowly
  }

  refresh();
})();
