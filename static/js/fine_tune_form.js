// The new fine-tune form. Its errors come from the server, all at once and beside their fields
// (the form is novalidate); this script keeps the fields' red outline (aria-invalid) in step with
// the error slots the live estimate fills, and tells the server which number fields hold text a
// number input cannot hand over (the browser sends those as empty, which would read as "auto").
(function () {
  "use strict";
  var form = document.getElementById("fine-tune-form");
  if (!form) return;

  function unreadable() {
    return Array.prototype.filter.call(form.querySelectorAll("input[type=number]"), function (input) {
      return input.validity && input.validity.badInput;
    }).map(function (input) { return input.name; });
  }

  function markFields() {
    form.querySelectorAll(".errorlist[id^='error-']").forEach(function (slot) {
      var field = document.getElementById("id_" + slot.id.slice("error-".length));
      if (!field) return;
      if (slot.textContent.trim()) field.setAttribute("aria-invalid", "true");
      else field.removeAttribute("aria-invalid");
    });
  }

  form.addEventListener("submit", function () {
    form.querySelectorAll("input[name=unreadable]").forEach(function (input) { input.remove(); });
    unreadable().forEach(function (name) {
      var hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = "unreadable";
      hidden.value = name;
      form.appendChild(hidden);
    });
  });
  document.body.addEventListener("htmx:configRequest", function (event) {
    if (event.detail.elt === form) event.detail.parameters.unreadable = unreadable();
  });
  document.body.addEventListener("htmx:afterSettle", markFields);

  // After a refused submit, the summary of what to fix (or the question about a small dataset)
  // takes the focus, so a screen reader and the keyboard start there.
  var summary = document.getElementById("error-summary");
  var first = summary && !summary.hidden ? summary : document.getElementById("id_confirm_small_data");
  if (first) first.focus();
})();
