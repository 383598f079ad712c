// Copy buttons: <button type="button" class="copy-button" data-copy="#element-id"
// aria-label="Copy the API key">Copy</button> copies the element's text (a field's value), shows
// "Copied" on the button for a moment and says it to screen readers through a live region.
// Listening on the document also covers buttons added later (the playground's code panel).
(function () {
  "use strict";
  var SHOWN_MS = 2000;
  var announcer = null;

  function announce(text) {
    if (!announcer) {
      announcer = document.createElement("span");
      announcer.className = "visually-hidden";
      announcer.setAttribute("role", "status");
      announcer.setAttribute("aria-live", "polite");
      document.body.appendChild(announcer);
    }
    announcer.textContent = "";
    // A changed text is announced; the same text twice in a row is not, hence the reset first.
    window.setTimeout(function () { announcer.textContent = text; }, 50);
  }

  // Without the Clipboard API (a page served over plain http from another host than localhost),
  // the selection is copied the old way.
  function copyBySelection(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    var copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    return copied ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copy(element) {
    var text = "value" in element && element.tagName !== "BUTTON" ? element.value : element.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return copyBySelection(element); });
    }
    return copyBySelection(element);
  }

  function show(button, label, state) {
    window.clearTimeout(button._copyTimer);
    if (!button.hasAttribute("data-label")) button.setAttribute("data-label", button.textContent);
    button.textContent = label;
    button.classList.remove("copied", "copy-failed");
    button.classList.add(state);
    button._copyTimer = window.setTimeout(function () {
      button.textContent = button.getAttribute("data-label");
      button.classList.remove(state);
    }, SHOWN_MS);
  }

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("button[data-copy]") : null;
    if (!button) return;
    var element = document.querySelector(button.getAttribute("data-copy"));
    if (!element) return;
    var what = button.getAttribute("aria-label") || "Copy";
    copy(element).then(
      function () {
        show(button, "Copied", "copied");
        announce(what.replace(/^Copy/, "Copied") + " to the clipboard.");
      },
      function () {
        show(button, "Press Ctrl+C", "copy-failed");
        announce("Copying was refused by the browser: the text is selected, press Control+C to copy it.");
      }
    );
  });
})();
