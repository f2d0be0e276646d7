// The generated form as DOM (happy-dom), the input pickers, and the small helpers of the pages.
import { describe, expect, it } from "vitest";
import { readCookie } from "../src/api";
import { outputChoices } from "../src/inputChoices";
import { renderInputPickers } from "../src/inputPickers";
import { renderParamForm } from "../src/paramForm";
import { filterCatalogue, renderProtocolPanel } from "../src/pages/protocolPanel";
import { allowedActions, mappingText } from "../src/pages/run";
import { matchPath } from "../src/router";
import { fieldsFromSchema } from "../src/schemaForm";
import type { InputSpec, ProtocolInfo, RunSummary } from "../src/types";
import protocolsJson from "./fixtures/protocols.json";

const protocols = protocolsJson as unknown as Record<string, ProtocolInfo>;
const protocol = (id: string): ProtocolInfo => protocols[id] as ProtocolInfo;
const byId = new Map(Object.values(protocols).map((p) => [p.id, p]));

function summary(id: number, protocolId: string, status: string, outputs: RunSummary["outputs"] = []): RunSummary {
  return { id, protocol: protocolId, label: "", status, created_at: "2026-01-01T00:00:00", duration_s: null, inputs: [], outputs };
}

describe("renderParamForm", () => {
  it("renders groups, labels with units, help, defaults, selects and checkboxes", () => {
    const form = renderParamForm(fieldsFromSchema(protocol("pick-particles").params_schema));
    const el = form.element;
    const legends = [...el.querySelectorAll("legend")].map((l) => l.textContent);
    expect(legends[0]).toBe("General");
    const method = el.querySelector<HTMLSelectElement>("select[name=method]");
    expect([...(method?.options ?? [])].map((o) => o.value)).toEqual(["log", "template"]);
    expect(method?.value).toBe("log");
    expect(el.querySelector<HTMLInputElement>("input[name=ctf_templates]")?.type).toBe("checkbox");
    expect(el.querySelector<HTMLInputElement>("input[name=ctf_templates]")?.checked).toBe(true);
    expect(el.querySelector("label[for=param-min_diameter_A]")?.textContent).toBe("Min Diameter A (Å)");
    expect(el.querySelector("#param-threshold-help")?.textContent).toContain("default: 4");
  });

  it("reads typed values and shows client-side errors inline", () => {
    const form = renderParamForm(fieldsFromSchema(protocol("test-squares").params_schema), { n_items: 3 });
    const n = form.element.querySelector<HTMLInputElement>("input[name=n_items]");
    if (!n) throw new Error("no n_items input");
    expect(n.value).toBe("3");
    n.value = "2";
    expect(form.read()).toEqual({ params: { n_items: 2, sleep_s: 0, fail_item: -1, scale: 1 }, errors: {} });
    n.value = "0";
    let changes = 0;
    form.onChange(() => changes++);
    n.dispatchEvent(new Event("input"));
    expect(changes).toBe(1);
    expect(form.element.querySelector("[data-error-for=n_items]")?.textContent).toBe("must be ≥ 1");
    expect(n.hasAttribute("aria-invalid")).toBe(true);
    expect(form.read().errors).toEqual({ n_items: "must be ≥ 1" });
    form.showErrors({ scale: ["from the server"] });
    expect(form.element.querySelector("[data-error-for=scale]")?.textContent).toBe("from the server");
  });
});

describe("input pickers", () => {
  const tableInput = protocol("test-sum").inputs.table as InputSpec;
  const runs = [
    summary(1, "test-squares", "finished", [{ name: "table", type: "Table", n_items: 2, path: "runs/1/table.npy" }]),
    summary(2, "import-volume", "finished", [{ name: "volume", type: "Volume", n_items: 1, path: "v.mrc" }]),
    summary(3, "test-squares", "running"),
    summary(4, "test-squares", "failed"),
  ];

  it("offers only outputs of an accepted type, pending ones from runs still running", () => {
    const choices = outputChoices(tableInput, runs, byId);
    expect(choices.map((c) => [c.ref, c.pending])).toEqual([
      ["3.table", true],
      ["1.table", false],
    ]);
    expect(choices[1]?.label).toBe("#1 test-squares → table (Table, 2 items)");
    const volumeOnly: InputSpec = { ...tableInput, types: ["Volume"] };
    expect(outputChoices(volumeOnly, runs, byId).map((c) => c.ref)).toEqual(["2.volume"]);
  });

  it("reads the chosen reference and requires a choice", () => {
    const pickers = renderInputPickers(protocol("test-sum").inputs, runs, byId);
    const select = pickers.element.querySelector<HTMLSelectElement>("select[name=input-table]");
    if (!select) throw new Error("no picker");
    expect(pickers.read().errors).toEqual({ table: "choose a Table output" });
    select.value = "1.table";
    expect(pickers.read()).toEqual({ inputs: { table: ["1.table"] }, pending: false, errors: {} });
    select.value = "3.table";
    expect(pickers.read().pending).toBe(true);
  });
});

describe("protocol panel", () => {
  it("opens a protocol's form from the catalogue and offers outputs registered later", () => {
    const panel = renderProtocolPanel(1, Object.values(protocols), [summary(1, "test-squares", "running")], () => undefined);
    const search = panel.catalogue.querySelector<HTMLInputElement>("#protocol-search");
    if (!search) throw new Error("no search box");
    search.value = "rows";
    search.dispatchEvent(new Event("input"));
    const buttons = panel.catalogue.querySelectorAll<HTMLButtonElement>("[data-protocol]");
    expect([...buttons].map((b) => b.getAttribute("data-protocol"))).toEqual(["test-sum"]);
    buttons[0]?.click();
    const options = (): string[] =>
      [...panel.form.querySelectorAll<HTMLOptionElement>("select[name=input-table] option")].map((o) => o.value);
    expect(panel.form.querySelector("form")?.getAttribute("data-protocol")).toBe("test-sum");
    expect(options()).toEqual(["", "1.table"]); // pending: run 1 is still running
    const picker = panel.form.querySelector<HTMLSelectElement>("select[name=input-table]");
    if (!picker) throw new Error("no picker");
    picker.value = "1.table";
    const table = { name: "table", type: "Table", n_items: 2, path: "t.npy" };
    panel.setRuns([summary(1, "test-squares", "finished", [table]), summary(2, "test-squares", "finished", [table])]);
    expect(options()).toEqual(["", "2.table", "1.table"]);
    expect(panel.form.querySelector<HTMLSelectElement>("select[name=input-table]")?.value).toBe("1.table");
    expect(panel.form.querySelector("option[value='1.table']")?.textContent).toBe("#1 test-squares → table (Table, 2 items)");
  });
});

describe("page helpers", () => {
  it("searches the catalogue by words and groups it by category", () => {
    const found = filterCatalogue(Object.values(protocols), "test squares");
    expect([...found.keys()]).toEqual(["Testing"]);
    expect(found.get("Testing")?.map((p) => p.id)).toEqual(["test-squares"]);
    expect(filterCatalogue(Object.values(protocols), "").size).toBeGreaterThan(2);
    expect(filterCatalogue(Object.values(protocols), "no-such-thing").size).toBe(0);
  });

  it("offers only the actions the server allows for a status", () => {
    expect([...allowedActions("draft")].sort()).toEqual(["copy", "delete", "launch", "stop"]);
    expect([...allowedActions("running")].sort()).toEqual(["copy", "stop"]);
    expect([...allowedActions("finished")].sort()).toEqual(["copy", "delete", "restart"]);
    expect([...allowedActions("failed")].sort()).toEqual(["continue", "copy", "delete", "restart"]);
  });

  it("shows recorded mappings (device, executor) as text", () => {
    expect(mappingText({ kind: "cpu", threads: 2, gpus: [0, 1] })).toBe("kind cpu · threads 2 · gpus [0,1]");
    expect(mappingText({})).toBe("—");
    expect(mappingText(null)).toBe("—");
  });

  it("matches routes and reads the CSRF cookie", () => {
    expect(matchPath("/projects/:id/runs/:run", "/projects/3/runs/12")).toEqual({ id: "3", run: "12" });
    expect(matchPath("/projects/:id", "/projects/3/runs/12")).toBeNull();
    expect(matchPath("/", "/")).toEqual({});
    expect(readCookie("cryostack_csrf", "a=1; cryostack_csrf=abc%3D%3D; b=2")).toBe("abc==");
    expect(readCookie("cryostack_csrf", "a=1")).toBeNull();
  });
});
