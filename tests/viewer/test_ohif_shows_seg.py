"""As a radiologist sees it: the brain SEG of the MNI152 head, stored with its source series in Orthanc
(DICOMweb plugin), opened in OHIF 3.13 (the prebuilt viewer of the npm package @ohif/app) in headless
Chromium, shows the brain overlay.

The browser loads the SEG through OHIF's own UI (double-click its thumbnail, accept "open this
Segmentation?"), then hides the segment with the eye button of its row in the Segmentation panel.
The screenshot with the segment shown must differ from the one with it hidden over a large part of the
viewport, and the changed pixels must be tinted towards the segment colour the panel shows.

Artifacts, kept for a person to look at: test-artifacts/viewer/ohif_seg_shown.png,
ohif_seg_hidden.png, ohif_seg_diff.png (changed pixels in white over the hidden view, dimmed),
result.json (numbers below, timings, browser console), and ohif_failure.png when the browser step fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from . import harness
from .sample_study import build_study

pytestmark = [pytest.mark.viewer, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "viewer"
SCRIPT = Path(__file__).resolve().parent / "ohif_seg_screenshots.cjs"

# A channel difference above this is a changed pixel (screenshots are lossless PNG; rendering of the
# same frame is deterministic, so unchanged pixels differ by 0).
CHANGED_LEVEL = 24
# The brain covers roughly half of a mid-axial slice; the image fills a good part of the viewport.
# Require at least 3 % of the viewport and 5000 pixels to change.
MIN_CHANGED_FRACTION = 0.03
MIN_CHANGED_PIXELS = 5000
# Mean change over the changed pixels must point towards the segment colour (cosine similarity).
MIN_COLOR_COSINE = 0.9


def _rgb(text: str | None) -> np.ndarray | None:
    match = re.match(r"rgba?\((\d+),\s*(\d+),\s*(\d+)", text or "")
    return np.array([int(v) for v in match.groups()], dtype=float) if match else None


def _viewport_crop(image: np.ndarray, box: dict) -> np.ndarray:
    x0, y0 = max(0, int(np.ceil(box["x"]))), max(0, int(np.ceil(box["y"])))
    x1 = min(image.shape[1], int(box["x"] + box["width"]))
    y1 = min(image.shape[0], int(box["y"] + box["height"]))
    if x1 - x0 < 100 or y1 - y0 < 100:
        raise AssertionError(f"viewport too small or off screen: {box}")
    return image[y0:y1, x0:x1]


def test_ohif_shows_brain_seg_overlay(tmp_path: Path) -> None:
    missing = harness.missing_prerequisites()
    if missing:
        pytest.fail(f"viewer test prerequisites missing: {', '.join(missing)}; {harness.SETUP_HINT}")
    from PIL import Image

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    study = build_study(tmp_path / "study")
    timings["write_study_s"] = time.monotonic() - t0

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shown_png, hidden_png = ARTIFACTS / "ohif_seg_shown.png", ARTIFACTS / "ohif_seg_hidden.png"
    failure_png, diff_png = ARTIFACTS / "ohif_failure.png", ARTIFACTS / "ohif_seg_diff.png"
    for stale in (shown_png, hidden_png, failure_png, diff_png):
        stale.unlink(missing_ok=True)

    from pydicom import dcmread

    seg_header = dcmread(study.seg_file, stop_before_pixels=True)
    seg_description = str(seg_header.SeriesDescription)
    segment_label = str(seg_header.SegmentSequence[0].SegmentLabel)

    with harness.running_orthanc(tmp_path / "orthanc") as orthanc:
        t = time.monotonic()
        for path in study.all_files:
            orthanc.upload(path)
        timings["upload_s"] = time.monotonic() - t
        series = orthanc.get_json("/series?expand")
        modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
        assert modalities == ["MR", "SEG"], f"Orthanc holds series {modalities}"

        with harness.serving_ohif(harness.OHIF_DIST, orthanc.http_port) as viewer:
            url = f"{viewer.url}/viewer?StudyInstanceUIDs={study.study_instance_uid}"
            options = {
                "url": url,
                "segDescription": seg_description,
                "segmentLabel": segment_label,
                "shownPng": str(shown_png),
                "hiddenPng": str(hidden_png),
                "failurePng": str(failure_png),
                "timeoutMs": 90000,
            }
            t = time.monotonic()
            run = subprocess.run(
                ["node", str(SCRIPT), json.dumps(options)],
                cwd=SCRIPT.parent,
                capture_output=True,
                text=True,
                timeout=240,
            )
            timings["browser_s"] = time.monotonic() - t
            proxy_errors = list(viewer.errors)

    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    report = {"study_source": study.source, "url": url, "timings": timings, "proxy_errors": proxy_errors, **result}
    (ARTIFACTS / "result.json").write_text(json.dumps(report, indent=2))
    if run.returncode != 0 or "error" in result:
        pytest.fail(
            f"OHIF step failed (see {failure_png}):\n{result.get('error') or run.stderr[-3000:]}\n"
            f"steps: {result.get('steps')}\nproxy errors: {proxy_errors[:10]}\n"
            f"browser console (last lines): {json.dumps(result.get('console', [])[-15:], indent=1)}"
        )

    box = result["viewportBox"]
    shown = _viewport_crop(np.asarray(Image.open(shown_png).convert("RGB"), dtype=float), box)
    hidden = _viewport_crop(np.asarray(Image.open(hidden_png).convert("RGB"), dtype=float), box)

    # The MR image itself is on screen (a head on a black background), in grey.
    lit = hidden.mean(axis=2) > 40
    assert lit.mean() > 0.05, f"the viewport shows almost nothing ({lit.mean():.1%} lit) with the segment hidden"

    changed = np.abs(shown - hidden).max(axis=2) > CHANGED_LEVEL
    n_changed = int(changed.sum())
    fraction = n_changed / changed.size

    dimmed = (hidden * 0.5).astype(np.uint8)
    dimmed[changed] = 255
    Image.fromarray(dimmed).save(diff_png)

    color = _rgb(result.get("segmentColor"))
    delta = (shown - hidden)[changed].mean(axis=0) if n_changed else np.zeros(3)
    toward = (color - hidden[changed].mean(axis=0)) if (color is not None and n_changed) else None
    cosine = None
    if toward is not None:
        cosine = float(delta @ toward / (np.linalg.norm(delta) * np.linalg.norm(toward) + 1e-9))
    chroma_shown = float(np.ptp(shown[changed], axis=1).mean()) if n_changed else 0.0
    chroma_hidden = float(np.ptp(hidden[changed], axis=1).mean()) if n_changed else 0.0
    report.update(
        changed_pixels=n_changed,
        changed_fraction=round(fraction, 4),
        viewport_pixels=int(changed.size),
        mean_change_rgb=[round(v, 1) for v in delta.tolist()],
        segment_color=result.get("segmentColor"),
        color_cosine=cosine,
        chroma_shown=round(chroma_shown, 1),
        chroma_hidden=round(chroma_hidden, 1),
    )
    (ARTIFACTS / "result.json").write_text(json.dumps(report, indent=2))
    keys = ("changed_pixels", "changed_fraction", "mean_change_rgb", "segment_color", "color_cosine")
    summary = json.dumps({k: report[k] for k in (*keys, "chroma_shown", "chroma_hidden")})

    assert n_changed >= MIN_CHANGED_PIXELS and fraction >= MIN_CHANGED_FRACTION, (
        f"showing/hiding the segment changed too little of the viewport: {summary}"
    )
    assert color is not None, f"no segment colour in the Segmentation panel: {summary}"
    assert cosine is not None and cosine >= MIN_COLOR_COSINE, (
        f"changed pixels are not tinted towards the segment colour: {summary}"
    )
    assert chroma_shown > chroma_hidden + 15, f"the overlay does not tint the grey image: {summary}"

