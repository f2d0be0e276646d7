/**
 * A layered left-to-right layout of the workflow graph (pure; no DOM).
 *
 * Each run sits in the layer one past the deepest run it takes input from (sources in layer 0),
 * so every provenance edge points right. Within a layer runs are ordered by the mean position
 * of their sources (a barycentre sweep, ties by id), which keeps chains straight and reduces
 * crossings. Coordinates are SVG user units (pixels at 100 % zoom).
 */

export interface GraphInput {
  name: string;
  run: number;
  output: string;
}

export interface GraphRun {
  id: number;
  inputs: GraphInput[];
}

export interface LayoutOptions {
  nodeWidth: number;
  nodeHeight: number;
  gapX: number;
  gapY: number;
  margin: number;
}

export interface LaidNode {
  id: number;
  layer: number;
  order: number;
  x: number;
  y: number;
}

export interface LaidEdge {
  from: number;
  to: number;
  /** "output → input" */
  label: string;
  /** SVG path data of a cubic curve from the source's right side to the target's left side */
  path: string;
}

export interface Layout {
  nodes: LaidNode[];
  edges: LaidEdge[];
  width: number;
  height: number;
  options: LayoutOptions;
}

export const DEFAULT_LAYOUT: LayoutOptions = {
  nodeWidth: 180,
  nodeHeight: 54,
  gapX: 70,
  gapY: 22,
  margin: 16,
};

/** Distinct source runs of each run that are in the graph (links to absent runs are dropped). */
export function sourcesOf(runs: GraphRun[]): Map<number, number[]> {
  const ids = new Set(runs.map((r) => r.id));
  const out = new Map<number, number[]>();
  for (const run of runs) {
    const sources = [...new Set(run.inputs.map((i) => i.run))].filter((id) => ids.has(id) && id !== run.id);
    out.set(run.id, sources.sort((a, b) => a - b));
  }
  return out;
}

/** The layer of every run: 0 for runs without sources, else 1 + the deepest source's layer.
 * A cycle (which a valid project never has) is broken where it is met, so this always ends. */
export function assignLayers(runs: GraphRun[]): Map<number, number> {
  const sources = sourcesOf(runs);
  const layer = new Map<number, number>();
  const visiting = new Set<number>();
  const visit = (id: number): number => {
    const known = layer.get(id);
    if (known !== undefined) return known;
    if (visiting.has(id)) return -1; // a cycle: ignore this edge
    visiting.add(id);
    let depth = 0;
    for (const source of sources.get(id) ?? []) depth = Math.max(depth, visit(source) + 1);
    visiting.delete(id);
    layer.set(id, depth);
    return depth;
  };
  for (const run of [...runs].sort((a, b) => a.id - b.id)) visit(run.id);
  return layer;
}

/** Runs of each layer in display order (barycentre of their sources' positions, then id). */
export function orderLayers(runs: GraphRun[], layers: Map<number, number>): number[][] {
  const sources = sourcesOf(runs);
  const byLayer: number[][] = [];
  for (const run of [...runs].sort((a, b) => a.id - b.id)) {
    const l = layers.get(run.id) ?? 0;
    (byLayer[l] ??= []).push(run.id);
  }
  const position = new Map<number, number>();
  byLayer.forEach((ids, l) => {
    if (l > 0) {
      const key = (id: number): number => {
        const placed = (sources.get(id) ?? []).map((s) => position.get(s)).filter((p) => p !== undefined);
        return placed.length ? placed.reduce((a, b) => a + b, 0) / placed.length : Number.POSITIVE_INFINITY;
      };
      ids.sort((a, b) => key(a) - key(b) || a - b);
    }
    ids.forEach((id, i) => position.set(id, i));
  });
  return byLayer; // dense: a run in layer k > 0 has a source in layer k - 1
}

function edgePath(from: LaidNode, to: LaidNode, o: LayoutOptions): string {
  const x1 = from.x + o.nodeWidth;
  const y1 = from.y + o.nodeHeight / 2;
  const x2 = to.x;
  const y2 = to.y + o.nodeHeight / 2;
  const bend = Math.max(20, (x2 - x1) / 2);
  return `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
}

/** Positions of all runs and the curves of their provenance links. */
export function layoutGraph(runs: GraphRun[], options: Partial<LayoutOptions> = {}): Layout {
  const o: LayoutOptions = { ...DEFAULT_LAYOUT, ...options };
  const layers = assignLayers(runs);
  const ordered = orderLayers(runs, layers);
  const tallest = Math.max(0, ...ordered.map((ids) => ids.length));
  const columnHeight = (n: number): number => n * o.nodeHeight + Math.max(0, n - 1) * o.gapY;
  const nodes: LaidNode[] = [];
  const byId = new Map<number, LaidNode>();
  ordered.forEach((ids, layer) => {
    const top = o.margin + (columnHeight(tallest) - columnHeight(ids.length)) / 2;
    ids.forEach((id, order) => {
      const node = {
        id,
        layer,
        order,
        x: o.margin + layer * (o.nodeWidth + o.gapX),
        y: top + order * (o.nodeHeight + o.gapY),
      };
      nodes.push(node);
      byId.set(id, node);
    });
  });
  const edges: LaidEdge[] = [];
  const seen = new Set<string>();
  for (const run of [...runs].sort((a, b) => a.id - b.id)) {
    for (const input of run.inputs) {
      const from = byId.get(input.run);
      const to = byId.get(run.id);
      const label = `${input.output} → ${input.name}`;
      const key = `${input.run}:${run.id}:${label}`;
      if (from === undefined || to === undefined || from === to || seen.has(key)) continue;
      seen.add(key);
      edges.push({ from: input.run, to: run.id, label, path: edgePath(from, to, o) });
    }
  }
  const nLayers = ordered.length;
  return {
    nodes: nodes.sort((a, b) => a.id - b.id),
    edges,
    width: 2 * o.margin + nLayers * o.nodeWidth + Math.max(0, nLayers - 1) * o.gapX,
    height: 2 * o.margin + columnHeight(tallest),
    options: o,
  };
}
