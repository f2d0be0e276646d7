import { describe, expect, it } from "vitest";
import { assignLayers, layoutGraph, orderLayers, type GraphRun } from "../src/graphLayout";

const run = (id: number, ...sources: [number, string?][]): GraphRun => ({
  id,
  inputs: sources.map(([from, output], i) => ({ name: `in${i}`, run: from, output: output ?? "out" })),
});

describe("assignLayers", () => {
  it("puts each run one layer past its deepest source", () => {
    // 1 -> 2 -> 4, 1 -> 3 -> 4, 5 alone, 6 <- 1 and 4
    const runs = [run(1), run(2, [1]), run(3, [1]), run(4, [2], [3]), run(5), run(6, [1], [4])];
    expect(Object.fromEntries(assignLayers(runs))).toEqual({ 1: 0, 2: 1, 3: 1, 4: 2, 5: 0, 6: 3 });
  });

  it("ignores links to runs that are not in the graph and survives a cycle", () => {
    expect(Object.fromEntries(assignLayers([run(2, [99]), run(3, [2])]))).toEqual({ 2: 0, 3: 1 });
    const layers = assignLayers([run(1, [2]), run(2, [1])]);
    expect(layers.size).toBe(2);
  });
});

describe("orderLayers", () => {
  it("orders a layer by the positions of the sources (fewer crossings)", () => {
    // sources 1 and 2; 3 takes 2, 4 takes 1: 4 must come before 3
    const runs = [run(1), run(2), run(3, [2]), run(4, [1])];
    expect(orderLayers(runs, assignLayers(runs))).toEqual([
      [1, 2],
      [4, 3],
    ]);
  });
});

describe("layoutGraph", () => {
  const runs = [run(1), run(2, [1]), run(3, [1]), run(4, [2], [3]), run(5)];
  const o = { nodeWidth: 100, nodeHeight: 40, gapX: 50, gapY: 10, margin: 5 };
  const layout = layoutGraph(runs, o);

  it("places every run once, without overlaps, inside the drawing", () => {
    expect(layout.nodes.map((n) => n.id)).toEqual([1, 2, 3, 4, 5]);
    for (const a of layout.nodes) {
      expect(a.x).toBeGreaterThanOrEqual(o.margin);
      expect(a.y).toBeGreaterThanOrEqual(o.margin);
      expect(a.x + o.nodeWidth).toBeLessThanOrEqual(layout.width - o.margin);
      expect(a.y + o.nodeHeight).toBeLessThanOrEqual(layout.height - o.margin);
      for (const b of layout.nodes) {
        if (a === b) continue;
        const apart = a.x + o.nodeWidth <= b.x || b.x + o.nodeWidth <= a.x || a.y + o.nodeHeight <= b.y || b.y + o.nodeHeight <= a.y;
        expect(apart, `runs ${a.id} and ${b.id} overlap`).toBe(true);
      }
    }
    // three layers of 100 px with two gaps of 50 px, plus margins; two rows in the tallest layer
    expect(layout.width).toBe(5 + 3 * 100 + 2 * 50 + 5);
    expect(layout.height).toBe(5 + 2 * 40 + 10 + 5);
  });

  it("draws each provenance link from the source's right side to the target's left side", () => {
    expect(layout.edges.map((e) => [e.from, e.to])).toEqual([
      [1, 2],
      [1, 3],
      [2, 4],
      [3, 4],
    ]);
    const byId = new Map(layout.nodes.map((n) => [n.id, n]));
    for (const e of layout.edges) {
      const from = byId.get(e.from);
      const to = byId.get(e.to);
      if (!from || !to) throw new Error("edge to a missing node");
      const numbers = e.path.match(/-?\d+(\.\d+)?/g)?.map(Number) ?? [];
      expect(numbers[0]).toBe(from.x + o.nodeWidth);
      expect(numbers[1]).toBe(from.y + o.nodeHeight / 2);
      expect(numbers.at(-2)).toBe(to.x);
      expect(numbers.at(-1)).toBe(to.y + o.nodeHeight / 2);
      expect(to.x).toBeGreaterThan(from.x);
    }
    expect(layout.edges[0]?.label).toBe("out → in0");
  });

  it("keeps one edge per distinct link and is deterministic", () => {
    const twice = layoutGraph([run(1), { id: 2, inputs: [{ name: "a", run: 1, output: "t" }, { name: "a", run: 1, output: "t" }, { name: "b", run: 1, output: "t" }] }]);
    expect(twice.edges.map((e) => e.label)).toEqual(["t → a", "t → b"]);
    expect(layoutGraph([...runs].reverse(), o)).toEqual(layout);
  });

  it("handles an empty workflow", () => {
    const empty = layoutGraph([], o);
    expect(empty.nodes).toEqual([]);
    expect(empty.width).toBe(10);
  });
});
