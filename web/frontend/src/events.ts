/**
 * Live updates of a project through the server-sent events of /api/projects/{id}/events:
 * run status changes, deleted runs, and new log text of one run. The server ends a stream
 * after a while; we then reopen it ourselves from the log offset reached, so no log text
 * arrives twice.
 */

export interface StatusEvent {
  run: number;
  status: string;
  steps_done: number;
  n_steps: number | null;
}

export interface LogEvent {
  run: number;
  offset: number;
  next_offset: number;
  text: string;
}

export interface EventHandlers {
  status?: (event: StatusEvent) => void;
  deleted?: (run: number) => void;
  log?: (event: LogEvent) => void;
  /** the connection state: true when open, false while reconnecting */
  connected?: (open: boolean) => void;
}

const RECONNECT_MS = 1000;
const MAX_RECONNECT_MS = 30_000;

export function eventsUrl(projectId: number, logRun: number | null, logOffset: number): string {
  const query = logRun === null ? "" : `?log_run=${logRun}&log_offset=${logOffset}`;
  return `/api/projects/${projectId}/events${query}`;
}

/** Listen to a project's events until the returned function is called. */
export function watchProject(
  projectId: number,
  handlers: EventHandlers,
  logRun: number | null = null,
  logOffset = 0,
): () => void {
  let offset = logOffset;
  let source: EventSource | null = null;
  let timer: number | undefined;
  let closed = false;
  let delayMs = RECONNECT_MS;

  const open = (): void => {
    if (closed) return;
    const es = new EventSource(eventsUrl(projectId, logRun, offset));
    source = es;
    es.addEventListener("open", () => {
      delayMs = RECONNECT_MS;
      handlers.connected?.(true);
    });
    es.addEventListener("status", (e) => handlers.status?.(JSON.parse((e as MessageEvent<string>).data) as StatusEvent));
    es.addEventListener("deleted", (e) => {
      const data = JSON.parse((e as MessageEvent<string>).data) as { run: number };
      handlers.deleted?.(data.run);
    });
    es.addEventListener("log", (e) => {
      const data = JSON.parse((e as MessageEvent<string>).data) as LogEvent;
      if (data.offset < offset) return; // already shown
      offset = data.next_offset;
      handlers.log?.(data);
    });
    es.addEventListener("error", () => {
      // the server closed the stream (or it broke): reopen from where the log got to
      es.close();
      handlers.connected?.(false);
      // back off while it keeps failing (server down, session expired), up to 30 s
      if (!closed) timer = window.setTimeout(open, delayMs);
      delayMs = Math.min(MAX_RECONNECT_MS, delayMs * 2);
    });
  };
  open();
  return () => {
    closed = true;
    window.clearTimeout(timer);
    source?.close();
  };
}
