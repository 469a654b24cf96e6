// Live refresh without reloading: every few seconds, fetch this page again and swap in its
// <main>. Without JavaScript a <noscript> meta refresh reloads the page instead.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || main.dataset.refresh !== "true") { return; }
  var seconds = Number(main.dataset.interval) || 3;
  setInterval(function () {
    if (document.hidden) { return; }
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        // Signed out (session expired, token revoked): show where the server sent us.
        if (response.redirected) { location.assign(response.url); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (!html) { return; }
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        if (next) { main.innerHTML = next.innerHTML; }
      })
      .catch(function () { /* keep the last page; the next tick tries again */ });
  }, seconds * 1000);
})();
