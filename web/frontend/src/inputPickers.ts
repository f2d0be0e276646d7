/**
 * Input pickers of a protocol form: one select per input, offering only run outputs whose
 * type the input accepts (see inputChoices.ts), with inline errors.
 */

import { h } from "./dom";
import { outputChoices, type OutputChoice } from "./inputChoices";
import type { InputSpec, ProtocolInfo, RunSummary } from "./types";

export interface InputPickers {
  element: HTMLElement;
  names: string[];
  /** chosen references per input; `pending`: some chosen output is not produced yet */
  read(): { inputs: Record<string, string[]>; pending: boolean; errors: Record<string, string> };
  showErrors(errors: Record<string, string[]>): void;
  onChange(listener: () => void): void;
}

export function renderInputPickers(
  specs: Record<string, InputSpec>,
  runs: RunSummary[],
  protocols: Map<string, ProtocolInfo>,
  initial: Record<string, string[]> = {},
): InputPickers {
  const selects = new Map<string, HTMLSelectElement>();
  const choicesOf = new Map<string, OutputChoice[]>();
  const errorBoxes = new Map<string, HTMLElement>();
  const listeners: (() => void)[] = [];

  const setError = (name: string, messages: string[]): void => {
    const box = errorBoxes.get(name);
    if (!box) return;
    box.textContent = messages.join("; ");
    box.closest(".field")?.classList.toggle("invalid", messages.length > 0);
  };

  const rows = Object.entries(specs).map(([name, spec]) => {
    const choices = outputChoices(spec, runs, protocols);
    choicesOf.set(name, choices);
    const id = `input-${name}`;
    const select = h(
      "select",
      { id, name: id, multiple: spec.multiple, "data-input": name },
      spec.multiple ? null : h("option", { value: "" }, spec.optional ? "(none)" : "— choose an output —"),
      choices.map((c) => h("option", { value: c.ref, "data-type": c.type }, c.label)),
    );
    const chosen = new Set(initial[name] ?? []);
    for (const option of select.options) option.selected = chosen.has(option.value);
    selects.set(name, select);
    const error = h("div", { class: "field-error", role: "alert", "data-error-for": `input-${name}` });
    errorBoxes.set(name, error);
    select.addEventListener("change", () => {
      setError(name, []);
      for (const listener of listeners) listener();
    });
    const types = spec.types.join(" or ");
    const none = choices.length === 0 ? h("div", { class: "note" }, `No ${types} output in this project yet.`) : null;
    return h(
      "div",
      { class: "field", "data-field": `input-${name}` },
      h("label", { for: id }, name, h("span", { class: "unit" }, ` (${types}${spec.multiple ? ", several" : ""})`)),
      select,
      none,
      h("div", { class: "help" }, [spec.help, spec.optional ? "optional" : "required"].filter(Boolean).join(" · ")),
      error,
    );
  });

  return {
    element: h("fieldset", { class: "param-group inputs" }, h("legend", {}, "Inputs"), rows),
    names: [...selects.keys()],
    read() {
      const inputs: Record<string, string[]> = {};
      const errors: Record<string, string> = {};
      let pending = false;
      for (const [name, select] of selects) {
        const refs = [...select.options].filter((o) => o.selected).map((o) => o.value).filter((v) => v !== "");
        const spec = specs[name] as InputSpec;
        if (refs.length === 0 && !spec.optional) errors[name] = `choose a ${spec.types.join(" or ")} output`;
        if (refs.length) inputs[name] = refs;
        pending ||= (choicesOf.get(name) ?? []).some((c) => c.pending && refs.includes(c.ref));
        const error = errors[name];
        setError(name, error ? [error] : []);
      }
      return { inputs, pending, errors };
    },
    showErrors(errors: Record<string, string[]>) {
      for (const name of selects.keys()) {
        const messages = errors[name];
        if (messages) setError(name, messages);
      }
    },
    onChange(listener: () => void) {
      listeners.push(listener);
    },
  };
}
