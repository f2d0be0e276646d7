/** The sign-in page: POST /api/auth/login, errors shown inline, 429 with its waiting time. */

import { ApiError, errorMessage, post } from "../api";
import { h } from "../dom";
import type { User } from "../types";

export function loginMessage(exc: unknown): string {
  if (exc instanceof ApiError && exc.status === 429) {
    const wait = exc.retryAfterS ? ` Try again in ${exc.retryAfterS} s.` : "";
    return `Too many failed sign-ins.${wait}`;
  }
  if (exc instanceof ApiError && exc.status === 401) return "Wrong user name or password.";
  if (exc instanceof ApiError && exc.status === 422) return "Enter a user name and a password.";
  return errorMessage(exc);
}

export function renderLogin(outlet: HTMLElement, signedIn: (user: User) => void): void {
  const username = h("input", { id: "login-username", name: "username", autocomplete: "username", required: true, autofocus: true });
  const password = h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const error = h("div", { class: "form-error", role: "alert", id: "login-error" });
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "login card", novalidate: true },
    h("h1", {}, "Sign in to cryostack"),
    h("label", { for: username.id }, "User name"),
    username,
    h("label", { for: password.id }, "Password"),
    password,
    error,
    button,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    error.textContent = "";
    if (!username.value || !password.value) {
      error.textContent = "Enter a user name and a password.";
      return;
    }
    button.disabled = true;
    post<{ user: User; csrf_token: string }>("/api/auth/login", {
      username: username.value,
      password: password.value,
    })
      .then((r) => signedIn(r.user))
      .catch((exc: unknown) => {
        error.textContent = loginMessage(exc);
        password.value = "";
        password.focus();
      })
      .finally(() => {
        button.disabled = false;
      });
  });
  outlet.append(form);
}
