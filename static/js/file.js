// The file page's label chart: examples per label, from the json_script block "label-data"
// (pairs of label and count, the most common first).
(function () {
  "use strict";
  var canvas = document.getElementById("label-chart");
  var data = document.getElementById("label-data");
  if (!canvas || !data || typeof Chart === "undefined") return;
  var pairs = JSON.parse(data.textContent);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: pairs.map(function (pair) { return pair[0]; }),
      datasets: [{ label: "Examples", data: pairs.map(function (pair) { return pair[1]; }), backgroundColor: "#4f46e5" }],
    },
    options: {
      maintainAspectRatio: false,
      plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
    },
  });
})();
