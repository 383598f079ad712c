// The Usage page's charts: cost per day of the month as stacked bars, by model and by unit.
// The JSON gives integer micro-dollars; they become dollars only for drawing and labels.
(function () {
  "use strict";
  var source = document.getElementById("usage-chart-empty");
  var byModel = document.getElementById("usage-by-model");
  var byUnit = document.getElementById("usage-by-unit");
  if (!source || !byModel || !byUnit || typeof Chart === "undefined") return;
  var COLORS = ["#4f46e5", "#0891b2", "#15803d", "#b45309", "#be123c", "#7c3aed", "#0f766e", "#a16207",
    "#475569", "#c026d3"];
  var MICROS = 1000000;

  function dollars(micros) {
    var value = micros / MICROS;
    if (value === 0 || value >= 0.1) return "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    // Under ten cents keep two significant digits, down to the micro-dollar, as the tables do.
    var places = Math.min(6, 1 - Math.floor(Math.log10(value)));
    var text = value.toFixed(places).replace(/0+$/, "");
    while (text.split(".")[1].length < 2) text += "0";
    return "$" + text;
  }

  function draw(canvas, labels, series) {
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels: labels,
        datasets: series.map(function (s, i) {
          var color = COLORS[i % COLORS.length];
          return {
            label: s.label, backgroundColor: color, borderColor: color,
            data: s.costs.map(function (micros) { return micros / MICROS; }),
            micros: s.costs,
          };
        }),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true },
          y: { stacked: true, beginAtZero: true, ticks: { callback: function (v) { return dollars(v * MICROS); } } },
        },
        plugins: {
          tooltip: {
            filter: function (item) { return item.dataset.micros[item.dataIndex] > 0; },
            callbacks: {
              label: function (item) { return item.dataset.label + ": " + dollars(item.dataset.micros[item.dataIndex]); },
            },
          },
        },
      },
    });
  }

  fetch(source.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    })
    .then(function (body) {
      var labels = body.days.map(function (day) { return day.slice(5); }); // MM-DD
      draw(byModel, labels, body.by_model);
      draw(byUnit, labels, body.by_unit);
      source.hidden = body.total > 0;
    })
    .catch(function () {
      source.textContent = "The chart could not be loaded. Reload the page to try again.";
      source.hidden = false;
    });
})();
