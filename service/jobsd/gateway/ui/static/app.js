// The dashboard's entry point: the token, the header, and the two views (#/ the list, #/jobs/<id> a job).

import { ApiError, api, session } from "./api.js";
import { clear, h } from "./dom.js";
import { JobView } from "./job.js";
import { ListView } from "./list.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
const live = document.getElementById("live");
const forget = document.getElementById("forget");

let view = null;
let workspace = null;

const LIVE_TEXT = {
  open: "live",
  reconnecting: "reconnecting…",
  failed: "not live",
  ended: "finished",
};

const ctx = {
  get workspace() {
    return workspace;
  },
  navigate(hash) {
    if (window.location.hash === hash) route();
    else window.location.hash = hash;
  },
  setLive(state, error) {
    live.dataset.state = state;
    live.textContent = LIVE_TEXT[state] || "";
    live.title = error ? error.message : state === "open" ? "Updates arrive as they happen" : "";
  },
  // Token problems replace the page: an invalid token asks for another, a token without rights says so.
  refused(error) {
    if (!(error instanceof ApiError)) return false;
    if (error.invalidToken) {
      signOut("The server refused this token: invalid authentication token.");
      return true;
    }
    if (error.lacksReadScope) {
      showNoRights(error);
      return true;
    }
    return false;
  },
};

function stopView() {
  if (view) view.destroy();
  view = null;
  live.textContent = "";
  delete live.dataset.state;
}

function signOut(message = "") {
  stopView();
  session.clear();
  workspace = null;
  showHeader();
  showTokenPage(message);
}

function showHeader() {
  clear(who);
  forget.hidden = !workspace;
  if (!workspace) return;
  who.append(
    h("span", { class: "ws" }, workspace.name),
    h("span", { class: "token-name" }, ` · token ${workspace.token_name || "(unnamed)"}`),
    h("span", { class: "scopes" }, ` · ${workspace.scopes.join(", ")}`),
  );
}

function showTokenPage(message = "") {
  document.title = "jobsd · sign in";
  const input = h("input", {
    id: "token-input",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "token-help",
  });
  const error = h("p", { class: "error-box", role: "alert", hidden: !message }, message);
  // The input has no name: even without this script, a submitted form would carry no token in its URL.
  const form = h("form", { class: "card token-form", "aria-labelledby": "token-title" },
    h("h1", { id: "token-title", tabindex: "-1" }, "Open the jobs dashboard"),
    h("label", { for: "token-input" }, "Token"),
    input,
    h("p", { id: "token-help", class: "note" },
      "A jobsd token of your workspace (make run prints the admin token). It stays in this browser tab only "
      + "(sessionStorage) and is sent in the Authorization header, never in a URL or a cookie."),
    error,
    h("button", { type: "submit" }, "Open dashboard"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    session.set(token);
    route();
  });
  clear(main).append(form);
  input.focus();
}

function showNoRights(error) {
  stopView();
  document.title = "jobsd · no access";
  clear(main).append(h("section", { class: "card no-rights", "aria-labelledby": "no-rights-title" },
    h("h1", { id: "no-rights-title", tabindex: "-1" }, "This token cannot read jobs"),
    h("p", { class: "error-box", role: "alert" }, error.message),
    workspace ? h("p", {}, `Token ${workspace.token_name || "(unnamed)"} of workspace ${workspace.name} has the scopes `,
      h("code", {}, workspace.scopes.join(", ") || "none"), ".") : null,
    h("p", {}, "To see jobs, use a token with ADMIN, JOBS:CREATE or DATASOURCES:CREATE (every job of the workspace), "
      + "or DATASOURCES:READ:<name> / PIPES:READ:<name> (the jobs of those data sources or pipes)."),
    h("button", { type: "button", onclick: () => signOut() }, "Use another token")));
  main.querySelector("h1").focus();
}

function showFailure(error) {
  clear(main).append(h("section", { class: "card" },
    h("h1", { tabindex: "-1" }, "The server cannot be reached"),
    h("p", { class: "error-box", role: "alert" }, error.message),
    h("button", { type: "button", onclick: () => route() }, "Try again")));
}

async function route() {
  stopView();
  if (!session.token) {
    showHeader();
    showTokenPage();
    return;
  }
  if (!workspace) {
    try {
      workspace = await api("/v0/workspace");
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) signOut(`The server refused this token: ${error.message}.`);
      else showFailure(error);
      return;
    }
    showHeader();
  }
  const hash = window.location.hash.startsWith("#/") ? window.location.hash.slice(1) : "/";
  const [path, query = ""] = hash.split("?");
  const job = path.match(/^\/jobs\/([^/]+)$/);
  document.title = "jobsd · jobs";
  view = job ? new JobView(main, decodeURIComponent(job[1]), ctx) : new ListView(main, new URLSearchParams(query), ctx);
}

document.getElementById("skip").addEventListener("click", (event) => {
  // A plain #main link would change the route.
  event.preventDefault();
  main.focus();
});
forget.addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => route());
route();
