// One bundle per view, written into the Python package (a wheel artifact, never committed).
// No network imports: everything a view needs is bundled here.
import { build } from "esbuild";
import { readdirSync } from "node:fs";

const views = readdirSync(new URL(".", import.meta.url))
  .filter((f) => f.endsWith("_view.js") || f === "export_runtime.js") // the runtime of saved pages (export.py)
  .map((f) => `./${f}`);

await build({
  entryPoints: views,
  bundle: true,
  format: "esm",
  outdir: "../nbinspect/static",
  entryNames: "[name]",
  target: "es2020",
  minify: false,
  // Exported HTML loads bundles next to require.js; keep our ESM from registering as an AMD module.
  define: { "define.amd": "false" },
  logLevel: "warning",
});
