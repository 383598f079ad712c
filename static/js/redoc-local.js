// The API reference (/docs) loads nothing from another host. Redoc's sidebar footer adds Redocly's
// logo from its CDN (no option turns it off); this drops an image source on another origin before
// the browser can request it, whichever way it is set (attribute or property), and hides that
// image. Runs before Redoc, on the reference page only.
(function () {
  "use strict";
  function foreign(value) {
    try {
      const url = new URL(String(value), document.baseURI);
      return url.protocol !== "data:" && url.protocol !== "blob:" && url.origin !== window.location.origin;
    } catch (error) {
      return false;
    }
  }

  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (this instanceof HTMLImageElement && String(name).toLowerCase() === "src" && foreign(value)) {
      this.hidden = true;
      return undefined;
    }
    return setAttribute.call(this, name, value);
  };

  const src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    configurable: true,
    enumerable: src.enumerable,
    get: function () {
      return src.get.call(this);
    },
    set: function (value) {
      if (foreign(value)) {
        this.hidden = true;
        return;
      }
      src.set.call(this, value);
    },
  });
})();
