// The playground: tabs, the chat (a POST whose answer streams back as server-sent events, read
// with fetch + ReadableStream) and the classify form's error display.
(function () {
  "use strict";

  // --- Tabs -------------------------------------------------------------------------------------
  var tabs = Array.prototype.slice.call(document.querySelectorAll(".tabs [role=tab]"));

  function showTab(tab) {
    tabs.forEach(function (other) {
      var selected = other === tab;
      other.setAttribute("aria-selected", selected ? "true" : "false");
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    });
  }

  tabs.forEach(function (tab) {
    tab.addEventListener("click", function () {
      showTab(tab);
      history.replaceState(null, "", "#" + tab.id.replace("tab-", ""));
    });
  });
  var fromHash = document.getElementById("tab-" + location.hash.slice(1));
  if (fromHash) showTab(fromHash);

  // The classify partial comes back with a 4xx/5xx when the request is refused: show it anyway.
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "classify-results" && event.detail.xhr.status >= 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // --- Chat -------------------------------------------------------------------------------------
  var form = document.getElementById("chat-form");
  if (!form) return;
  var log = document.getElementById("chat-log");
  var input = document.getElementById("chat-input");
  var sendButton = document.getElementById("chat-send");
  var stopButton = document.getElementById("chat-stop");
  var errorBox = document.getElementById("chat-error");
  var usageLine = document.getElementById("chat-usage");
  var csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  var history_ = []; // the conversation so far: [{role, content}], without the system prompt
  var controller = null; // aborts the request in flight
  var conversation = 0; // bumped by Clear, so an answer still arriving is not kept

  function field(name) {
    return form.elements[name].value.trim();
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function bubble(role, text) {
    var empty = document.getElementById("chat-empty");
    if (empty) empty.remove();
    var item = document.createElement("div");
    item.className = "chat-message " + role;
    var who = document.createElement("div");
    who.className = "chat-role";
    who.textContent = role === "user" ? "You" : "Assistant";
    var body = document.createElement("div");
    body.className = "chat-text";
    body.textContent = text; // never innerHTML: the model's output is untrusted text
    item.appendChild(who);
    item.appendChild(body);
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
    return item;
  }

  // The request body: the conversation plus the parameters that are filled in, as the API takes them.
  function requestBody(messages) {
    var body = { model: field("model"), messages: [] };
    var system = field("system");
    if (system) body.messages.push({ role: "system", content: system });
    body.messages = body.messages.concat(messages);
    ["temperature", "top_p", "max_tokens", "seed"].forEach(function (name) {
      var raw = field(name);
      if (raw === "") return;
      var value = Number(raw);
      body[name] = isNaN(value) ? raw : value; // the server words the error for a non-number
    });
    var stops = form.elements.stop.value.split("\n")
      .filter(function (s) { return s !== ""; })
      .map(function (s) { return s.replace(/\\n/g, "\n").replace(/\\t/g, "\t"); });
    if (stops.length) body.stop = stops;
    return body;
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.hidden = !busy;
  }

  // Reads `data: ...` events from the stream; calls onEvent with each parsed payload.
  function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function pump() {
      return reader.read().then(function (part) {
        if (part.done) return;
        buffer += decoder.decode(part.value, { stream: true });
        var events = buffer.split("\n\n");
        buffer = events.pop(); // an incomplete event waits for the next read
        for (var i = 0; i < events.length; i++) {
          var lines = events[i].split("\n");
          for (var j = 0; j < lines.length; j++) {
            if (lines[j].indexOf("data: ") !== 0) continue;
            var data = lines[j].slice(6);
            if (data === "[DONE]") return;
            onEvent(JSON.parse(data));
          }
        }
        return pump();
      });
    }
    return pump();
  }

  function send() {
    var text = input.value;
    if (!text.trim() || controller) return;
    showError("");
    usageLine.textContent = "";
    var turn = { role: "user", content: text };
    var userItem = bubble("user", text);
    var answerItem = bubble("assistant", "");
    var answerText = answerItem.querySelector(".chat-text");
    answerItem.classList.add("streaming");
    input.value = "";
    var answer = "";
    var failed = null;
    var finish = null;
    controller = new AbortController();
    var mine = conversation;
    setBusy(true);

    fetch(form.dataset.url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRFToken": csrf },
      body: JSON.stringify(requestBody(history_.concat([turn]))),
      signal: controller.signal,
    })
      .then(function (response) {
        if (!response.ok) {
          return response.json().then(
            function (body) { failed = (body.error && body.error.message) || "The request failed."; },
            function () { failed = "The request failed (HTTP " + response.status + ")."; }
          );
        }
        if ((response.headers.get("Content-Type") || "").indexOf("text/event-stream") !== 0) {
          failed = "Your session has ended: reload the page and sign in again."; // redirected to the login page
          return;
        }
        return readEvents(response, function (payload) {
          if (payload.error) {
            failed = payload.error.message;
            return;
          }
          (payload.choices || []).forEach(function (choice) {
            if (choice.index !== 0) return;
            if (choice.delta && choice.delta.content) {
              answer += choice.delta.content;
              answerText.textContent = answer;
              log.scrollTop = log.scrollHeight;
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          });
          if (payload.usage) {
            usageLine.textContent = payload.usage.prompt_tokens + " prompt + " + payload.usage.completion_tokens +
              " completion tokens" + (finish ? " · finish reason: " + finish : "");
          }
        });
      })
      .catch(function (error) {
        if (error.name !== "AbortError") failed = "The connection was lost: " + error.message;
      })
      .then(function () {
        var stopped = controller.signal.aborted;
        controller = null;
        setBusy(false);
        answerItem.classList.remove("streaming");
        if (mine !== conversation) return; // cleared meanwhile
        if (failed) {
          // Not kept in the conversation: the text goes back to the box to fix and resend.
          showError(failed);
          if (answer) {
            userItem.classList.add("failed"); // shown faded, with what arrived before the error
            answerItem.classList.add("failed");
          } else {
            userItem.remove();
            answerItem.remove();
          }
          if (!input.value) input.value = text;
          return;
        }
        if (stopped) answerText.textContent = answer + " [stopped]";
        else if (!answer) answerText.textContent = "(empty answer" + (finish ? ": " + finish : "") + ")";
        history_.push(turn, { role: "assistant", content: answer });
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  stopButton.addEventListener("click", function () {
    if (controller) controller.abort();
  });
  document.getElementById("chat-clear").addEventListener("click", function () {
    if (controller) controller.abort();
    conversation += 1;
    history_ = [];
    log.textContent = "";
    usageLine.textContent = "";
    showError("");
  });
})();
