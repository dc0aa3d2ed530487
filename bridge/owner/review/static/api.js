// The review app's JSON API (docs/review.md §3). Same origin: the session cookie rides along,
// and a POST carries our Origin, which the server checks. Errors become ApiError with the
// server's stable `kind` and its sentence for people.

export class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const kind = (body && body.kind) || "http";
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, kind, message);
  }
  return body;
}

async function request(path, init) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...init });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "app-offline", "the review app does not answer (was it stopped?)");
  }
  return answer(response);
}

export const getJSON = (path, signal) =>
  request(path, { headers: { Accept: "application/json" }, signal });

export const postJSON = (path, data = {}) =>
  request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(data),
  });

/** /api/events?… from the filters and a cursor. */
export function eventsPath(filters, before, limit) {
  const q = new URLSearchParams();
  for (const c of filters.cameras) q.append("camera", c);
  for (const s of filters.subjects) q.append("subject", s);
  if (filters.from !== null) q.set("from", String(filters.from));
  if (filters.to !== null) q.set("to", String(filters.to));
  if (before) q.set("before", before);
  q.set("limit", String(limit));
  return `/api/events?${q}`;
}

export const eventPath = (id, what) => `/api/events/${encodeURIComponent(id)}/${what}`;

export const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
