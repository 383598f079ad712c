// Behaviour forms share on every page, in place of inline handlers (the Content-Security-Policy
// runs no onsubmit= or onchange= attribute). Listening on the document also covers forms that
// htmx swaps in later, such as the job page's cancel button.
(function () {
  "use strict";
  // <form data-confirm="Question?">: the browser asks first; "Cancel" keeps the form unsent.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-confirm")) return;
    if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
  });

  // <select data-submit-on-change>: choosing an option sends its form (a <noscript> button does
  // it without JavaScript).
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (select instanceof HTMLSelectElement && select.hasAttribute("data-submit-on-change") && select.form) {
      select.form.requestSubmit();
    }
  });
})();
