// The API reference (/docs) loads nothing from another host. Redoc's sidebar footer adds Redocly's
// logo from its CDN (no option turns it off); this drops an image source on another origin before
// the browser can request it. Runs before Redoc, on the reference page only.
(function () {
  "use strict";
  const setAttribute = Element.prototype.setAttribute;
  function foreign(value) {
    try {
      const url = new URL(String(value), document.baseURI);
      return url.protocol !== "data:" && url.origin !== window.location.origin;
    } catch (error) {
      return false;
    }
  }
  Element.prototype.setAttribute = function (name, value) {
    if (this instanceof HTMLImageElement && String(name).toLowerCase() === "src" && foreign(value)) {
      this.hidden = true;
      return undefined;
    }
    return setAttribute.call(this, name, value);
  };
})();
