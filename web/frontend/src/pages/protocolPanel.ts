/**
 * The protocol catalogue (by category, with search) and the launch form of the chosen
 * protocol: input pickers, the generated parameter form, a label; the server validates as the
 * user types (POST .../runs/validate) and messages appear under the fields before launch.
 */

import { ApiError, errorMessage, post } from "../api";
import { h, replaceChildren } from "../dom";
import { renderInputPickers } from "../inputPickers";
import { renderParamForm } from "../paramForm";
import { fieldsFromSchema, sortProblems } from "../schemaForm";
import type { ProtocolInfo, RunDetails, RunSummary, ValidationResult } from "../types";

const VALIDATE_DELAY_MS = 350;

/** Protocols matching a search text (id, name, category, help), grouped by category. */
export function filterCatalogue(protocols: ProtocolInfo[], query: string): Map<string, ProtocolInfo[]> {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  const out = new Map<string, ProtocolInfo[]>();
  const sorted = [...protocols].sort((a, b) => a.category.localeCompare(b.category) || a.name.localeCompare(b.name));
  for (const p of sorted) {
    const text = `${p.id} ${p.name} ${p.category} ${p.help}`.toLowerCase();
    if (!words.every((w) => text.includes(w))) continue;
    const list = out.get(p.category) ?? [];
    list.push(p);
    out.set(p.category, list);
  }
  return out;
}

export interface ProtocolPanel {
  catalogue: HTMLElement;
  form: HTMLElement;
  /** the runs changed (new outputs): later forms offer them */
  setRuns(runs: RunSummary[]): void;
}

export function renderProtocolPanel(
  projectId: number,
  protocols: ProtocolInfo[],
  initialRuns: RunSummary[],
  created: (run: RunDetails) => void,
): ProtocolPanel {
  let runs = initialRuns;
  let chosen: string | null = null;
  let refreshInputs: (() => void) | null = null;
  const byId = new Map(protocols.map((p) => [p.id, p]));
  const search = h("input", { type: "search", id: "protocol-search", placeholder: "search protocols", "aria-label": "search protocols" });
  const list = h("div", { class: "catalogue-list" });
  const form = h("section", { class: "protocol-form card", id: "protocol-form" }, h("p", { class: "note" }, "Choose a protocol from the catalogue."));

  const showList = (): void => {
    const groups = filterCatalogue(protocols, search.value);
    replaceChildren(
      list,
      groups.size === 0 ? h("p", { class: "note" }, "No protocol matches.") : null,
      [...groups.entries()].map(([category, items]) =>
        h(
          "div",
          { class: "category", "data-category": category },
          h("h3", {}, category),
          h(
            "ul",
            {},
            items.map((p) =>
              h(
                "li",
                { class: p.id === chosen ? "chosen" : null },
                h("button", { type: "button", class: "link-button", "data-protocol": p.id, onclick: () => openForm(p) }, p.name),
                h("div", { class: "help" }, p.help),
              ),
            ),
          ),
        ),
      ),
    );
  };

  const openForm = (protocol: ProtocolInfo): void => {
    chosen = protocol.id;
    for (const li of list.querySelectorAll("li")) {
      li.classList.toggle("chosen", li.querySelector("button")?.getAttribute("data-protocol") === protocol.id);
    }
    const fields = fieldsFromSchema(protocol.params_schema);
    const params = renderParamForm(fields);
    let inputs = renderInputPickers(protocol.inputs, runs, byId);
    const inputsBox = h("div", { class: "inputs-box" }, Object.keys(protocol.inputs).length ? inputs.element : null);
    const label = h("input", { id: "run-label", name: "run-label", maxlength: 256, placeholder: "optional" });
    const problems = h("ul", { class: "problems", role: "alert", id: "form-problems" });
    const status = h("div", { class: "form-status", id: "form-status", "aria-live": "polite" });
    const launch = h("button", { type: "submit", class: "primary", id: "launch-run" }, "Launch");
    let timer: number | undefined;
    let generation = 0;

    const body = (): { ok: boolean; payload: Record<string, unknown>; pending: boolean } => {
      const p = params.read();
      const i = inputs.read();
      const ok = Object.keys(p.errors).length === 0 && Object.keys(i.errors).length === 0;
      launch.textContent = i.pending ? "Save as draft" : "Launch";
      return {
        ok,
        pending: i.pending,
        payload: { protocol: protocol.id, params: p.params, inputs: i.inputs, label: label.value.trim() },
      };
    };

    const showProblems = (messages: string[]): void => {
      const sorted = sortProblems(messages, fields.map((f) => f.name), inputs.names);
      params.showErrors(sorted.fields);
      inputs.showErrors(sorted.inputs);
      replaceChildren(problems, sorted.general.map((m) => h("li", {}, m)));
    };

    const validate = async (): Promise<boolean> => {
      const mine = ++generation;
      const { ok, payload, pending } = body();
      replaceChildren(problems);
      if (!ok) {
        status.textContent = "Fix the marked fields.";
        return false;
      }
      if (pending) {
        status.textContent = "Some inputs are not produced yet: the run will be saved as a draft.";
        return true;
      }
      try {
        const result = await post<ValidationResult>(`/api/projects/${projectId}/runs/validate`, payload);
        if (mine !== generation) return result.valid;
        showProblems(result.problems);
        status.textContent = result.valid ? "Ready to launch." : "The server found problems.";
        return result.valid;
      } catch (exc) {
        status.textContent = errorMessage(exc);
        return false;
      }
    };
    const scheduleValidate = (): void => {
      window.clearTimeout(timer);
      timer = window.setTimeout(() => void validate(), VALIDATE_DELAY_MS);
    };
    params.onChange(scheduleValidate);
    inputs.onChange(scheduleValidate);
    refreshInputs = () => {
      if (Object.keys(protocol.inputs).length === 0) return;
      const picked: Record<string, string[]> = {};
      for (const select of inputsBox.querySelectorAll("select")) {
        const name = select.getAttribute("data-input") ?? "";
        picked[name] = [...select.options].filter((o) => o.selected && o.value !== "").map((o) => o.value);
      }
      inputs = renderInputPickers(protocol.inputs, runs, byId, picked);
      inputs.onChange(scheduleValidate);
      replaceChildren(inputsBox, inputs.element);
    };

    const element = h(
      "form",
      { novalidate: true, "data-protocol": protocol.id },
      h("h2", {}, protocol.name, " ", h("small", {}, `${protocol.id} v${protocol.version}`)),
      h("p", { class: "help" }, protocol.help),
      inputsBox,
      params.element,
      h("div", { class: "field" }, h("label", { for: label.id }, "Label"), label),
      problems,
      h("div", { class: "actions" }, launch, status),
    );
    element.addEventListener("submit", (event) => {
      event.preventDefault();
      window.clearTimeout(timer);
      const { ok, payload, pending } = body();
      if (!ok) {
        status.textContent = "Fix the marked fields.";
        return;
      }
      launch.disabled = true;
      status.textContent = pending ? "Saving…" : "Launching…";
      post<RunDetails>(`/api/projects/${projectId}/runs`, { ...payload, launch: !pending, draft: pending })
        .then((run) => {
          status.textContent = pending ? `Saved run #${run.id} as a draft.` : `Launched run #${run.id}.`;
          created(run);
        })
        .catch((exc: unknown) => {
          if (exc instanceof ApiError && exc.problems.length) showProblems(exc.problems);
          status.textContent = errorMessage(exc);
        })
        .finally(() => {
          launch.disabled = false;
        });
    });
    replaceChildren(form, element);
    void validate();
  };

  search.addEventListener("input", showList);
  showList();
  return {
    catalogue: h("section", { class: "catalogue card", id: "catalogue" }, h("h2", {}, "Protocols"), search, list),
    form,
    setRuns(next: RunSummary[]) {
      runs = next;
      refreshInputs?.(); // the open form offers outputs registered since it opened
    },
  };
}
