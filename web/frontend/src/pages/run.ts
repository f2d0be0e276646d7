/**
 * A run: parameters, inputs, outputs, timings, software versions, citations, steps, history
 * and the live log; buttons to launch, stop, continue, restart, copy and delete.
 */

import { errorMessage, del, get, post } from "../api";
import { formatDuration, formatTime, h, replaceChildren, type Child } from "../dom";
import { watchProject } from "../events";
import { navigate } from "../nav";
import type { ProjectRecord, RunDetails } from "../types";

const ACTIVE = ["queued", "running"];

/** Which actions a run in `status` allows (mirrors the server's rules). */
export function allowedActions(status: string): Set<string> {
  const allowed = new Set(["copy"]);
  if (status === "draft") allowed.add("launch");
  if (status === "draft" || ACTIVE.includes(status)) allowed.add("stop");
  if (status === "failed" || status === "aborted") allowed.add("continue");
  if (["finished", "failed", "aborted"].includes(status)) allowed.add("restart");
  if (!ACTIVE.includes(status)) allowed.add("delete");
  return allowed;
}

function title(action: string): string {
  return action.charAt(0).toUpperCase() + action.slice(1);
}

/** A recorded mapping ({"kind": "cpu", "threads": 2}) as "kind cpu · threads 2". */
export function mappingText(value: Record<string, unknown> | null): string {
  const entries = Object.entries(value ?? {});
  return entries.length ? entries.map(([k, v]) => `${k} ${valueText(v)}`).join(" · ") : "—";
}

function valueText(value: unknown): string {
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

function table(rows: [Child, Child][], cls = "kv"): HTMLTableElement {
  return h("table", { class: `table ${cls}` }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
}

function section(title: string, id: string, ...children: Child[]): HTMLElement {
  return h("section", { class: "card", id }, h("h2", {}, title), ...children);
}

function sections(projectId: number, run: RunDetails): HTMLElement[] {
  const params = Object.entries(run.params).map(([k, v]): [Child, Child] => [k, valueText(v)]);
  const inputs = run.inputs.map((i): [Child, Child] => [
    i.name,
    h("span", {}, h("a", { href: `/projects/${projectId}/runs/${i.run}` }, `run #${i.run}`), ` → ${i.output}`),
  ]);
  const software = Object.entries(run.software ?? {}).map(([k, v]): [Child, Child] => [k, valueText(v)]);
  const timings: [Child, Child][] = [
    ["created", formatTime(run.created_at)],
    ["started", formatTime(run.started_at)],
    ["finished", formatTime(run.finished_at)],
    ["duration", formatDuration(run.duration_s)],
    ["host", run.host ?? ""],
    ["device", mappingText(run.device)],
    ["executor", mappingText(run.executor)],
  ];
  return [
    section("Parameters", "run-params", table([["seed", String(run.seed)], ...params])),
    section("Inputs", "run-inputs", inputs.length ? table(inputs) : h("p", { class: "note" }, "No inputs.")),
    section(
      "Outputs",
      "run-outputs",
      run.outputs.length
        ? h(
            "table",
            { class: "table" },
            h("thead", {}, h("tr", {}, ["name", "type", "items", "path"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              run.outputs.map((o) =>
                h(
                  "tr",
                  { "data-output": o.name },
                  h("td", {}, o.name),
                  h("td", {}, o.type),
                  h("td", {}, o.n_items ?? ""),
                  h("td", {}, h("a", { href: `/api/projects/${projectId}/files/content?path=${encodeURIComponent(o.path)}`, download: true }, o.path)),
                ),
              ),
            ),
          )
        : h("p", { class: "note" }, "No outputs yet."),
    ),
    section("Timings", "run-timings", table(timings)),
    section("Software versions", "run-software", software.length ? table(software) : h("p", { class: "note" }, "Recorded when the run starts.")),
    section("Citations", "run-citations", run.citations.length ? h("ul", {}, run.citations.map((c) => h("li", {}, c))) : h("p", { class: "note" }, "None.")),
    section(
      "Steps",
      "run-steps",
      run.steps.length
        ? h(
            "table",
            { class: "table" },
            h("thead", {}, h("tr", {}, ["step", "status", "duration", "worker", "error"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              run.steps.map((st) =>
                h(
                  "tr",
                  { class: `status-${st.status}` },
                  h("td", {}, st.key),
                  h("td", {}, st.status),
                  h("td", {}, formatDuration(st.duration_s)),
                  h("td", {}, st.worker ?? ""),
                  h("td", {}, st.error ?? ""),
                ),
              ),
            ),
          )
        : h("p", { class: "note" }, "No steps yet."),
    ),
    section(
      "History",
      "run-history",
      h("ul", {}, run.history.map((e) => h("li", {}, `${formatTime(e.at)} ${e.status}${e.message ? `: ${e.message}` : ""}`))),
    ),
  ];
}

export async function renderRun(outlet: HTMLElement, params: Record<string, string>): Promise<() => void> {
  const projectId = Number(params.id);
  const runId = Number(params.run);
  const base = `/api/projects/${projectId}/runs/${runId}`;
  let run: RunDetails;
  let projectName = `project ${projectId}`;
  try {
    const [found, project] = await Promise.all([get<RunDetails>(base), get<ProjectRecord>(`/api/projects/${projectId}`)]);
    run = found;
    projectName = project.name;
  } catch (exc) {
    outlet.append(h("h1", {}, `Run #${runId}`), h("p", { class: "form-error" }, errorMessage(exc)));
    return () => undefined;
  }

  const badge = h("span", { class: `badge status-${run.status}`, id: "run-status" }, run.status);
  const message = h("div", { class: "form-status", id: "run-message", "aria-live": "polite" });
  const errorBox = h("div", { class: "form-error", id: "run-error" });
  const details = h("div", { class: "run-sections" });
  const log = h("pre", { class: "log", id: "run-log" });
  const buttons = new Map<string, HTMLButtonElement>();
  let reloadTimer: number | undefined;

  const show = (next: RunDetails): void => {
    run = next;
    badge.textContent = run.status;
    badge.className = `badge status-${run.status}`;
    errorBox.textContent = run.error ?? "";
    const allowed = allowedActions(run.status);
    for (const [action, button] of buttons) button.disabled = !allowed.has(action);
    replaceChildren(details, sections(projectId, run));
  };
  const reload = (): void => {
    window.clearTimeout(reloadTimer);
    reloadTimer = window.setTimeout(() => {
      get<RunDetails>(base)
        .then(show)
        .catch((exc: unknown) => {
          message.textContent = errorMessage(exc);
        });
    }, 200);
  };

  const act = (action: string, work: () => Promise<void>): HTMLButtonElement => {
    const button = h("button", { type: "button", id: `run-${action}`, "data-action": action }, title(action));
    button.addEventListener("click", () => {
      message.textContent = "";
      button.disabled = true;
      work()
        .catch((exc: unknown) => {
          message.textContent = errorMessage(exc);
        })
        .finally(reload);
    });
    buttons.set(action, button);
    return button;
  };
  const simple = (action: string) => async (): Promise<void> => {
    await post(`${base}/${action}`);
    message.textContent = `${title(action)} requested.`;
  };
  const toolbar = h(
    "div",
    { class: "toolbar run-actions" },
    act("launch", simple("launch")),
    act("stop", simple("stop")),
    act("continue", simple("continue")),
    act("restart", simple("restart")),
    act("copy", async () => {
      const copy = await post<RunDetails>(`${base}/copy`, {});
      navigate(`/projects/${projectId}/runs/${copy.id}`);
    }),
    act("delete", async () => {
      if (!window.confirm(`Delete run #${runId} and its files?`)) return;
      await del(base);
      navigate(`/projects/${projectId}`);
    }),
  );

  replaceChildren(
    outlet,
    h("p", { class: "crumbs" }, h("a", { href: "/" }, "Projects"), " / ", h("a", { href: `/projects/${projectId}`, id: "back-to-project" }, projectName), ` / run #${runId}`),
    h("h1", {}, `Run #${run.id} `, h("small", {}, `${run.protocol} v${run.protocol_version}`), " ", badge),
    run.label ? h("p", {}, run.label) : null,
    toolbar,
    message,
    errorBox,
    section("Log", "run-log-section", log),
    details,
  );
  show(run);

  const stop = watchProject(
    projectId,
    {
      status: (event) => {
        if (event.run !== runId) return;
        badge.textContent = event.status;
        badge.className = `badge status-${event.status}`;
        reload();
      },
      deleted: (id) => {
        if (id === runId) message.textContent = "This run was deleted.";
      },
      log: (event) => {
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(event.text);
        if (atBottom) log.scrollTop = log.scrollHeight;
      },
    },
    runId,
    0,
  );
  return () => {
    stop();
    window.clearTimeout(reloadTimer);
  };
}
