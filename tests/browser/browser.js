/**
 * Headless Chromium for the browser tests: Debian's `chromium` (`make test` installs it with
 * apt-get when missing) driven by npm `playwright-core`, which downloads no browser of its
 * own.  The flags matter: without the background-networking ones the
 * browser keeps trying hosts this machine cannot reach.
 *
 * `page.on("pageerror")` and console errors are collected per page (`errorsOf(page)`), so a
 * test can assert that a page ran without an error.
 */

import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

import { ROOT } from "../../clients/js/test/gateway.js";

export const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"];

function executable() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  try {
    return execFileSync("sh", ["-c", "command -v chromium || command -v chromium-browser"]).toString().trim();
  } catch {
    throw new Error("chromium is not installed (make test installs it with apt-get)");
  }
}

export function launch() {
  return chromium.launch({ executablePath: executable(), args: FLAGS, headless: true });
}

const errors = new WeakMap();

/** A new page in a new context (its own cookies and storage: another user). */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  const page = await context.newPage();
  const list = [];
  errors.set(page, list);
  page.on("pageerror", (error) => list.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") list.push(message.text());
  });
  return page;
}

export function errorsOf(page) {
  return errors.get(page) || [];
}

/**
 * Where screenshots go: `REALTIME_SCREENSHOTS` (`make screenshots` sets it to docs/img, whose
 * PNGs the README shows), else a temporary folder (the run still makes them).
 */
export function screenshotPath(name) {
  const folder = process.env.REALTIME_SCREENSHOTS
    ? path.resolve(ROOT, process.env.REALTIME_SCREENSHOTS)
    : path.join(tmpdir(), "realtime-screenshots");
  mkdirSync(folder, { recursive: true });
  return path.join(folder, name);
}
