// Keeps the demo's app shell (this folder and the SDK) so that the page
// reloads without a network. Network first: a running demo always gets the
// files as they are now, the cache only answers when the server cannot be
// reached. Sync requests (/v1/) never pass through here.
const CACHE = "dovecote-demo-shell";
const SHELL = ["./", "app.js", "style.css", "/pkg/dovecote.js", "/pkg/dovecote_bg.wasm"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== location.origin || url.pathname.startsWith("/v1/")) return;
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          event.waitUntil(caches.open(CACHE).then((cache) => cache.put(event.request, copy)));
        }
        return response;
      })
      .catch(async () => (await caches.match(event.request, { ignoreSearch: true })) ?? Response.error()),
  );
});
