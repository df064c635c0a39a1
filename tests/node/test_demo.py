"""`radnode demo`, the README's first command after setup, runs end to end on the real sample."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from PIL import Image


def test_demo_delivers_results_and_reports_the_brain_volume(tmp_path: Path, mni152_paths) -> None:  # type: ignore[no-untyped-def]
    workdir = tmp_path / "demo"

    result = subprocess.run([sys.executable, "-m", "node.cli", "demo", "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=900)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 SEG, 1 SR" in result.stdout
    volume = float(re.search(r"brain volume \(from the SR\): (\d+) mL", result.stdout).group(1))
    assert 1700 < volume < 2100  # deepbet's intracranial mask of MNI152 is ~1904 mL (FIELD-NOTES.md)
    assert re.search(r"last image -> last result at the PACS: [\d.]+ s", result.stdout)
    png = Image.open(workdir / "overlay.png")
    assert png.width > 2 * png.height  # three panels side by side
    pixels = png.convert("RGB").getdata()
    assert sum(1 for r, g, b in pixels if r > g + 40 and r > b + 40) > 10_000  # the tinted brain
    log = (workdir / "radnode.log").read_text()
    assert "Demo^MNI152" not in log and "DEMO-0001" not in log
