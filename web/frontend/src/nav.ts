/** Navigation shared by the pages (set once by main.ts). */

let go: (path: string, replace?: boolean) => void = (path) => {
  location.assign(path);
};

export function setNavigator(navigate: (path: string, replace?: boolean) => void): void {
  go = navigate;
}

export function navigate(path: string, replace = false): void {
  go(path, replace);
}
