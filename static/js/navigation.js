// The sidebar's menu button on narrow screens: a disclosure button (aria-expanded) that shows and
// hides the navigation. Without JavaScript the button stays hidden and the navigation open.
(function () {
  "use strict";
  var sidebar = document.querySelector(".sidebar");
  var button = sidebar && sidebar.querySelector(".menu-button");
  if (!button) return;
  var panel = document.getElementById(button.getAttribute("aria-controls"));

  function setOpen(open) {
    button.setAttribute("aria-expanded", open ? "true" : "false");
    sidebar.classList.toggle("open", open);
  }

  sidebar.classList.add("has-menu");
  button.hidden = false;
  setOpen(false);
  button.addEventListener("click", function () {
    setOpen(button.getAttribute("aria-expanded") !== "true");
  });
  // Escape closes the open menu from anywhere in it, and gives the focus back to the button.
  sidebar.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && button.getAttribute("aria-expanded") === "true") {
      setOpen(false);
      button.focus();
    }
  });
  // A panel that lost its button (a wide screen) is never left closed.
  if (panel && window.matchMedia) {
    window.matchMedia("(min-width: 761px)").addEventListener("change", function (event) {
      if (event.matches) setOpen(false);
    });
  }
})();
