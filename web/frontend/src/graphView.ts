/**
 * The workflow graph as SVG: a node per run, coloured by status (CSS classes `status-*`),
 * curves for provenance links labelled "output → input". `update` changes a node's status in
 * place when a live event arrives.
 */

import { s } from "./dom";
import type { StatusEvent } from "./events";
import { layoutGraph } from "./graphLayout";
import type { RunSummary } from "./types";

export interface GraphView {
  element: SVGSVGElement;
  /** apply a live status event; false when the run is not drawn (the caller reloads) */
  update(event: StatusEvent): boolean;
}

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function progress(status: string, done: number, total: number | null): string {
  if (total === null || status === "draft") return status;
  return `${status} · ${done}/${total} steps`;
}

export function renderGraph(runs: RunSummary[], open: (runId: number) => void): GraphView {
  const layout = layoutGraph(runs);
  const o = layout.options;
  const byId = new Map(runs.map((r) => [r.id, r]));
  const statusText = new Map<number, SVGTextElement>();
  const groups = new Map<number, SVGGElement>();

  const edges = layout.edges.map((e) =>
    s("path", { class: "edge", d: e.path, "data-from": e.from, "data-to": e.to, "marker-end": "url(#arrow)" },
      s("title", {}, `#${e.from} ${e.label} of #${e.to}`)),
  );
  const nodes = layout.nodes.map((n) => {
    const run = byId.get(n.id) as RunSummary;
    const status = s("text", { x: 10, y: 40, class: "node-status" }, run.status);
    statusText.set(run.id, status);
    const g = s(
      "g",
      {
        class: `run-node status-${run.status}`,
        transform: `translate(${n.x},${n.y})`,
        "data-run": run.id,
        "data-status": run.status,
        tabindex: 0,
        role: "link",
        "aria-label": `run ${run.id} ${run.protocol} ${run.status}`,
        onclick: () => open(run.id),
        onkeydown: (ev: Event) => {
          if ((ev as KeyboardEvent).key === "Enter") open(run.id);
        },
      },
      s("title", {}, `#${run.id} ${run.protocol}${run.label ? ` — ${run.label}` : ""}`),
      s("rect", { width: o.nodeWidth, height: o.nodeHeight, rx: 8, ry: 8 }),
      s("text", { x: 10, y: 20, class: "node-title" }, clip(`#${run.id} ${run.label || run.protocol}`, 24)),
      status,
    );
    groups.set(run.id, g);
    return g;
  });
  const svg = s(
    "svg",
    {
      class: "workflow-graph",
      width: Math.max(layout.width, 200),
      height: Math.max(layout.height, 80),
      viewBox: `0 0 ${Math.max(layout.width, 200)} ${Math.max(layout.height, 80)}`,
      role: "img",
      "aria-label": `workflow of ${runs.length} runs`,
    },
    s("defs", {},
      s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-head" }))),
    s("g", { class: "edges" }, edges),
    s("g", { class: "nodes" }, nodes),
  );
  return {
    element: svg,
    update(event: StatusEvent): boolean {
      const g = groups.get(event.run);
      const text = statusText.get(event.run);
      if (!g || !text) return false;
      g.setAttribute("class", `run-node status-${event.status}`);
      g.setAttribute("data-status", event.status);
      g.setAttribute("aria-label", `run ${event.run} ${(byId.get(event.run) as RunSummary).protocol} ${event.status}`);
      text.textContent = progress(event.status, event.steps_done, event.n_steps);
      return true;
    },
  };
}
