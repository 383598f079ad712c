// Dataset upload with drag and drop and a progress bar.
// XMLHttpRequest rather than fetch: only XHR reports upload progress (upload.onprogress).
// The session cookie authenticates; the CSRF token goes in the X-CSRFToken header. Without
// JavaScript the same form posts normally and the server redirects.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) return;
  var input = document.getElementById("upload-file");
  var zone = document.getElementById("dropzone");
  var chosen = document.getElementById("upload-chosen");
  var progress = document.getElementById("upload-progress");
  var status = document.getElementById("upload-status");
  var button = document.getElementById("upload-button");
  var maxBytes = Number(form.dataset.maxBytes) || 0;

  function formatBytes(bytes) {
    var units = ["bytes", "KB", "MB", "GB"];
    var value = bytes;
    var unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
  }

  function say(message, isError) {
    status.textContent = message;
    status.classList.toggle("error-text", Boolean(isError));
  }

  function showChosen() {
    var file = input.files[0];
    chosen.textContent = file ? file.name + " (" + formatBytes(file.size) + ")" : "";
    say("");
  }

  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("over");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.remove("over");
    });
  });
  zone.addEventListener("drop", function (event) {
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      showChosen();
    }
  });
  input.addEventListener("change", showChosen);

  function finish(message) {
    say(message, true);
    button.disabled = false;
    progress.hidden = true;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var file = input.files[0];
    if (!file) {
      say("Choose a file first.", true);
      return;
    }
    if (maxBytes && file.size > maxBytes) {
      // Refuse here rather than send the whole file only to hear 413.
      say("The file is " + formatBytes(file.size) + "; the limit is " + formatBytes(maxBytes) + ".", true);
      return;
    }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    xhr.upload.onprogress = function (progressEvent) {
      if (!progressEvent.lengthComputable) return;
      var percent = Math.floor((progressEvent.loaded / progressEvent.total) * 100);
      progress.value = percent;
      say("Uploading… " + percent + "% of " + formatBytes(progressEvent.total));
    };
    xhr.upload.onload = function () {
      progress.value = 100;
      say("Uploaded; saving…");
    };
    xhr.onload = function () {
      var body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch (error) {
        body = {};
      }
      if (xhr.status >= 200 && xhr.status < 300 && body.url) {
        window.location.assign(body.url);
        return;
      }
      finish(body.error || "The upload failed (HTTP " + xhr.status + "). Try again.");
    };
    xhr.onerror = function () {
      finish("The upload was interrupted. Check your connection and try again.");
    };
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    say("Uploading… 0%");
    xhr.send(new FormData(form));
  });
})();
