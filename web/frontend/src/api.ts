/**
 * The REST client. Cookies carry the session; every state-changing request sends the CSRF
 * token (from the readable `cryostack_csrf` cookie) in `X-CSRF-Token`. Errors become
 * `ApiError` with the server's `detail`, `problems` and, for 429, `retryAfterS`.
 */

export const CSRF_COOKIE = "cryostack_csrf";
export const CSRF_HEADER = "X-CSRF-Token";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
    readonly problems: string[] = [],
    readonly retryAfterS: number | null = null,
  ) {
    super(detail);
    this.name = "ApiError";
  }
}

/** Called when the session is gone (401 outside sign-in); the app sends the user to /login. */
let onUnauthorized: (() => void) | null = null;

export function setUnauthorizedHandler(handler: (() => void) | null): void {
  onUnauthorized = handler;
}

export function readCookie(name: string, cookies: string = document.cookie): string | null {
  for (const part of cookies.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

function detailText(detail: unknown, status: number): string {
  if (typeof detail === "string") return detail;
  if (detail === undefined || detail === null) return `request failed (HTTP ${status})`;
  return JSON.stringify(detail);
}

async function errorOf(response: Response): Promise<ApiError> {
  let body: { detail?: unknown; problems?: unknown } = {};
  try {
    body = (await response.json()) as typeof body;
  } catch {
    // not JSON (a proxy's error page): keep the status only
  }
  const problems = Array.isArray(body.problems) ? body.problems.map(String) : [];
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(
    response.status,
    detailText(body.detail, response.status),
    problems,
    Number.isFinite(retry) && retry > 0 ? retry : null,
  );
}

/** A JSON request to the API; resolves to the parsed body. */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") {
    const csrf = readCookie(CSRF_COOKIE);
    if (csrf) headers[CSRF_HEADER] = csrf;
  }
  const init: RequestInit = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, `the server cannot be reached (${String(exc)})`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.status === 401 && path !== "/api/auth/login" && onUnauthorized) onUnauthorized();
    throw error;
  }
  return (await response.json()) as T;
}

export const get = <T>(path: string): Promise<T> => api<T>("GET", path);
export const post = <T>(path: string, body?: unknown): Promise<T> => api<T>("POST", path, body);
export const del = <T>(path: string): Promise<T> => api<T>("DELETE", path);

/** A message for the user from any error. */
export function errorMessage(exc: unknown): string {
  if (exc instanceof ApiError) {
    return exc.problems.length ? `${exc.detail}: ${exc.problems.join("; ")}` : exc.detail;
  }
  return exc instanceof Error ? exc.message : String(exc);
}
