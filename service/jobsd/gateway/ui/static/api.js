// The REST API of this origin. The token lives in sessionStorage (this tab only, gone when it closes) and travels
// only in the Authorization header: never in a URL, a cookie or a log line.

const TOKEN_KEY = "jobsd.token";

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, message, documentation) {
    super(message);
    this.status = status;
    this.documentation = documentation || null;
  }

  // A 403 that is about the token's scopes rather than about one job.
  get lacksReadScope() {
    return this.status === 403 && /lacks the scope to read jobs/.test(this.message);
  }

  get invalidToken() {
    return this.status === 403 && /invalid authentication token/.test(this.message);
  }
}

export function apiUrl(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (key === "token") throw new Error("a token never goes in a URL");
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

export function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${session.token}`, ...extra };
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const message = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
  return new ApiError(response.status, message, body && body.documentation);
}

export async function api(path, { method = "GET", params = {}, signal } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      method,
      headers: authHeaders({ Accept: "application/json" }),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The server cannot be reached");
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export { errorFrom };

// Who may cancel and retry (the scopes the server checks for writes).
export function canWrite(scopes) {
  return scopes.some((s) => s === "ADMIN" || s === "JOBS:CREATE" || s === "DATASOURCES:CREATE");
}
