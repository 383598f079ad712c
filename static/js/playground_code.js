// The playground's "View code": the current settings (model, system prompt, parameters, the
// conversation so far or the texts to classify) as Python with the openai SDK and as curl, kept in
// step with the form while the panel is open.
(function () {
  "use strict";
  var baseElement = document.getElementById("api-base-url");
  if (!baseElement) return;
  var baseUrl = JSON.parse(baseElement.textContent);
  var KEY_LINE = 'client = OpenAI(base_url=' + JSON.stringify(baseUrl) + ', api_key=os.environ["MODELWORKS_API_KEY"])';

  // JSON strings and numbers are Python literals too; lists get Python's usual ", " spacing.
  function literal(value) {
    if (Array.isArray(value)) return "[" + value.map(literal).join(", ") + "]";
    return JSON.stringify(value);
  }

  function shellQuoted(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function curl(path, body) {
    return "curl " + baseUrl + path + " \\\n" +
      '  -H "Authorization: Bearer $MODELWORKS_API_KEY" \\\n' +
      '  -H "Content-Type: application/json" \\\n' +
      "  -d " + shellQuoted(JSON.stringify(body, null, 2));
  }

  function value(id) {
    var element = document.getElementById(id);
    return element ? element.value.trim() : "";
  }

  // --- Chat -------------------------------------------------------------------------------------
  function chatBody() {
    var body = { model: value("chat-model"), messages: [] };
    var system = value("chat-system");
    if (system) body.messages.push({ role: "system", content: system });
    // The conversation as the page shows it (answers that failed are not part of it), then the
    // message being typed, or a greeting when there is neither.
    document.querySelectorAll("#chat-log .chat-message:not(.failed):not(.streaming)").forEach(function (item) {
      var role = item.classList.contains("user") ? "user" : "assistant";
      body.messages.push({ role: role, content: item.querySelector(".chat-text").textContent });
    });
    var typed = value("chat-input");
    if (typed || body.messages.every(function (m) { return m.role !== "user"; })) {
      body.messages.push({ role: "user", content: typed || "Hello!" });
    }
    ["temperature", "top_p", "max_tokens", "seed"].forEach(function (name) {
      var raw = value("chat-" + name);
      if (raw === "") return;
      var number = Number(raw);
      body[name] = isNaN(number) ? raw : number;
    });
    var stops = (document.getElementById("chat-stop-sequences") || { value: "" }).value.split("\n")
      .filter(function (s) { return s !== ""; })
      .map(function (s) { return s.replace(/\\n/g, "\n").replace(/\\t/g, "\t"); });
    if (stops.length) body.stop = stops;
    return body;
  }

  function chatPython(body) {
    var lines = ["import os", "", "from openai import OpenAI", "", KEY_LINE,
      "completion = client.chat.completions.create(", "    model=" + literal(body.model) + ",", "    messages=["];
    body.messages.forEach(function (m) {
      lines.push("        {\"role\": " + literal(m.role) + ", \"content\": " + literal(m.content) + "},");
    });
    lines.push("    ],");
    ["temperature", "top_p", "max_tokens", "seed", "stop"].forEach(function (name) {
      if (name in body) lines.push("    " + name + "=" + literal(body[name]) + ",");
    });
    lines.push(")", "print(completion.choices[0].message.content)");
    return lines.join("\n");
  }

  // --- Classify ---------------------------------------------------------------------------------
  function classifyBody() {
    var texts = value("classify-input").split("\n")
      .map(function (line) { return line.trim(); })
      .filter(function (line) { return line !== ""; });
    return { model: value("classify-model"), input: texts.length ? texts : ["Your text here."] };
  }

  function classifyPython(body) {
    return ["import os", "", "from openai import OpenAI", "", KEY_LINE,
      "result = client.post(", '    "/classifications",',
      "    body={\"model\": " + literal(body.model) + ", \"input\": " + literal(body.input) + "},",
      "    cast_to=object,", ")", "print(result)"].join("\n");
  }

  var panels = {
    chat: function () {
      var body = chatBody();
      return { python: chatPython(body), curl: curl("/chat/completions", body) };
    },
    classify: function () {
      var body = classifyBody();
      return { python: classifyPython(body), curl: curl("/classifications", body) };
    },
  };

  function render(name) {
    var panel = document.getElementById(name + "-code");
    if (!panel || panel.hidden) return;
    var code = panels[name]();
    document.getElementById(name + "-code-python").textContent = code.python;
    document.getElementById(name + "-code-curl").textContent = code.curl;
  }

  function renderAll() {
    Object.keys(panels).forEach(render);
  }

  document.querySelectorAll("button.view-code").forEach(function (button) {
    button.addEventListener("click", function () {
      var panel = document.getElementById(button.getAttribute("aria-controls"));
      var opening = panel.hidden;
      panel.hidden = !opening;
      button.setAttribute("aria-expanded", opening ? "true" : "false");
      button.textContent = opening ? "Hide code" : "View code";
      renderAll();
    });
  });
  ["input", "change"].forEach(function (type) {
    document.addEventListener(type, function (event) {
      if (event.target instanceof Element && event.target.closest("#chat-form, #classify-form")) renderAll();
    });
  });
  var log = document.getElementById("chat-log");
  if (log) {
    new MutationObserver(renderAll).observe(log, { subtree: true, childList: true, attributes: true, attributeFilter: ["class"] });
  }
})();
