/** Shapes of the JSON the cryostack API returns (see /api/openapi.json and core/summaries.py). */

export interface User {
  id: number;
  username: string;
  role: "admin" | "user";
  active: boolean;
  created_at: string;
  via?: string;
}

export interface ProjectRecord {
  id: number;
  name: string;
  owner: string | null;
  created_at: string;
  access: "owner" | "member" | "admin";
}

export interface ProjectDetails extends ProjectRecord {
  n_runs: number;
  runs_by_status: Record<string, number>;
  outputs: { run: number; name: string; type: string; n_items: number | null }[];
}

/** A JSON schema node as pydantic writes it (only the keywords the form generator reads). */
export interface JsonSchema {
  type?: string | string[];
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  anyOf?: JsonSchema[];
  allOf?: JsonSchema[];
  $ref?: string;
  $defs?: Record<string, JsonSchema>;
  /** cryostack's json_schema_extra: form group and unit */
  group?: string;
  unit?: string;
}

export interface InputSpec {
  types: string[];
  help: string;
  optional: boolean;
  multiple: boolean;
  required_columns: string[];
}

export interface ProtocolInfo {
  id: string;
  name: string;
  category: string;
  version: string;
  help: string;
  citations: string[];
  params_schema: JsonSchema;
  inputs: Record<string, InputSpec>;
  outputs: Record<string, { type: string; help: string }>;
}

export interface RunInputLink {
  name: string;
  run: number;
  output: string;
}

export interface RunOutput {
  name: string;
  type: string;
  n_items: number | null;
  path: string;
  content_hash?: string;
  meta?: Record<string, unknown>;
}

export interface RunSummary {
  id: number;
  protocol: string;
  label: string;
  status: string;
  created_at: string;
  duration_s: number | null;
  inputs: RunInputLink[];
  outputs: RunOutput[];
}

export interface RunStep {
  key: string;
  status: string;
  duration_s: number | null;
  worker: string | null;
  error: string | null;
}

export interface RunDetails extends RunSummary {
  protocol_version: string;
  params: Record<string, unknown>;
  seed: number;
  run_dir: string;
  log: string;
  started_at: string | null;
  finished_at: string | null;
  pid: number | null;
  host: string | null;
  error: string | null;
  software: Record<string, unknown> | null;
  device: Record<string, unknown> | null;
  executor: Record<string, unknown> | null;
  citations: string[];
  input_hashes: Record<string, string | null>;
  steps: RunStep[];
  history: { status: string; at: string; message: string | null }[];
  steps_by_status: Record<string, number>;
}

export interface ValidationResult {
  valid: boolean;
  problems: string[];
}

export interface LogChunk {
  run: number;
  offset: number;
  next_offset: number;
  size: number;
  text: string;
}
