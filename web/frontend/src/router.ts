/**
 * A tiny history router: patterns like "/projects/:id", a page function per route that fills
 * the outlet and may return a cleanup (closing live streams), and link interception so
 * same-origin `<a href>` clicks navigate without reloading.
 */

export type Cleanup = () => void;
export type Page = (outlet: HTMLElement, params: Record<string, string>) => Cleanup | void | Promise<Cleanup | void>;

interface Route {
  regex: RegExp;
  keys: string[];
  page: Page;
}

export function compile(pattern: string): { regex: RegExp; keys: string[] } {
  const keys: string[] = [];
  const body = pattern
    .split("/")
    .map((part) => {
      if (part.startsWith(":")) {
        keys.push(part.slice(1));
        return "([^/]+)";
      }
      return part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    })
    .join("/");
  return { regex: new RegExp(`^${body}/?$`), keys };
}

/** The params of `path` for `pattern`, or null when it does not match. */
export function matchPath(pattern: string, path: string): Record<string, string> | null {
  const { regex, keys } = compile(pattern);
  const m = regex.exec(path);
  if (m === null) return null;
  return Object.fromEntries(keys.map((k, i) => [k, decodeURIComponent(m[i + 1] as string)]));
}

export class Router {
  private routes: Route[] = [];
  private cleanup: Cleanup | null = null;
  private generation = 0;

  constructor(
    private readonly outlet: HTMLElement,
    private readonly notFound: Page,
  ) {}

  add(pattern: string, page: Page): this {
    this.routes.push({ ...compile(pattern), page });
    return this;
  }

  start(): void {
    window.addEventListener("popstate", () => void this.render());
    document.addEventListener("click", (event) => this.intercept(event));
    void this.render();
  }

  navigate(path: string, replace = false): void {
    if (replace) history.replaceState(null, "", path);
    else history.pushState(null, "", path);
    void this.render();
  }

  private intercept(event: MouseEvent): void {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    const anchor = (event.target as Element | null)?.closest("a");
    if (!anchor || anchor.target || anchor.hasAttribute("download")) return;
    const url = new URL(anchor.href, location.href);
    if (url.origin !== location.origin || url.pathname.startsWith("/api/")) return;
    event.preventDefault();
    this.navigate(url.pathname + url.search);
  }

  async render(): Promise<void> {
    const generation = ++this.generation;
    this.cleanup?.();
    this.cleanup = null;
    const path = location.pathname;
    let page = this.notFound;
    let params: Record<string, string> = {};
    for (const route of this.routes) {
      const m = route.regex.exec(path);
      if (m !== null) {
        page = route.page;
        params = Object.fromEntries(route.keys.map((k, i) => [k, decodeURIComponent(m[i + 1] as string)]));
        break;
      }
    }
    this.outlet.replaceChildren();
    const cleanup = await page(this.outlet, params);
    if (typeof cleanup !== "function") return;
    if (generation === this.generation) this.cleanup = cleanup;
    else cleanup(); // the user navigated on while this page loaded
  }
}
