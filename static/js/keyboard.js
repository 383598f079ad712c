// Keyboard access the markup alone does not give:
// - A region that scrolls sideways (a wide table on a phone, a code block) can be reached with Tab
//   and scrolled with the arrow keys, when it holds nothing else to focus.
// - Enter or Space on a file input opens the file picker, which Chromium does not do for every key
//   (the upload area is the input's label; app.css shows the input's focus on it).
(function () {
  "use strict";
  var SCROLLERS = ".main table, .scroll, .table-scroll, pre, .docs-main pre";

  function markScrollers(root) {
    Array.prototype.forEach.call(root.querySelectorAll(SCROLLERS), function (element) {
      var scrolls = element.scrollWidth > element.clientWidth + 1;
      var hasFocusable = element.querySelector("a[href], button, input, select, textarea, [tabindex]");
      if (scrolls && !hasFocusable) {
        element.setAttribute("tabindex", "0");
        element.setAttribute("data-scroll-focus", "");
      } else if (!scrolls && element.hasAttribute("data-scroll-focus")) {
        element.removeAttribute("tabindex");
        element.removeAttribute("data-scroll-focus");
      }
    });
  }

  markScrollers(document);
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      markScrollers(document);
    }, 150);
  });
  document.addEventListener("htmx:afterSettle", function () {
    markScrollers(document);
  });

  document.addEventListener("keydown", function (event) {
    var input = event.target;
    var opens = event.key === "Enter" || event.key === " ";
    if (opens && !event.repeat && input instanceof HTMLInputElement && input.type === "file") {
      event.preventDefault();
      input.click();
    }
  });
})();
