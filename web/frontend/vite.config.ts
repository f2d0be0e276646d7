/// <reference types="vitest/config" />
// Builds the single-page app into the Python package (src/cryostack/web/static), which
// `cryostack serve` serves; `npm run dev` proxies /api to a server on port 8600.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const outDir = fileURLToPath(new URL("../../src/cryostack/web/static", import.meta.url));

export default defineConfig({
  build: {
    outDir,
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 200,
  },
  server: {
    proxy: { "/api": "http://127.0.0.1:8600" },
  },
  test: {
    environment: "happy-dom",
    include: ["tests/**/*.test.ts"],
  },
});
