"""Seconds per stage of the brain-extraction pipeline on the MNI152 head, on this machine.

Not a test. Run: ``.venv/bin/python bench/pipeline.py [--threads 2] [--device cpu]``.
Prints a table for a first job (model loaded in that job) and a second job (model reused).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.base import RuntimeOptions  # noqa: E402
from pipelines.brain_extraction import BRAIN, BrainExtractionPipeline  # noqa: E402
from pipelines.nifti_series import write_nifti_as_series  # noqa: E402
from pipelines.settings import BrainExtractionSettings  # noqa: E402
from pipelines.volume import build_volume, read_datasets  # noqa: E402
from pipelines.writers.overlay import write_overlay  # noqa: E402
from pipelines.writers.seg import write_seg  # noqa: E402
from pipelines.writers.sr import SegmentVolume, write_sr  # noqa: E402

STAGES = ["load model", "read series", "build volume", "inference", "write SEG", "write SR", "write SC"]


def job(pipeline: BrainExtractionPipeline, paths: list[Path], series_uid: str) -> dict[str, float]:
    times: dict[str, float] = {}

    def timed(stage: str, fn):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        value = fn()
        times[stage] = time.perf_counter() - start
        return value

    loaded = pipeline._network is not None
    timed("load model", pipeline.load)
    if loaded:
        times["load model"] = 0.0
    datasets = timed("read series", lambda: read_datasets(paths))
    volume = timed("build volume", lambda: build_volume(datasets))
    mask = timed("inference", lambda: pipeline.segment(volume))
    identity = pipeline.identity(series_uid)
    labels = mask.astype(np.uint8)
    seg = timed("write SEG", lambda: write_seg(volume, labels, [BRAIN], identity))
    ml = float(mask.sum()) * volume.voxel_volume_ml
    timed("write SR", lambda: write_sr(volume.datasets, identity, seg=seg, volumes=[SegmentVolume(1, BRAIN, ml)]))
    images = timed("write SC", lambda: write_overlay(volume, labels, [1], identity))
    times["_sc_images"] = len(images)
    times["_ml"] = ml
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    t1 = ROOT / ".samples" / "MNI152_T1.nii.gz"
    if not t1.is_file():
        sys.exit("sample missing: run scripts/bootstrap.sh")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_nifti_as_series(t1, Path(tmp), patient_name="MNI^152", patient_id="MNI152")
        uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
        pipeline = BrainExtractionPipeline(
            "brain-extraction", BrainExtractionSettings(), RuntimeOptions(device=args.device, torch_threads=args.threads)
        )
        first = job(pipeline, paths, uid)
        second = job(pipeline, paths, uid)
    print(f"MNI152 T1 as DICOM: {len(paths)} slices 218 x 182, device {pipeline.device}, {args.threads} torch threads")
    print(f"brain volume {first['_ml']:.1f} mL, {int(first['_sc_images'])} overlay images")
    print(f"{'stage':<14}{'first job s':>13}{'second job s':>14}")
    for stage in STAGES:
        print(f"{stage:<14}{first[stage]:>13.2f}{second[stage]:>14.2f}")
    total = lambda t: sum(t[s] for s in STAGES)  # noqa: E731
    print(f"{'total':<14}{total(first):>13.2f}{total(second):>14.2f}")


if __name__ == "__main__":
    main()
