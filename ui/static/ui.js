// Berth's pages work without this file; it adds copy buttons, a platform switch that needs no
// "Show" click, and "select all" for deleting tags. Loaded as a static file: the
// Content-Security-Policy allows no inline script.
"use strict";
document.documentElement.classList.add("js");

function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text);
  }
  // Plain-HTTP pages on other hosts have no async clipboard: copy through a selection.
  return new Promise(function (resolve, reject) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    if (ok) { resolve(); } else { reject(new Error("copy refused")); }
  });
}

document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button) { return; }
  event.preventDefault();
  var text = button.getAttribute("data-copy");
  var source = button.getAttribute("data-copy-from");
  if (source) { text = document.getElementById(source).textContent; }
  var label = button.textContent;
  copyText(text).then(function () {
    button.classList.add("copied");
    button.textContent = "Copied";
    button.setAttribute("data-copied", text);
  }, function () {
    button.textContent = "Select and copy";
  }).then(function () {
    setTimeout(function () { button.textContent = label; button.classList.remove("copied"); }, 1500);
  });
});

document.addEventListener("DOMContentLoaded", function () {
  var platform = document.getElementById("platform");
  if (platform) {
    platform.addEventListener("change", function () { platform.form.submit(); });
  }
  var all = document.querySelector("input.select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("#tags input[name=tag]").forEach(function (box) { box.checked = all.checked; });
    });
  }
});
