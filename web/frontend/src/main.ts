/** The entry point: the header, the session check and the routes. */

import "./style.css";
import { ApiError, errorMessage, get, post, setUnauthorizedHandler } from "./api";
import { h, replaceChildren } from "./dom";
import { navigate, setNavigator } from "./nav";
import { renderLogin } from "./pages/login";
import { renderProject } from "./pages/project";
import { renderProjects } from "./pages/projects";
import { renderRun } from "./pages/run";
import { Router } from "./router";
import type { User } from "./types";

let user: User | null = null;
const userBox = h("span", { class: "user", id: "current-user" });
const outlet = h("main", { id: "outlet" });

function showUser(): void {
  if (user === null) {
    replaceChildren(userBox);
    return;
  }
  const signOut = h("button", { type: "button", class: "link-button", id: "sign-out" }, "Sign out");
  signOut.addEventListener("click", () => {
    post("/api/auth/logout")
      .catch(() => undefined)
      .finally(() => {
        user = null;
        showUser();
        navigate("/login");
      });
  });
  replaceChildren(userBox, `${user.username} (${user.role})`, " ", signOut);
}

/** Pages other than /login need a session: without one, go to /login?next=here. */
function signedIn<P extends unknown[], R>(page: (outlet: HTMLElement, ...rest: P) => R) {
  return (el: HTMLElement, ...rest: P): R | void => {
    if (user === null) {
      navigate(`/login?next=${encodeURIComponent(location.pathname)}`, true);
      return;
    }
    return page(el, ...rest);
  };
}

function safeNext(): string {
  const next = new URLSearchParams(location.search).get("next") ?? "/";
  return next.startsWith("/") && !next.startsWith("//") ? next : "/";
}

async function boot(): Promise<void> {
  const app = document.getElementById("app") as HTMLElement;
  replaceChildren(app, h("header", { class: "top" }, h("a", { href: "/", class: "brand" }, "cryostack"), userBox), outlet);
  try {
    user = await get<User>("/api/auth/me");
  } catch (exc) {
    if (!(exc instanceof ApiError && exc.status === 401)) {
      outlet.append(h("p", { class: "form-error" }, errorMessage(exc)));
    }
  }
  showUser();
  const router = new Router(outlet, (el) => {
    el.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "/" }, "Back to the projects")));
  });
  setNavigator((path, replace) => router.navigate(path, replace));
  setUnauthorizedHandler(() => {
    if (user !== null) {
      user = null;
      showUser();
      navigate(`/login?next=${encodeURIComponent(location.pathname)}`, true);
    }
  });
  router
    .add("/login", (el) =>
      renderLogin(el, (u) => {
        user = u;
        showUser();
        navigate(safeNext(), true);
      }),
    )
    .add("/", signedIn((el) => renderProjects(el)))
    .add("/projects/:id", signedIn(renderProject))
    .add("/projects/:id/runs/:run", signedIn(renderRun))
    .start();
}

void boot();
