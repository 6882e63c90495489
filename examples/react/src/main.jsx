import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import init from "dovecote";
import { App } from "./App.jsx";

// The page's query sets who signs in and where the server is:
// ?user=alice&server=http://127.0.0.1:8080 (npm run example:react prints a link).
const params = new URLSearchParams(location.search);
const settings = {
  user: params.get("user") ?? "",
  serverUrl: params.get("server") ?? import.meta.env.VITE_DOVECOTE_SERVER ?? "",
  pageSize: Number(params.get("limit") ?? 20),
};

await init(); // Vite serves or bundles dovecote_bg.wasm next to the glue
createRoot(document.getElementById("root")).render(
  <StrictMode>
    <App {...settings} />
  </StrictMode>,
);
