import { describe, expect, it } from "vitest";
import {
  collectParams,
  fieldsFromSchema,
  groupFields,
  initialRaw,
  parseField,
  sortProblems,
  type FieldSpec,
} from "../src/schemaForm";
import type { JsonSchema, ProtocolInfo } from "../src/types";
import protocolsJson from "./fixtures/protocols.json";

// descriptions as GET /api/protocols returns them (written by core/summaries.py)
const protocols = protocolsJson as unknown as Record<string, ProtocolInfo>;
const schemaOf = (id: string): JsonSchema => (protocols[id] as ProtocolInfo).params_schema;
const field = (fields: FieldSpec[], name: string): FieldSpec => {
  const found = fields.find((f) => f.name === name);
  if (!found) throw new Error(`no field ${name}`);
  return found;
};

describe("fieldsFromSchema", () => {
  it("reads kinds, groups, units, help, defaults and bounds of test-squares", () => {
    const fields = fieldsFromSchema(schemaOf("test-squares"));
    expect(fields.map((f) => f.name)).toEqual(["n_items", "sleep_s", "fail_item", "scale"]);
    expect(field(fields, "n_items")).toMatchObject({
      kind: "integer",
      group: "General",
      default: 6,
      minimum: 1,
      maximum: 1000,
      help: "number of items",
      required: false,
      nullable: false,
    });
    expect(field(fields, "sleep_s")).toMatchObject({ kind: "number", unit: "s", minimum: 0 });
    expect(field(fields, "scale")).toMatchObject({ group: "Advanced", exclusiveMinimum: 0, default: 1 });
  });

  it("turns enums into options, booleans into checkboxes and X | None into nullable X", () => {
    const fields = fieldsFromSchema(schemaOf("pick-particles"));
    expect(field(fields, "method")).toMatchObject({ kind: "enum", options: ["log", "template"], default: "log" });
    expect(field(fields, "ctf_templates")).toMatchObject({ kind: "boolean", default: true });
    expect(field(fields, "edge_exclusion_A")).toMatchObject({
      kind: "number",
      nullable: true,
      default: null,
      unit: "Å",
      minimum: 0,
    });
    expect(field(fields, "max_picks_per_micrograph")).toMatchObject({ kind: "integer", nullable: true, minimum: 1 });
    // a parameter without default is required
    expect(field(fields, "min_diameter_A")).toMatchObject({ hasDefault: false, required: true, exclusiveMinimum: 0 });
  });

  it("reads string lists and required strings", () => {
    const fields = fieldsFromSchema(schemaOf("import-volume"));
    expect(field(fields, "half_maps")).toMatchObject({ kind: "string-list", default: [] });
    expect(field(fields, "file")).toMatchObject({ kind: "string", required: true, hasDefault: false });
  });

  it("follows $ref into $defs (pydantic's Enum classes)", () => {
    const schema: JsonSchema = {
      type: "object",
      $defs: { Symmetry: { enum: ["C1", "D2", "O"], title: "Symmetry", type: "string" } },
      properties: {
        symmetry: { $ref: "#/$defs/Symmetry", default: "C1", description: "point group", group: "Model" },
        maybe: { anyOf: [{ $ref: "#/$defs/Symmetry" }, { type: "null" }], default: null },
      },
    };
    const fields = fieldsFromSchema(schema);
    expect(fields[0]).toMatchObject({ kind: "enum", options: ["C1", "D2", "O"], group: "Model", help: "point group" });
    expect(fields[1]).toMatchObject({ kind: "enum", nullable: true, options: ["C1", "D2", "O"] });
    expect(() => fieldsFromSchema({ properties: { x: { $ref: "#/$defs/Missing" } } })).toThrow(/Missing/);
  });
});

describe("groupFields", () => {
  it("puts General first and keeps the other groups in schema order", () => {
    const groups = groupFields(fieldsFromSchema(schemaOf("test-squares")));
    expect(groups.map((g) => [g.name, g.fields.map((f) => f.name)])).toEqual([
      ["General", ["n_items", "sleep_s", "fail_item"]],
      ["Advanced", ["scale"]],
    ]);
  });
  it("leaves out an empty General group", () => {
    const groups = groupFields(fieldsFromSchema({ properties: { a: { type: "integer", group: "Box" } } }));
    expect(groups.map((g) => g.name)).toEqual(["Box"]);
  });
});

describe("parseField", () => {
  const fields = fieldsFromSchema(schemaOf("test-squares"));
  const nItems = field(fields, "n_items");
  const scale = field(fields, "scale");

  it("accepts numbers within bounds and says what is wrong otherwise", () => {
    expect(parseField(nItems, "2")).toEqual({ value: 2 });
    expect(parseField(nItems, " 1000 ")).toEqual({ value: 1000 });
    expect(parseField(nItems, "0")).toEqual({ error: "must be ≥ 1" });
    expect(parseField(nItems, "1001")).toEqual({ error: "must be ≤ 1000" });
    expect(parseField(nItems, "2.5")).toEqual({ error: "must be a whole number" });
    expect(parseField(nItems, "two")).toEqual({ error: "must be a whole number" });
    expect(parseField(scale, "0")).toEqual({ error: "must be > 0" });
    expect(parseField(scale, "2.5e-1")).toEqual({ value: 0.25 });
    expect(parseField(scale, "abc")).toEqual({ error: "must be a number" });
  });

  it("treats an empty input as the default, null or missing", () => {
    const pick = fieldsFromSchema(schemaOf("pick-particles"));
    expect(parseField(nItems, "")).toEqual({ omit: true });
    expect(parseField(field(pick, "edge_exclusion_A"), "")).toEqual({ value: null });
    expect(parseField(field(pick, "min_diameter_A"), "")).toEqual({ error: "a value is required" });
    expect(parseField(field(pick, "method"), "template")).toEqual({ value: "template" });
    expect(parseField(field(pick, "method"), "other")).toEqual({ error: "must be one of log, template" });
    expect(parseField(field(pick, "ctf_templates"), false)).toEqual({ value: false });
  });

  it("splits string lists by line and checks string lengths", () => {
    const vol = fieldsFromSchema(schemaOf("import-volume"));
    expect(parseField(field(vol, "half_maps"), "a.mrc\n\n  b.mrc \n")).toEqual({ value: ["a.mrc", "b.mrc"] });
    const mic = fieldsFromSchema({
      required: ["name"],
      properties: { name: { type: "string", minLength: 1, maxLength: 3 } },
    });
    expect(parseField(mic[0] as FieldSpec, "")).toEqual({ error: "a value is required" });
    expect(parseField(mic[0] as FieldSpec, "abcd")).toEqual({ error: "takes at most 3 characters" });
  });
});

describe("collectParams and initialRaw", () => {
  it("round-trips the defaults and reports every bad field", () => {
    const fields = fieldsFromSchema(schemaOf("test-squares"));
    const raws = Object.fromEntries(fields.map((f) => [f.name, initialRaw(f)]));
    expect(raws).toEqual({ n_items: "6", sleep_s: "0", fail_item: "-1", scale: "1" });
    expect(collectParams(fields, raws)).toEqual({
      params: { n_items: 6, sleep_s: 0, fail_item: -1, scale: 1 },
      errors: {},
    });
    expect(collectParams(fields, { ...raws, n_items: "2" }).params.n_items).toBe(2);
    expect(collectParams(fields, { ...raws, n_items: "0", scale: "-1" }).errors).toEqual({
      n_items: "must be ≥ 1",
      scale: "must be > 0",
    });
  });
});

describe("sortProblems", () => {
  it("puts the server's messages under their fields and inputs", () => {
    const sorted = sortProblems(
      [
        "parameter n_items: Input should be greater than or equal to 1",
        "input 'table' is required (Table)",
        "parameter bogus: Extra inputs are not permitted",
        "something else",
      ],
      ["n_items", "scale"],
      ["table"],
    );
    expect(sorted.fields).toEqual({ n_items: ["Input should be greater than or equal to 1"] });
    expect(sorted.inputs).toEqual({ table: ["input 'table' is required (Table)"] });
    expect(sorted.general).toEqual(["parameter bogus: Extra inputs are not permitted", "something else"]);
  });
});
