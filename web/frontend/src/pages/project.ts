/**
 * A project: the workflow graph (live through server-sent events), workflow export and
 * import, the protocol catalogue and the launch form.
 */

import { errorMessage, get, post } from "../api";
import { h, replaceChildren } from "../dom";
import { watchProject } from "../events";
import { renderGraph, type GraphView } from "../graphView";
import { navigate } from "../nav";
import type { ProjectDetails, ProtocolInfo, RunSummary } from "../types";
import { renderProtocolPanel } from "./protocolPanel";

const STATUSES = ["draft", "queued", "running", "finished", "failed", "aborted"];
const TERMINAL = ["finished", "failed", "aborted"];

/** Save JSON as a file through a temporary link. */
export function downloadJson(data: unknown, filename: string): void {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function workflowFilename(projectName: string): string {
  const slug = projectName.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").toLowerCase() || "project";
  return `${slug}-workflow.json`;
}

export async function renderProject(outlet: HTMLElement, params: Record<string, string>): Promise<() => void> {
  const projectId = Number(params.id);
  let project: ProjectDetails;
  let protocols: ProtocolInfo[];
  let runs: RunSummary[];
  try {
    [project, protocols, runs] = await Promise.all([
      get<ProjectDetails>(`/api/projects/${projectId}`),
      get<ProtocolInfo[]>("/api/protocols"),
      get<RunSummary[]>(`/api/projects/${projectId}/runs`),
    ]);
  } catch (exc) {
    outlet.append(h("h1", {}, "Project"), h("p", { class: "form-error" }, errorMessage(exc)));
    return () => undefined;
  }

  const graphBox = h("div", { class: "graph-scroll", id: "workflow-graph" });
  const message = h("div", { class: "form-status", id: "workflow-message", "aria-live": "polite" });
  const live = h("span", { class: "live", id: "live-state" }, "connecting…");
  let graph: GraphView | null = null;
  const shown = new Map<number, string>(); // the last status each run showed live
  let reloadTimer: number | undefined;

  const openRun = (runId: number): void => navigate(`/projects/${projectId}/runs/${runId}`);
  const drawGraph = (): void => {
    if (runs.length === 0) {
      graph = null;
      replaceChildren(graphBox, h("p", { class: "note" }, "No runs yet: launch a protocol from the catalogue."));
      return;
    }
    graph = renderGraph(runs, openRun);
    replaceChildren(graphBox, graph.element);
  };
  const panel = renderProtocolPanel(projectId, protocols, runs, () => scheduleReload(0));
  const reload = async (): Promise<void> => {
    try {
      runs = await get<RunSummary[]>(`/api/projects/${projectId}/runs`);
      panel.setRuns(runs);
      drawGraph();
    } catch (exc) {
      message.textContent = errorMessage(exc);
    }
  };
  function scheduleReload(delayMs = 300): void {
    window.clearTimeout(reloadTimer);
    reloadTimer = window.setTimeout(() => void reload(), delayMs);
  }

  const exportButton = h("button", { type: "button", id: "export-workflow" }, "Export workflow");
  exportButton.addEventListener("click", () => {
    get<unknown>(`/api/projects/${projectId}/workflow`)
      .then((wf) => {
        downloadJson(wf, workflowFilename(project.name));
        message.textContent = "Workflow exported.";
      })
      .catch((exc: unknown) => {
        message.textContent = errorMessage(exc);
      });
  });
  const importInput = h("input", { type: "file", accept: ".json,application/json", id: "import-workflow", class: "visually-hidden" });
  importInput.addEventListener("change", () => {
    const file = importInput.files?.[0];
    if (!file) return;
    file
      .text()
      .then((text) => {
        let workflow: unknown;
        try {
          workflow = JSON.parse(text);
        } catch {
          throw new Error(`${file.name} is not JSON`);
        }
        return post<{ runs: number[] }>(`/api/projects/${projectId}/workflow`, workflow);
      })
      .then((r) => {
        message.textContent = `Imported ${r.runs.length} run${r.runs.length === 1 ? "" : "s"} as drafts: ${r.runs.map((id) => `#${id}`).join(", ")}.`;
        scheduleReload(0);
      })
      .catch((exc: unknown) => {
        message.textContent = `Import failed: ${errorMessage(exc)}`;
      })
      .finally(() => {
        importInput.value = "";
      });
  });

  outlet.append(
    h("p", { class: "crumbs" }, h("a", { href: "/" }, "Projects"), " / ", project.name),
    h("h1", {}, project.name, " ", h("small", {}, `owner ${project.owner ?? "?"} · ${project.access}`)),
    h(
      "section",
      { class: "card workflow" },
      h(
        "div",
        { class: "toolbar" },
        h("h2", {}, "Workflow"),
        live,
        exportButton,
        h("label", { for: importInput.id, class: "button" }, "Import workflow…"),
        importInput,
      ),
      graphBox,
      h("div", { class: "legend" }, STATUSES.map((st) => h("span", { class: `swatch status-${st}` }, st))),
      message,
    ),
    h("div", { class: "columns" }, panel.catalogue, panel.form),
  );
  drawGraph();

  const stop = watchProject(projectId, {
    connected: (open) => {
      live.textContent = open ? "live" : "reconnecting…";
      live.classList.toggle("on", open);
    },
    status: (event) => {
      const before = shown.get(event.run) ?? runs.find((r) => r.id === event.run)?.status;
      shown.set(event.run, event.status);
      if (!graph || !graph.update(event)) {
        scheduleReload();
      } else if (before !== event.status && TERMINAL.includes(event.status)) {
        scheduleReload(); // its outputs are registered now: the pickers offer them
      }
    },
    deleted: () => scheduleReload(),
  });
  return () => {
    stop();
    window.clearTimeout(reloadTimer);
  };
}
