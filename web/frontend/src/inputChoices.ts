/**
 * Which run outputs an input picker offers (pure; no DOM): only outputs whose type the input
 * accepts. Finished runs offer their registered outputs; runs not finished yet offer the
 * outputs their protocol declares, marked pending (a run using one is saved as a draft).
 */

import type { InputSpec, ProtocolInfo, RunSummary } from "./types";

export interface OutputChoice {
  /** the API's input reference "RUN.OUTPUT" */
  ref: string;
  run: number;
  output: string;
  type: string;
  label: string;
  /** the run has not produced it yet */
  pending: boolean;
}

const UNUSABLE = new Set(["failed", "aborted"]);

function describe(run: RunSummary, output: string, type: string, detail: string): string {
  const name = run.label ? `${run.protocol} “${run.label}”` : run.protocol;
  return `#${run.id} ${name} → ${output} (${type}${detail})`;
}

/** Outputs of `runs` that `spec` accepts, newest run first. */
export function outputChoices(
  spec: InputSpec,
  runs: RunSummary[],
  protocols: Map<string, ProtocolInfo>,
): OutputChoice[] {
  const accepted = new Set(spec.types);
  const choices: OutputChoice[] = [];
  for (const run of [...runs].sort((a, b) => b.id - a.id)) {
    if (run.status === "finished" || run.outputs.length > 0) {
      for (const out of run.outputs) {
        if (!accepted.has(out.type)) continue;
        const items = out.n_items === null ? "" : `, ${out.n_items} item${out.n_items === 1 ? "" : "s"}`;
        choices.push({
          ref: `${run.id}.${out.name}`,
          run: run.id,
          output: out.name,
          type: out.type,
          label: describe(run, out.name, out.type, items),
          pending: false,
        });
      }
    } else if (!UNUSABLE.has(run.status)) {
      const declared = protocols.get(run.protocol)?.outputs ?? {};
      for (const [name, out] of Object.entries(declared)) {
        if (!accepted.has(out.type)) continue;
        choices.push({
          ref: `${run.id}.${name}`,
          run: run.id,
          output: name,
          type: out.type,
          label: describe(run, name, out.type, `, pending: run is ${run.status}`),
          pending: true,
        });
      }
    }
  }
  return choices;
}
