// Shared by the JS tests: a static server on 127.0.0.1 (repo root; /models/ also finds
// fetched models in .cache/models) and headless Debian Chromium through playwright-core.
// The server lives in tools/serve.mjs (also `npm start`, the demo page).
export { root, serve, resolveStatic } from "../../tools/serve.mjs";

export const chromiumArgs = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-quic",
  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--enable-unsafe-webgpu"];

/// Debian's Chromium (never a downloaded browser); `extraArgs` e.g. fake media devices.
export async function launchChromium(extraArgs = []) {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: "/usr/bin/chromium", args: [...chromiumArgs, ...extraArgs] });
}
