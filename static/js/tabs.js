// ARIA tabs (role=tablist/tab/tabpanel) on every page: one tab stop for the tab list (the selected
// tab; the others have tabindex=-1), Left/Right move to the previous/next tab, Home/End to the
// first/last, and moving selects (the page's own click handler shows the panel).
(function () {
  "use strict";
  function tabsOf(list) {
    return Array.prototype.slice.call(list.querySelectorAll("[role=tab]"));
  }

  function rove(list) {
    tabsOf(list).forEach(function (tab) {
      tab.setAttribute("tabindex", tab.getAttribute("aria-selected") === "true" ? "0" : "-1");
    });
  }

  var lists = Array.prototype.slice.call(document.querySelectorAll("[role=tablist]"));
  lists.forEach(function (list) {
    rove(list);
    // The selection may change from a click, the URL's #fragment or a script: follow it.
    new MutationObserver(function () {
      rove(list);
    }).observe(list, { subtree: true, attributes: true, attributeFilter: ["aria-selected"] });

    list.addEventListener("keydown", function (event) {
      var tabs = tabsOf(list);
      var index = tabs.indexOf(event.target);
      if (index < 0) return;
      var next = {
        ArrowLeft: (index - 1 + tabs.length) % tabs.length,
        ArrowRight: (index + 1) % tabs.length,
        Home: 0,
        End: tabs.length - 1,
      }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      tabs[next].focus();
      tabs[next].click();
    });
  });
})();
