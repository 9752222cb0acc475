/* medisyn reader study: one reader at a time, answers kept in localStorage, exported as JSON. No feedback. */
(function () {
  "use strict";
  var S = window.MEDISYN_STUDY;
  var app = document.getElementById("app");
  var PREFIX = "medisyn-study/" + S.study_id + "/";
  var ROLES = ["attending / consultant", "fellow", "resident / trainee", "medical student",
               "researcher / non-clinician", "other"];
  var PAIR_TEXT = { none: "Neither", left: "Left", right: "Right", both: "Both" };
  var served = /^https?:$/.test(location.protocol);
  var state = null;      // {reader: {id, years, role}, started, updated, position, answers: [{item, answer, ms, at}]}
  var shownAt = 0;
  var keys = {};         // key -> handler on the current screen

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "text") node.textContent = attrs[name];
      else if (name === "onclick") node.addEventListener("click", attrs[name]);
      else node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function button(text, key, onclick, attrs) {
    var node = el("button", Object.assign({ type: "button", onclick: onclick }, attrs || {}));
    if (key) { node.appendChild(el("kbd", { text: key })); keys[key.toLowerCase()] = onclick; }
    node.appendChild(document.createTextNode(text));
    return node;
  }

  function screen(children) {
    keys = {};
    app.textContent = "";
    children().forEach(function (child) { if (child) app.appendChild(child); });
  }

  // --- storage ---------------------------------------------------------------------------------------------
  function sessions() {
    var found = [];
    for (var i = 0; i < localStorage.length; i++) {
      var name = localStorage.key(i);
      if (name.indexOf(PREFIX) !== 0) continue;
      try { found.push(JSON.parse(localStorage.getItem(name))); } catch (e) { /* not ours */ }
    }
    return found.sort(function (a, b) { return a.updated < b.updated ? 1 : -1; });
  }

  function save() {
    state.updated = new Date().toISOString();
    localStorage.setItem(PREFIX + state.reader.id, JSON.stringify(state));
  }

  function answerOf(id) {
    for (var i = 0; i < state.answers.length; i++) if (state.answers[i].item === id) return state.answers[i];
    return null;
  }

  function record(item, answer) {
    var entry = { item: item.id, answer: answer, ms: Date.now() - shownAt, at: new Date().toISOString() };
    var old = answerOf(item.id);
    if (old) state.answers[state.answers.indexOf(old)] = entry; else state.answers.push(entry);
    state.position += 1;
    save();
    show();
  }

  // --- export ----------------------------------------------------------------------------------------------
  function exported() {
    var order = {};
    S.items.forEach(function (item, i) { order[item.id] = i; });
    var answers = state.answers.slice().sort(function (a, b) { return order[a.item] - order[b.item]; });
    return { format: S.answers_format, version: 1, study_id: S.study_id, title: S.title, reader: state.reader,
             started: state.started, updated: state.updated, complete: answers.length === S.items.length,
             answers: answers, user_agent: navigator.userAgent };
  }

  function download() {
    var blob = new Blob([JSON.stringify(exported(), null, 1)], { type: "application/json" });
    var link = el("a", { href: URL.createObjectURL(blob),
                         download: "answers-" + S.study_id + "-" + state.reader.id.replace(/[^\w.-]+/g, "_") + ".json" });
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  }

  function submit(status) {
    status.textContent = "Sending answers to the study server...";
    fetch("answers", { method: "POST", headers: { "Content-Type": "application/json" },
                       body: JSON.stringify(exported()) })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          status.textContent = response.ok ? "Saved on the study server." :
            "The server did not save them (" + (body.error || response.status) + "): please download the file.";
        });
      })
      .catch(function () { status.textContent = "No study server reached: please download the file."; });
  }

  // --- screens ---------------------------------------------------------------------------------------------
  function progress() {
    var wrap = document.getElementById("progress-wrap");
    wrap.hidden = !state;
    if (!state) return;
    var total = S.items.length, done = state.answers.length;
    document.getElementById("progress-fill").style.width = (100 * done / total) + "%";
    document.getElementById("progress-bar").setAttribute("aria-valuenow", String(done));
    document.getElementById("progress-bar").setAttribute("aria-valuemax", String(total));
    document.getElementById("progress").textContent = done + " / " + total + " answered";
  }

  function showStart(message) {
    state = null;
    progress();
    var error = el("p", { class: "error", id: "start-error", text: message || "" });
    var id = el("input", { id: "reader-id", autocomplete: "off", maxlength: "64", required: "" });
    var years = el("input", { id: "reader-years", type: "number", min: "0", max: "70", step: "1", inputmode: "numeric" });
    var role = el("select", { id: "reader-role" }, [el("option", { value: "", text: "choose..." })].concat(
      ROLES.map(function (r) { return el("option", { value: r, text: r }); })));
    function begin() {
      var name = id.value.trim(), y = Number(years.value);
      if (!name) { error.textContent = "Enter your reader ID."; return; }
      if (years.value === "" || !(y >= 0 && y <= 70)) { error.textContent = "Enter your years of experience (0-70)."; return; }
      if (!role.value) { error.textContent = "Choose your role."; return; }
      var old = localStorage.getItem(PREFIX + name);
      if (old) { resume(JSON.parse(old)); return; }
      state = { reader: { id: name, years: y, role: role.value }, started: new Date().toISOString(),
                updated: null, position: 0, answers: [] };
      save();
      show();
    }
    var saved = sessions();
    screen(function () {
      return [
        el("section", { class: "card" }, [
          el("h2", { text: "Before you start" }),
          el("p", { text: "Some of the images in this study are real and some were made by a computer model. " +
                          instructions() }),
          el("p", { class: "muted", text: "There is no feedback. Keys: 0-3 for pairs, 1-9 and 0 for classes, " +
                                         "Backspace to go back. You can pause and resume on this device." })]),
        el("section", { class: "card" }, [
          el("h2", { text: "Reader" }),
          el("label", { for: "reader-id", text: "Reader ID" }), id,
          el("label", { for: "reader-years", text: "Years of clinical experience" }), years,
          el("label", { for: "reader-role", text: "Role" }), role,
          error,
          el("p", {}, [button("Start", null, begin, { class: "primary", id: "start" })])]),
        saved.length ? el("section", { class: "card" }, [
          el("h2", { text: "Saved on this device" }),
          el("ul", { class: "saved" }, saved.map(function (s) {
            return el("li", {}, [
              button("Resume " + s.reader.id, null, function () { resume(s); }, { "data-resume": s.reader.id }),
              el("span", { class: "muted", text: s.answers.length + " of " + S.items.length + " answered" })]);
          }))]) : null];
    });
    id.focus();
  }

  function count(task) { return S.items.filter(function (i) { return i.task === task; }).length; }

  function instructions() {
    var pairs = count("pair"), singles = count("classify"), parts = [];
    if (pairs) parts.push("You will see " + pairs + " pairs of images: mark which of the two, if any, are synthetic.");
    if (singles) parts.push((pairs ? "Then " : "You will see ") + singles + " single images: choose what each shows.");
    return parts.join(" ");
  }

  function resume(session) {
    state = session;
    state.position = Math.min(state.position || 0, S.items.length);
    show();
  }

  function show() {
    progress();
    if (state.position >= S.items.length) showDone(); else showItem(S.items[state.position]);
  }

  function tools() {
    var status = el("span", { class: "muted", id: "status" });
    return el("div", { class: "tools" }, [
      button("Back", "Backspace", function () { if (state.position > 0) { state.position -= 1; save(); show(); } },
             { id: "back", class: "link" }),
      el("div", { class: "right" }, [
        status,
        served ? button("Send to server", null, function () { submit(status); }, { id: "send", class: "link" }) : null,
        button("Download answers", null, download, { id: "download", class: "link" }),
        button("Pause", null, function () { save(); showStart("Paused. Resume below when you are ready."); },
               { id: "pause", class: "link" })])]);
  }

  function figure(src, caption) {
    return el("figure", {}, [el("img", { src: src, alt: caption ? caption + " image" : "study image",
                                         draggable: "false" }),
                             caption ? el("figcaption", { text: caption }) : null]);
  }

  function showItem(item) {
    var previous = answerOf(item.id);
    screen(function () {
      return [el("section", { class: "card item", "data-item": item.id, "data-task": item.task }, [
        el("p", { class: "question", text: item.task === "pair" ?
          "Which of these images are synthetic?" : "What does this image show?" }),
        el("div", { class: "stage" + (item.task === "pair" ? "" : " single") }, item.task === "pair" ?
          [figure(item.images[0], "Left"), figure(item.images[1], "Right")] : [figure(item.images[0], "")]),
        el("div", { class: "answers" }, choices(item, previous)),
        tools()])];
    });
    shownAt = Date.now();
    var next = S.items[state.position + 1];
    if (next) next.images.forEach(function (src) { new Image().src = src; });
  }

  function choices(item, previous) {
    var buttons;
    if (item.task === "pair") {
      buttons = S.pair_answers.map(function (answer, i) {
        return button(PAIR_TEXT[answer] || answer, String(i), function () { record(item, answer); },
                      { "data-answer": answer });
      });
    } else {
      buttons = S.classes.map(function (c, i) {
        return button(c.text, i < 9 ? String(i + 1) : null, function () { record(item, c.value); },
                      { "data-answer": c.value });
      }).concat([button(S.cannot_tell, "0", function () { record(item, S.cannot_tell); },
                        { "data-answer": S.cannot_tell })]);
    }
    buttons.forEach(function (b) {
      if (previous && b.getAttribute("data-answer") === previous.answer) b.classList.add("chosen");
    });
    return buttons;
  }

  function showDone() {
    var status = el("p", { class: "muted", id: "status" });
    screen(function () {
      return [el("section", { class: "card", id: "done" }, [
        el("h2", { text: "Thank you" }),
        el("p", { text: "You answered " + state.answers.length + " of " + S.items.length + " items. " +
                        "Download your answers and send the file to the study team." }),
        el("p", {}, [button("Download answers", null, download, { class: "primary", id: "download" })]),
        status,
        el("p", {}, [
          button("Review answers", "Backspace", function () { state.position = S.items.length - 1; save(); show(); },
                 { id: "back", class: "link" }),
          button("Next reader", null, function () { showStart(""); }, { id: "next-reader", class: "link" })])])];
    });
    if (served) submit(status);
  }

  document.addEventListener("keydown", function (event) {
    if (event.target && /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName)) {
      if (event.key === "Enter" && document.getElementById("start")) document.getElementById("start").click();
      return;
    }
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    var handler = keys[event.key.toLowerCase()];
    if (handler) { event.preventDefault(); handler(); }
  });

  document.title = S.title;
  document.getElementById("title").textContent = S.title;
  showStart("");
})();
