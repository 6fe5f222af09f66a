// The review page's only script: the Forget dialog, its "Forget N events" count, and the hold
// countdowns. Everything else is plain HTML forms posted to the server.
"use strict";
(function () {
  var dialog = document.getElementById("forget-dialog");
  var opener = document.getElementById("forget-open");
  var confirmBtn = document.getElementById("forget-confirm");
  var cancel = document.getElementById("forget-cancel");
  var selectedN = document.getElementById("selected-n");

  function selectedCount() {
    return document.querySelectorAll('input[name="seq"][form="forget-form"]:checked').length;
  }

  function update() {
    var n = selectedCount();
    if (selectedN) selectedN.textContent = String(n);
    var scope = document.querySelector('input[name="scope"]:checked');
    if (!scope || !confirmBtn) return;
    var count = scope.value === "selected" ? n : parseInt(scope.getAttribute("data-count") || "0", 10);
    confirmBtn.textContent = "Forget " + count + " events";
    confirmBtn.disabled = count === 0;
  }

  if (opener && dialog) {
    opener.addEventListener("click", function () {
      if (selectedCount() > 0) {
        var sel = document.getElementById("scope-selected");
        if (sel) sel.checked = true;
      }
      update();
      dialog.showModal();
    });
  }
  if (cancel && dialog) cancel.addEventListener("click", function () { dialog.close(); });
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t && (t.name === "scope" || t.name === "seq")) update();
  });
  update();

  // Hold countdowns: "in 4 min 09 s", ticking each second until the bundle may leave.
  var clocks = document.querySelectorAll(".countdown[data-leaves]");
  function fmt(s) {
    s = Math.max(0, Math.floor(s));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    function two(x) { return (x < 10 ? "0" : "") + x; }
    if (h) return h + " h " + two(m) + " min";
    if (m) return m + " min " + two(r) + " s";
    return r + " s";
  }
  function tick() {
    var now = Date.now() / 1000;
    for (var i = 0; i < clocks.length; i++) {
      var left = parseInt(clocks[i].getAttribute("data-leaves"), 10) - now;
      clocks[i].textContent = left > 0 ? "in " + fmt(left) : "now";
    }
  }
  if (clocks.length) { tick(); setInterval(tick, 1000); }
})();
