/** The project list, and a form that creates a project and opens it. */

import { errorMessage, get, post } from "../api";
import { formatTime, h } from "../dom";
import { navigate } from "../nav";
import type { ProjectRecord } from "../types";

export async function renderProjects(outlet: HTMLElement): Promise<void> {
  const name = h("input", { id: "new-project-name", name: "name", placeholder: "project name", maxlength: 256, required: true });
  const error = h("div", { class: "form-error", role: "alert" });
  const create = h(
    "form",
    { class: "inline-form", id: "create-project" },
    name,
    h("button", { type: "submit", class: "primary" }, "Create project"),
    error,
  );
  create.addEventListener("submit", (event) => {
    event.preventDefault();
    error.textContent = "";
    if (!name.value.trim()) {
      error.textContent = "Give the project a name.";
      return;
    }
    post<ProjectRecord>("/api/projects", { name: name.value.trim() })
      .then((p) => navigate(`/projects/${p.id}`))
      .catch((exc: unknown) => {
        error.textContent = errorMessage(exc);
      });
  });
  const list = h("div", { class: "project-list" }, h("p", { class: "note" }, "Loading…"));
  outlet.append(h("h1", {}, "Projects"), create, list);
  try {
    const projects = await get<ProjectRecord[]>("/api/projects");
    list.replaceChildren(
      projects.length === 0
        ? h("p", { class: "note" }, "No projects yet: create one above.")
        : h(
            "table",
            { class: "table" },
            h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Owner"), h("th", {}, "Access"), h("th", {}, "Created"))),
            h(
              "tbody",
              {},
              projects.map((p) =>
                h(
                  "tr",
                  { "data-project": p.id },
                  h("td", {}, h("a", { href: `/projects/${p.id}` }, p.name)),
                  h("td", {}, p.owner ?? ""),
                  h("td", {}, p.access),
                  h("td", {}, formatTime(p.created_at)),
                ),
              ),
            ),
          ),
    );
  } catch (exc) {
    list.replaceChildren(h("p", { class: "form-error" }, errorMessage(exc)));
  }
}
