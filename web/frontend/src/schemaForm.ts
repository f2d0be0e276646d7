/**
 * The model of a protocol's parameter form, generated from its pydantic JSON schema.
 *
 * Pure functions (no DOM): `fieldsFromSchema` turns the schema into field descriptions
 * (kind, group, unit, help, default, bounds, options), `groupFields` orders them into the
 * form's groups, `parseField` turns what a user typed into a JSON value or a message, and
 * `collectParams` does it for a whole form. `paramForm.ts` renders these into inputs.
 */

import type { JsonSchema } from "./types";

export type FieldKind = "integer" | "number" | "boolean" | "string" | "enum" | "string-list" | "json";

export interface FieldSpec {
  name: string;
  title: string;
  kind: FieldKind;
  group: string;
  unit?: string;
  help?: string;
  /** the schema's default (absent: the parameter is required) */
  hasDefault: boolean;
  default?: unknown;
  required: boolean;
  /** `None` is allowed (pydantic `X | None`): an empty input means null */
  nullable: boolean;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  /** choices of an enum (a select) */
  options?: unknown[];
}

export interface FieldGroup {
  name: string;
  fields: FieldSpec[];
}

/** What a user entered in one input: text, or a checkbox's state. */
export type RawValue = string | boolean;

/** A parsed input: `value` to send, `omit` to let the server use the default, or `error`. */
export type Parsed = { value: unknown } | { omit: true } | { error: string };

export const DEFAULT_GROUP = "General";

function resolveRef(ref: string, root: JsonSchema): JsonSchema {
  const prefix = "#/$defs/";
  const found = ref.startsWith(prefix) ? root.$defs?.[ref.slice(prefix.length)] : undefined;
  if (found === undefined) throw new Error(`the parameter schema refers to ${ref}, which it lacks`);
  return found;
}

/** The schema node with `$ref` / single-entry `allOf` replaced by what they point to. */
function deref(node: JsonSchema, root: JsonSchema): JsonSchema {
  let out = node;
  for (let depth = 0; depth < 16; depth++) {
    if (out.$ref !== undefined) {
      const { $ref, ...rest } = out;
      out = { ...resolveRef($ref, root), ...rest };
    } else if (out.allOf !== undefined && out.allOf.length === 1) {
      const { allOf, ...rest } = out;
      out = { ...deref(allOf[0] as JsonSchema, root), ...rest };
    } else {
      return out;
    }
  }
  throw new Error("the parameter schema's references nest too deeply");
}

function isNullType(node: JsonSchema): boolean {
  return node.type === "null";
}

/** Split `anyOf: [X, {type: null}]` into X and nullability. */
function unwrapNullable(node: JsonSchema, root: JsonSchema): { inner: JsonSchema; nullable: boolean } {
  if (node.anyOf !== undefined) {
    const branches = node.anyOf.map((b) => deref(b, root));
    const nonNull = branches.filter((b) => !isNullType(b));
    const nullable = nonNull.length < branches.length;
    if (nonNull.length === 1) {
      const { anyOf: _drop, ...outer } = node;
      return { inner: { ...(nonNull[0] as JsonSchema), ...outer }, nullable };
    }
    return { inner: node, nullable };
  }
  if (Array.isArray(node.type)) {
    const types = node.type.filter((t) => t !== "null");
    const nullable = types.length < node.type.length;
    return { inner: { ...node, type: types.length === 1 ? (types[0] as string) : types }, nullable };
  }
  return { inner: node, nullable: false };
}

function kindOf(node: JsonSchema): FieldKind {
  if (node.enum !== undefined) return "enum";
  if (node.const !== undefined) return "enum";
  switch (node.type) {
    case "integer":
      return "integer";
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "string":
      return "string";
    case "array":
      return node.items?.type === "string" ? "string-list" : "json";
    default:
      return "json";
  }
}

/** A readable title: the schema's, else the name with underscores as spaces. */
function titleOf(name: string, node: JsonSchema): string {
  return node.title ?? name.replace(/_/g, " ");
}

/** One field per property of an object schema, in the schema's order. */
export function fieldsFromSchema(schema: JsonSchema): FieldSpec[] {
  const root = deref(schema, schema);
  const required = new Set(root.required ?? []);
  return Object.entries(root.properties ?? {}).map(([name, raw]) => {
    const outer = deref(raw, schema);
    const { inner, nullable } = unwrapNullable(outer, schema);
    const node = deref(inner, schema);
    const kind = kindOf(node);
    const field: FieldSpec = {
      name,
      title: titleOf(name, outer),
      kind,
      group: outer.group ?? node.group ?? DEFAULT_GROUP,
      hasDefault: "default" in outer,
      required: required.has(name),
      nullable,
    };
    if ("default" in outer) field.default = outer.default;
    const unit = outer.unit ?? node.unit;
    if (unit !== undefined) field.unit = unit;
    const help = outer.description ?? node.description;
    if (help !== undefined) field.help = help;
    for (const key of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] as const) {
      const bound = node[key];
      if (typeof bound === "number") field[key] = bound;
    }
    if (typeof node.minLength === "number") field.minLength = node.minLength;
    if (typeof node.maxLength === "number") field.maxLength = node.maxLength;
    if (kind === "enum") field.options = node.enum ?? [node.const];
    return field;
  });
}

/** Fields by group: "General" first, then the other groups in order of first appearance. */
export function groupFields(fields: FieldSpec[]): FieldGroup[] {
  const groups = new Map<string, FieldSpec[]>();
  groups.set(DEFAULT_GROUP, []);
  for (const field of fields) {
    const list = groups.get(field.group) ?? [];
    list.push(field);
    groups.set(field.group, list);
  }
  return [...groups.entries()]
    .filter(([, list]) => list.length > 0)
    .map(([name, list]) => ({ name, fields: list }));
}

/** The text an input starts with: the default (empty for null or no default). */
export function initialRaw(field: FieldSpec, value: unknown = field.default): RawValue {
  if (field.kind === "boolean") return value === true;
  if (value === undefined || value === null) return "";
  if (field.kind === "string-list" && Array.isArray(value)) return value.map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join("\n");
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

/** Bound violations of a number as a message, or null. */
export function checkBounds(field: FieldSpec, value: number): string | null {
  if (field.minimum !== undefined && value < field.minimum) return `must be ≥ ${field.minimum}`;
  if (field.maximum !== undefined && value > field.maximum) return `must be ≤ ${field.maximum}`;
  if (field.exclusiveMinimum !== undefined && value <= field.exclusiveMinimum)
    return `must be > ${field.exclusiveMinimum}`;
  if (field.exclusiveMaximum !== undefined && value >= field.exclusiveMaximum)
    return `must be < ${field.exclusiveMaximum}`;
  return null;
}

function parseEmpty(field: FieldSpec): Parsed {
  if (field.nullable) return { value: null };
  if (field.hasDefault) return { omit: true };
  return { error: "a value is required" };
}

function parseNumber(field: FieldSpec, text: string): Parsed {
  if (field.kind === "integer" && !/^[+-]?\d+$/.test(text)) return { error: "must be a whole number" };
  const value = Number(text);
  if (text === "" || !Number.isFinite(value)) return { error: "must be a number" };
  const bad = checkBounds(field, value);
  return bad === null ? { value } : { error: bad };
}

function parseString(field: FieldSpec, text: string): Parsed {
  if (field.minLength !== undefined && text.length < field.minLength)
    return { error: `needs at least ${field.minLength} character${field.minLength === 1 ? "" : "s"}` };
  if (field.maxLength !== undefined && text.length > field.maxLength)
    return { error: `takes at most ${field.maxLength} characters` };
  return { value: text };
}

/** What a user entered, as the JSON value to send (or a message saying what is wrong). */
export function parseField(field: FieldSpec, raw: RawValue): Parsed {
  if (field.kind === "boolean") return { value: raw === true };
  const text = typeof raw === "string" ? raw : String(raw);
  const trimmed = text.trim();
  switch (field.kind) {
    case "integer":
    case "number":
      return trimmed === "" ? parseEmpty(field) : parseNumber(field, trimmed);
    case "enum": {
      if (trimmed === "") return parseEmpty(field);
      const match = (field.options ?? []).find((o) => String(o) === text);
      return match === undefined ? { error: `must be one of ${(field.options ?? []).join(", ")}` } : { value: match };
    }
    case "string-list":
      return { value: text.split("\n").map((s) => s.trim()).filter((s) => s !== "") };
    case "json":
      if (trimmed === "") return parseEmpty(field);
      try {
        return { value: JSON.parse(trimmed) as unknown };
      } catch {
        return { error: "must be valid JSON" };
      }
    case "string":
      return text === "" ? parseEmpty(field) : parseString(field, text);
  }
}

export interface Collected {
  params: Record<string, unknown>;
  errors: Record<string, string>;
}

/** Parse every field; `raws` maps field names to what was entered (missing: the default). */
export function collectParams(fields: FieldSpec[], raws: Record<string, RawValue>): Collected {
  const params: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const field of fields) {
    const parsed = parseField(field, raws[field.name] ?? initialRaw(field));
    if ("error" in parsed) errors[field.name] = parsed.error;
    else if ("value" in parsed) params[field.name] = parsed.value;
  }
  return { params, errors };
}

/**
 * Server validation messages sorted by where they belong: "parameter NAME: ..." to field NAME,
 * "input 'NAME' ..." to input NAME, the rest to `general`.
 */
export function sortProblems(
  problems: string[],
  fieldNames: Iterable<string>,
  inputNames: Iterable<string>,
): { fields: Record<string, string[]>; inputs: Record<string, string[]>; general: string[] } {
  const known = new Set(fieldNames);
  const knownInputs = new Set(inputNames);
  const out = { fields: {} as Record<string, string[]>, inputs: {} as Record<string, string[]>, general: [] as string[] };
  for (const problem of problems) {
    const param = /^parameter ([\w]+)(?:\.[\w.]+)?: (.*)$/s.exec(problem);
    const input = /^input '([\w-]+)'/.exec(problem);
    if (param !== null && known.has(param[1] as string)) {
      (out.fields[param[1] as string] ??= []).push(param[2] as string);
    } else if (input !== null && knownInputs.has(input[1] as string)) {
      (out.inputs[input[1] as string] ??= []).push(problem);
    } else {
      out.general.push(problem);
    }
  }
  return out;
}
