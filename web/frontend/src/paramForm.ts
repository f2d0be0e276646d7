/**
 * The parameter form as DOM: one fieldset per group, one labelled input per field (number
 * and text inputs, selects for enums, checkboxes for booleans, text areas for lists), with
 * the unit, the help text, the default and range, and an inline error under each field.
 */

import { h, type Child } from "./dom";
import {
  collectParams,
  groupFields,
  initialRaw,
  parseField,
  type Collected,
  type FieldSpec,
  type RawValue,
} from "./schemaForm";

export interface ParamForm {
  element: HTMLElement;
  /** parse every field, showing each field's own error inline */
  read(): Collected;
  /** show messages under fields (from the server's validation) */
  showErrors(errors: Record<string, string[]>): void;
  /** called after any field changes */
  onChange(listener: () => void): void;
}

type Control = HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;

function rangeText(f: FieldSpec): string {
  const low =
    f.minimum !== undefined ? `≥ ${f.minimum}` : f.exclusiveMinimum !== undefined ? `> ${f.exclusiveMinimum}` : "";
  const high =
    f.maximum !== undefined ? `≤ ${f.maximum}` : f.exclusiveMaximum !== undefined ? `< ${f.exclusiveMaximum}` : "";
  return [low, high].filter(Boolean).join(", ");
}

function defaultText(value: unknown): string {
  if (value === null || value === undefined) return "none";
  if (Array.isArray(value)) return value.length ? value.map((v) => JSON.stringify(v)).join(", ") : "none";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function helpText(f: FieldSpec): string {
  const parts: string[] = [];
  if (f.help) parts.push(f.help);
  const range = rangeText(f);
  if (range) parts.push(range);
  if (f.hasDefault && f.kind !== "boolean") {
    parts.push(`default: ${defaultText(f.default)}`);
  }
  if (!f.hasDefault) parts.push("required");
  return parts.join(" · ");
}

function control(f: FieldSpec, raw: RawValue): Control {
  const id = `param-${f.name}`;
  const common = { id, name: f.name, "aria-describedby": `${id}-help` };
  switch (f.kind) {
    case "boolean":
      return h("input", { ...common, type: "checkbox", checked: raw === true });
    case "enum": {
      const select = h(
        "select",
        common,
        f.nullable || !f.hasDefault ? h("option", { value: "" }, f.nullable ? "(none)" : "— choose —") : null,
        (f.options ?? []).map((o) => h("option", { value: String(o) }, String(o))),
      );
      select.value = String(raw);
      return select;
    }
    case "string-list":
    case "json":
      return h("textarea", { ...common, rows: 3, placeholder: f.kind === "string-list" ? "one per line" : "JSON" }, String(raw));
    default: {
      const numeric = f.kind === "integer" || f.kind === "number";
      return h("input", {
        ...common,
        type: "text",
        value: String(raw),
        inputmode: numeric ? (f.kind === "integer" ? "numeric" : "decimal") : null,
        placeholder: f.nullable ? "(none)" : null,
        autocomplete: "off",
      });
    }
  }
}

function rawOf(el: Control): RawValue {
  return el instanceof HTMLInputElement && el.type === "checkbox" ? el.checked : el.value;
}

/** The form for `fields`, filled with `initial` values (else the defaults). */
export function renderParamForm(fields: FieldSpec[], initial: Record<string, unknown> = {}): ParamForm {
  const controls = new Map<string, Control>();
  const errorBoxes = new Map<string, HTMLElement>();
  const listeners: (() => void)[] = [];

  const setError = (name: string, messages: string[]): void => {
    const box = errorBoxes.get(name);
    const el = controls.get(name);
    if (!box || !el) return;
    box.textContent = messages.join("; ");
    el.toggleAttribute("aria-invalid", messages.length > 0);
    box.closest(".field")?.classList.toggle("invalid", messages.length > 0);
  };

  const row = (f: FieldSpec): Child => {
    const el = control(f, initialRaw(f, f.name in initial ? initial[f.name] : f.default));
    controls.set(f.name, el);
    const error = h("div", { class: "field-error", role: "alert", "data-error-for": f.name });
    errorBoxes.set(f.name, error);
    const check = (): void => {
      const parsed = parseField(f, rawOf(el));
      setError(f.name, "error" in parsed ? [parsed.error] : []);
      for (const listener of listeners) listener();
    };
    el.addEventListener("input", check);
    el.addEventListener("change", check);
    const label = h(
      "label",
      { for: el.id },
      f.title,
      f.unit ? h("span", { class: "unit" }, ` (${f.unit})`) : null,
    );
    const help = h("div", { class: "help", id: `${el.id}-help` }, helpText(f));
    return f.kind === "boolean"
      ? h("div", { class: "field checkbox", "data-field": f.name }, el, label, help, error)
      : h("div", { class: "field", "data-field": f.name }, label, el, help, error);
  };

  const element = h(
    "div",
    { class: "param-form" },
    groupFields(fields).map((g) =>
      h("fieldset", { class: "param-group", "data-group": g.name }, h("legend", {}, g.name), g.fields.map(row)),
    ),
  );

  return {
    element,
    read(): Collected {
      const raws: Record<string, RawValue> = {};
      for (const [name, el] of controls) raws[name] = rawOf(el);
      const collected = collectParams(fields, raws);
      for (const f of fields) setError(f.name, collected.errors[f.name] ? [collected.errors[f.name] as string] : []);
      return collected;
    },
    showErrors(errors: Record<string, string[]>): void {
      for (const f of fields) if (errors[f.name]) setError(f.name, errors[f.name] as string[]);
    },
    onChange(listener: () => void): void {
      listeners.push(listener);
    },
  };
}
