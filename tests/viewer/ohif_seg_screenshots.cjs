// Opens one study in the prebuilt OHIF viewer with headless Debian Chromium (playwright-core), loads
// its SEG the way a radiologist does, and takes two screenshots: segment shown, segment hidden.
//
// Usage: node ohif_seg_screenshots.cjs '<json>' with keys
//   url            viewer URL (…/viewer?StudyInstanceUIDs=…)
//   segDescription SeriesDescription of the SEG (to pick its thumbnail)
//   segmentLabel   SegmentLabel of its segment (to pick its row in the Segmentation panel)
//   shownPng, hiddenPng, failurePng   output paths
//   timeoutMs      overall budget for one wait (default 90000)
// Prints one JSON line to stdout: {viewportBox, segmentColor, steps[], console[]}; exit 1 on failure
// (after a failure screenshot). UI flow of OHIF 3.13 (longitudinal "viewer" mode):
//   1. the MR series is hung in the viewport; the SEG is a thumbnail without image in the study browser
//   2. double-click the SEG thumbnail: the SEG viewport shows it over its source and asks
//      "Do you want to open this Segmentation?" (data-cy=yes-hydrate-btn)
//   3. Yes: the SEG is hydrated into the MR viewport and listed in the Segmentation panel (data-cy=data-row)
//   4. the eye button of the segment row hides it (aria-label "Hide" / data-cy=data-row-visibility-toggle)
'use strict';

const { chromium } = require('playwright-core');

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--use-angle=swiftshader',
  '--enable-unsafe-swiftshader',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

const opts = JSON.parse(process.argv[2]);
const timeout = opts.timeoutMs || 90000;
const t0 = Date.now();
const steps = [];
const consoleLines = [];

function step(name) {
  steps.push({ name, at_s: (Date.now() - t0) / 1000 });
}

// All cornerstone viewports report 'rendered' (OHIF exposes cornerstone on window for its own e2e tests).
async function waitRendered(page) {
  await page.waitForFunction(
    () => {
      const cs = window.cornerstone;
      if (!cs || !cs.getRenderingEngines) return false;
      const vps = cs.getRenderingEngines().flatMap(e => (e.getViewports ? e.getViewports() : []));
      return vps.length > 0 && vps.every(vp => vp && vp.viewportStatus === 'rendered');
    },
    null,
    { timeout }
  );
}

async function main() {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout,
  });
  let page;
  try {
    const context = await browser.newContext({
      viewport: { width: 1440, height: 900 },
      deviceScaleFactor: 1,
    });
    page = await context.newPage();
    page.setDefaultTimeout(timeout);
    page.on('console', msg => {
      if (msg.type() === 'error' || msg.type() === 'warning') {
        consoleLines.push(`${msg.type()}: ${msg.text()}`.slice(0, 400));
      }
    });
    page.on('pageerror', err => consoleLines.push(`pageerror: ${String(err)}`.slice(0, 400)));

    await page.goto(opts.url, { waitUntil: 'domcontentloaded' });
    step('page loaded');

    // 1. the source series renders, the SEG thumbnail is listed
    const segThumb = page
      .locator('[data-cy="study-browser-thumbnail-no-image"]')
      .filter({ hasText: opts.segDescription })
      .first();
    await segThumb.waitFor({ state: 'visible' });
    await waitRendered(page);
    step('MR series rendered, SEG thumbnail listed');

    // A first visit opens OHIF's onboarding tour over the whole page: skip it, as a new user would.
    const skipTour = page.locator('.shepherd-element').getByRole('button', { name: /skip/i });
    try {
      await skipTour.first().waitFor({ state: 'visible', timeout: 5000 });
      await skipTour.first().click();
      await page.locator('.shepherd-modal-is-visible').waitFor({ state: 'detached', timeout: 10000 });
      step('onboarding tour skipped');
    } catch (e) {
      if (await page.locator('.shepherd-modal-is-visible').count()) throw e;
    }

    // 2. open the SEG: double-click its thumbnail
    await segThumb.dblclick();
    const yes = page.locator('[data-cy="yes-hydrate-btn"]');
    const rows = page.locator('[data-cy="data-row"]');
    await yes.or(rows.first()).first().waitFor({ state: 'visible' });
    step('SEG opened (hydration prompt)');

    // 3. accept the prompt: the segmentation is hydrated and listed in the Segmentation panel
    if (await yes.isVisible()) {
      await yes.click();
    }
    try {
      await rows.first().waitFor({ state: 'visible', timeout: 15000 });
    } catch (e) {
      // the panel did not come forward by itself: open the Segmentation tab of the right panel
      await page.locator('[data-cy^="panelSegmentation"][data-cy$="-btn"]').first().click();
      await rows.first().waitFor({ state: 'visible' });
    }
    const row = rows.filter({ hasText: opts.segmentLabel }).first();
    await row.waitFor({ state: 'visible' });
    await waitRendered(page);
    step(`segmentation hydrated, "${opts.segmentLabel}" listed`);

    // a middle slice (the stack opens at one end of the head, where there is little brain)
    const nav = await page.evaluate(async () => {
      const vp = window.cornerstone.getEnabledElements()[0].viewport;
      const ids = vp.getImageIds();
      const index = Math.floor(ids.length / 2);
      await vp.setImageIdIndex(index);
      vp.render();
      return { index, count: ids.length };
    });
    await waitRendered(page);
    await page.mouse.move(5, 5); // nothing hovered in the viewport
    await page.waitForTimeout(1500); // labelmap and overlays settle
    step(`slice ${nav.index + 1}/${nav.count} shown`);

    const viewportBox = await page.evaluate(() => {
      const vp = window.cornerstone.getEnabledElements()[0].viewport;
      const r = vp.element.getBoundingClientRect();
      return { x: r.x, y: r.y, width: r.width, height: r.height };
    });
    // The segment colour as the panel shows it (the dot in the row).
    const segmentColor = await row
      .locator('span.rounded-full')
      .first()
      .evaluate(el => getComputedStyle(el).backgroundColor)
      .catch(() => null);

    await page.screenshot({ path: opts.shownPng });
    step('screenshot: segment shown');

    // 4. hide the segment with the eye button of its row
    const toggle = row.locator('[data-cy="data-row-visibility-toggle"], button[aria-label="Hide"]').first();
    await toggle.click();
    await page.locator('[data-cy="data-row"] button[aria-label="Show"], [data-cy="data-row-visibility-toggle"]')
      .first()
      .waitFor({ state: 'attached' });
    await waitRendered(page);
    await page.mouse.move(5, 5);
    await page.waitForTimeout(1500);
    await page.screenshot({ path: opts.hiddenPng });
    step('screenshot: segment hidden');

    process.stdout.write(
      JSON.stringify({ viewportBox, segmentColor, slice: nav, steps, console: consoleLines.slice(-40) }) + '\n'
    );
  } catch (err) {
    if (page && opts.failurePng) {
      await page.screenshot({ path: opts.failurePng }).catch(() => {});
    }
    const error = String(err && err.stack ? err.stack : err);
    process.stdout.write(JSON.stringify({ error, steps, console: consoleLines.slice(-40) }) + '\n');
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main().catch(err => {
  process.stdout.write(JSON.stringify({ error: String(err), steps }) + '\n');
  process.exit(1);
});
