"""Evaluate a segmentation pipeline on labeled cases, through the same path the node runs.

Cases (:func:`find_cases`) come in one of two layouts:

* **NIfTI**: ``images/<name>.nii[.gz]`` with ``labels/<name>.nii[.gz]`` (same file name; label > 0.5
  is inside). Each image is first written as a DICOM MR series (:mod:`pipelines.nifti_series`), so
  the pipeline reads DICOM exactly as in the node; the reference mask is sampled onto the grid of
  the volume built from that series (:func:`pipelines.nifti_series.read_mask_on_grid`).
* **DICOM**: ``images/<name>/`` holds one series (any file names); the ground truth is a DICOM SEG,
  ``labels/<name>.dcm`` or the SEG file inside ``labels/<name>/``. Its frames are matched to the
  source images through the SOP Instance UIDs they reference (:mod:`pipelines.seg_reader`).

For each case the pipeline's SEG is read back onto the source volume grid and compared with the
reference (Grad-CAM SEGs of ``explain = "gradcam"`` are not segmentations and are never scored). Foreground is the union of all SEG segments (and, for NIfTI labels, every label > 0.5).
Metrics, all on the source voxel grid (column, row, slice):

* Dice = 2 |P n R| / (|P| + |R|) (1.0 when both are empty);
* HD95: 95th percentile of the symmetric surface distances in mm, with the voxel spacing
  (``monai.metrics.compute_hausdorff_distance``, ``percentile=95``); ``None`` when a mask is empty;
* volumes in mL (= cm^3): voxel count x |det(affine)| / 1000;
* seconds: wall time of ``Pipeline.run`` (read, volume, inference, writers), model already loaded.

:func:`evaluate` writes ``report.json`` and a self-contained ``report.html`` (inline SVG plot and
inline PNG overlays; no external assets). This module is pure: no database, no network, no CLI.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from pipelines.base import Pipeline, SourceSeries
from pipelines.explain import GRADCAM_CONTENT_LABEL
from pipelines.nifti_series import read_mask_on_grid, write_nifti_as_series
from pipelines.progress import progress
from pipelines.seg_reader import seg_mask_on_volume
from pipelines.volume import Volume, load_series

SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class EvaluationError(Exception):
    """The inputs cannot be evaluated (no cases, unmatched names, no SEG ...); the message says why."""


@dataclass(frozen=True)
class LabeledCase:
    """One image with its reference: ``image`` is a NIfTI file or a DICOM series folder, ``label``
    a NIfTI mask or a DICOM SEG file."""

    name: str
    image: Path
    label: Path

    @property
    def is_nifti(self) -> bool:
        return self.image.is_file()


def _nifti_stem(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _is_seg(path: Path) -> bool:
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # noqa: BLE001 - not a DICOM file: not a SEG
        return False
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES or ds.get("Modality") == "SEG"


def _seg_in(folder: Path) -> Path:
    segs = [p for p in sorted(folder.rglob("*")) if p.is_file() and _is_seg(p)]
    if len(segs) != 1:
        raise EvaluationError(f"{folder}: expected exactly one DICOM SEG file, found {len(segs)}")
    return segs[0]


def find_cases(images: Path, labels: Path) -> list[LabeledCase]:
    """Pair images with labels by name (see the module docstring); sorted by name.

    Raises :class:`EvaluationError` when a folder is missing, when no case is found, or when an
    image has no label of the same name (every unmatched name is listed).
    """
    for folder in (images, labels):
        if not folder.is_dir():
            raise EvaluationError(f"{folder} is not a folder")
    cases: list[LabeledCase] = []
    unmatched: list[str] = []
    for entry in sorted(images.iterdir()):
        stem = _nifti_stem(entry)
        if entry.is_file() and stem is not None:
            candidates = [labels / f"{stem}{suffix}" for suffix in NIFTI_SUFFIXES]
            label = next((c for c in candidates if c.is_file()), None)
            if label is None:
                unmatched.append(entry.name)
            else:
                cases.append(LabeledCase(stem, entry, label))
        elif entry.is_dir():
            if (labels / f"{entry.name}.dcm").is_file():
                cases.append(LabeledCase(entry.name, entry, labels / f"{entry.name}.dcm"))
            elif (labels / entry.name).is_dir():
                cases.append(LabeledCase(entry.name, entry, _seg_in(labels / entry.name)))
            else:
                unmatched.append(entry.name + "/")
    if unmatched:
        raise EvaluationError(f"no label of the same name in {labels} for: {', '.join(unmatched)}")
    if not cases:
        raise EvaluationError(f"no cases in {images} (NIfTI files *.nii[.gz] or DICOM series folders)")
    return cases


# ---------------------------------------------------------------------------------------- metrics


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of one shape; 1.0 when both are empty."""
    total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(reference))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(prediction & reference)) / total


def hausdorff95_mm(prediction: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float]) -> float | None:
    """95th percentile symmetric Hausdorff distance (mm) between the mask surfaces, with the voxel
    spacing along each array axis (``Volume.spacing_mm``); ``None`` when either mask is empty.

    Computed by MONAI (``compute_hausdorff_distance``, Euclidean, ``percentile=95``), cropped to the
    bounding box of both masks plus a one-voxel margin first (same distances, less work).
    """
    if not prediction.any() or not reference.any():
        return None
    import torch
    from monai.metrics import compute_hausdorff_distance

    both = np.argwhere(prediction | reference)
    low = np.maximum(both.min(axis=0) - 1, 0)
    high = np.minimum(both.max(axis=0) + 2, prediction.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    p = torch.from_numpy(np.ascontiguousarray(prediction[box]))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(reference[box]))[None, None]
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                           spacing=[float(s) for s in spacing_mm])
    result = float(value.reshape(-1)[0])
    return result if math.isfinite(result) else None


@dataclass
class CaseResult:
    """Metrics of one case (see the module docstring for definitions and units)."""

    name: str
    dice: float | None = None
    hd95_mm: float | None = None
    predicted_ml: float | None = None
    reference_ml: float | None = None
    volume_error_percent: float | None = None
    seconds: float | None = None
    error: str | None = None
    overlay_png: bytes | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("overlay_png")
        return data


# ---------------------------------------------------------------------------------------- one case


def _series_files(case: LabeledCase, workdir: Path) -> list[Path]:
    if case.is_nifti:
        return write_nifti_as_series(case.image, workdir / case.name, patient_name=f"Evaluation^{case.name}"[:64],
                                     patient_id=case.name[:64], series_description=f"evaluation {case.name}")
    files = [p for p in sorted(case.image.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return [p for p in files if not _is_seg(p)]


def _union_of_segments(seg_path: Path, volume: Volume) -> np.ndarray:
    seg = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    mask = np.zeros(volume.array.shape, dtype=bool)
    for number in numbers:
        mask |= seg_mask_on_volume(seg_path, volume, number)
    return mask


def evaluate_case(pipeline: Pipeline, case: LabeledCase, workdir: Path, seg_out: Path | None = None) -> CaseResult:
    """Run ``pipeline`` (already loaded) on one case and compare its SEG with the reference.

    ``workdir`` receives the DICOM series written from a NIfTI image; ``seg_out``, when given, the
    pipeline's SEG. Exceptions propagate (``evaluate`` records them per case).
    """
    files = _series_files(case, workdir)
    if not files:
        raise EvaluationError(f"{case.image}: no DICOM files")
    series_uid = str(pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesInstanceUID)
    start = time.perf_counter()
    result = pipeline.run(SourceSeries(series_uid, tuple(files)))
    seconds = time.perf_counter() - start
    segs = [ds for ds in result.datasets if str(ds.SOPClassUID) in SEG_SOP_CLASSES
            and ds.get("ContentLabel") != GRADCAM_CONTENT_LABEL]  # a saliency map is no segmentation
    if not segs:
        raise EvaluationError(f"pipeline {pipeline.name!r} produced no SEG for case {case.name} "
                              "(only segmentation pipelines can be evaluated)")
    seg_path = seg_out or workdir / f"{case.name}.seg.dcm"
    seg_path.parent.mkdir(parents=True, exist_ok=True)
    segs[0].save_as(seg_path, enforce_file_format=True)
    volume = load_series(files)
    predicted = _union_of_segments(seg_path, volume)
    if case.is_nifti:
        reference = read_mask_on_grid(case.label, volume.affine, volume.array.shape)
    else:
        reference = _union_of_segments(case.label, volume)
    predicted_ml = float(np.count_nonzero(predicted)) * volume.voxel_volume_ml
    reference_ml = float(np.count_nonzero(reference)) * volume.voxel_volume_ml
    return CaseResult(
        name=case.name,
        dice=dice(predicted, reference),
        hd95_mm=hausdorff95_mm(predicted, reference, volume.spacing_mm),
        predicted_ml=predicted_ml,
        reference_ml=reference_ml,
        volume_error_percent=100.0 * (predicted_ml - reference_ml) / reference_ml if reference_ml > 0 else None,
        seconds=seconds,
        overlay_png=overlay_png(volume, predicted, reference),
    )


# ---------------------------------------------------------------------------------------- pictures

REFERENCE_RGB = np.array([40, 220, 80], dtype=np.float32)
PREDICTION_RGB = np.array([240, 60, 60], dtype=np.float32)


def _window(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return np.clip((image - low) / max(float(high - low), 1e-6), 0, 1)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask that have a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _panel(image: np.ndarray, predicted: np.ndarray, reference: np.ndarray, pixel_mm: tuple[float, float],
           height: int) -> Image.Image:
    """(row, column) arrays -> RGB panel of ``height`` px, physical aspect ratio: prediction tinted
    red with a red outline, reference outlined green."""
    grey = (_window(image)[..., None] * 255).repeat(3, axis=2)
    rgb = np.where(predicted[..., None], 0.65 * grey + 0.35 * PREDICTION_RGB, grey)
    rows, cols = image.shape
    scale = max(1, int(height // max(rows, 1)))
    big = lambda a: a.repeat(scale, axis=0).repeat(scale, axis=1)  # noqa: E731 - outlines stay 1 px thin
    rgb = big(rgb)
    rgb[_outline(big(predicted))] = PREDICTION_RGB
    rgb[_outline(big(reference))] = REFERENCE_RGB
    width = int(round(height * (cols * pixel_mm[1]) / max(rows * pixel_mm[0], 1e-6)))
    return Image.fromarray(rgb.astype(np.uint8)).resize((max(width, 1), height), Image.NEAREST)


def overlay_png(volume: Volume, predicted: np.ndarray, reference: np.ndarray, height: int = 240) -> bytes:
    """PNG of the axial, coronal and sagittal slices through the reference's centre (the
    prediction's when the reference is empty): prediction red, reference green outline."""
    sx, sy, sz = volume.spacing_mm
    anchor = reference if reference.any() else predicted
    centre = np.argwhere(anchor).mean(axis=0).round().astype(int) if anchor.any() else np.array(anchor.shape) // 2
    i, j, k = (int(c) for c in centre)
    a, p, r = volume.array, predicted, reference
    panels = [
        _panel(a[:, :, k].T, p[:, :, k].T, r[:, :, k].T, (sy, sx), height),
        _panel(a[:, j, :].T[::-1], p[:, j, :].T[::-1], r[:, j, :].T[::-1], (sz, sx), height),
        _panel(a[i, :, :].T[::-1], p[i, :, :].T[::-1], r[i, :, :].T[::-1], (sz, sy), height),
    ]
    canvas = Image.new("RGB", (sum(x.width for x in panels) + 6 * (len(panels) - 1), height), "black")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 6
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def volume_plot_svg(cases: Sequence[CaseResult], size: int = 420) -> str:
    """Inline SVG scatter plot of predicted vs reference volume (mL) with the identity line."""
    points = [(c.reference_ml, c.predicted_ml, c.name) for c in cases
              if c.reference_ml is not None and c.predicted_ml is not None]
    margin, inner = 60, size - 80
    top = max([max(x, y) for x, y, _ in points] + [1e-3]) * 1.1
    step = 10 ** math.floor(math.log10(top / 4)) if top > 0 else 1.0
    step *= next(m for m in (1, 2, 5, 10) if top / (step * m) <= 6)
    sx = lambda v: margin + inner * v / top  # noqa: E731
    sy = lambda v: size - margin + 20 - inner * v / top  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect x="{margin}" y="{sy(top):.1f}" width="{inner}" height="{inner}" fill="#fafafa" stroke="#888"/>',
           f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(top):.1f}" y2="{sy(top):.1f}" stroke="#999" '
           'stroke-dasharray="4 3"/>']
    tick = 0.0
    while tick <= top:
        out.append(f'<text x="{sx(tick):.1f}" y="{sy(0) + 14:.1f}" text-anchor="middle">{tick:g}</text>')
        out.append(f'<text x="{sx(0) - 6:.1f}" y="{sy(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
        tick += step
    out.append(f'<text x="{margin + inner / 2}" y="{size - 8}" text-anchor="middle">reference volume (mL)</text>')
    out.append(f'<text transform="translate(14 {sy(top / 2):.1f}) rotate(-90)" text-anchor="middle">'
               'predicted volume (mL)</text>')
    for x, y, name in points:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#d33" fill-opacity="0.8">'
                   f'<title>{html.escape(name)}: {y:.1f} vs {x:.1f} mL</title></circle>')
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- report

METRICS = ("dice", "hd95_mm", "predicted_ml", "reference_ml", "volume_error_percent", "seconds")


def summarise(cases: Sequence[CaseResult]) -> dict[str, dict[str, float | None]]:
    """Per metric: mean, std, median, min, max over the cases where it is defined, and ``n``."""
    summary: dict[str, dict[str, float | None]] = {}
    for metric in METRICS:
        values = np.array([getattr(c, metric) for c in cases if getattr(c, metric) is not None], dtype=np.float64)
        if values.size == 0:
            summary[metric] = {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
        else:
            summary[metric] = {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
                               "median": float(np.median(values)), "min": float(values.min()),
                               "max": float(values.max())}
    return summary


@dataclass
class EvaluationReport:
    """Everything ``report.json`` holds, plus the overlay images for the HTML."""

    pipeline: str
    algorithm: str
    cases: list[CaseResult]
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())

    @property
    def summary(self) -> dict[str, dict[str, float | None]]:
        return summarise([c for c in self.cases if c.error is None])

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if c.error is not None]

    def as_dict(self) -> dict:
        summary = self.summary
        return {
            "pipeline": self.pipeline,
            "algorithm": self.algorithm,
            "created": self.created,
            "n_cases": len(self.cases),
            "n_failed": len(self.failed),
            "mean_dice": summary["dice"]["mean"],
            "median_dice": summary["dice"]["median"],
            "mean_hd95_mm": summary["hd95_mm"]["mean"],
            "mean_volume_error_percent": summary["volume_error_percent"]["mean"],
            "mean_seconds": summary["seconds"]["mean"],
            "summary": summary,
            "cases": [c.as_dict() for c in self.cases],
        }


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report_html(report: EvaluationReport) -> str:
    """A self-contained HTML page: summary, per-case table, volume plot, one overlay per case."""
    data = report.as_dict()
    summary = data["summary"]
    digits = {"dice": 3, "hd95_mm": 2, "predicted_ml": 1, "reference_ml": 1, "volume_error_percent": 1, "seconds": 2}
    titles = {"dice": "Dice", "hd95_mm": "HD95 (mm)", "predicted_ml": "Predicted (mL)",
              "reference_ml": "Reference (mL)", "volume_error_percent": "Volume error (%)", "seconds": "Seconds"}
    rows_summary = "".join(
        f"<tr><th>{titles[m]}</th>" + "".join(f"<td>{_fmt(summary[m][s], digits[m])}</td>"
                                             for s in ("mean", "std", "median", "min", "max"))
        + f"<td>{summary[m]['n']}</td></tr>" for m in METRICS)
    rows_cases = []
    for case in report.cases:
        cells = "".join(f"<td>{_fmt(getattr(case, m), digits[m])}</td>" for m in METRICS)
        status = "ok" if case.error is None else f'<span class="err">{html.escape(case.error)}</span>'
        rows_cases.append(f"<tr><th>{html.escape(case.name)}</th>{cells}<td>{status}</td></tr>")
    figures = []
    for case in report.cases:
        if case.overlay_png is None:
            continue
        encoded = base64.b64encode(case.overlay_png).decode("ascii")
        figures.append(f'<figure><img alt="overlay {html.escape(case.name)}" src="data:image/png;base64,{encoded}">'
                       f"<figcaption>{html.escape(case.name)}: Dice {_fmt(case.dice, 3)}, "
                       f"HD95 {_fmt(case.hd95_mm, 1)} mm</figcaption></figure>")
    head = "".join(f"<th>{titles[m]}</th>" for m in METRICS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>radnode evaluation: {html.escape(report.pipeline)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; font-size: 13px; }}
thead th {{ background: #eee; }} tbody th {{ text-align: left; }}
.err {{ color: #b00; }} figure {{ display: inline-block; margin: 8px; }}
figcaption {{ font-size: 12px; color: #444; }} .legend span {{ padding: 0 6px; }}
</style></head><body>
<h1>Evaluation of pipeline {html.escape(report.pipeline)}</h1>
<p>Algorithm {html.escape(report.algorithm)}; {len(report.cases)} cases, {len(report.failed)} failed;
created {html.escape(report.created)}. Mean Dice <b>{_fmt(data['mean_dice'], 3)}</b>.</p>
<h2>Summary</h2>
<table><thead><tr><th></th><th>mean</th><th>std</th><th>median</th><th>min</th><th>max</th><th>n</th></tr></thead>
<tbody>{rows_summary}</tbody></table>
<h2>Cases</h2>
<table><thead><tr><th>case</th>{head}<th>status</th></tr></thead><tbody>{''.join(rows_cases)}</tbody></table>
<h2>Predicted vs reference volume</h2>
{volume_plot_svg([c for c in report.cases if c.error is None])}
<h2>Overlays</h2>
<p class="legend"><span style="color:#d33">&#9632; prediction</span><span style="color:#2b5">&#9633; reference
outline</span> (axial, coronal, sagittal through the reference centre)</p>
{''.join(figures)}
</body></html>
"""


def evaluate(
    pipeline: Pipeline,
    cases: Sequence[LabeledCase],
    out_dir: Path,
    *,
    show_progress: bool = True,
    keep_series: bool = False,
) -> EvaluationReport:
    """Evaluate a loaded-or-not ``pipeline`` on ``cases``; write ``out_dir/report.json``,
    ``out_dir/report.html``, ``out_dir/segs/<case>.dcm`` and ``out_dir/overlays/<case>.png``.

    A case that fails (refusal, error) is recorded with its message and does not stop the others.
    The DICOM series written from NIfTI images go to a temporary folder, or to
    ``out_dir/series/`` with ``keep_series``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.load()
    workdir = out_dir / "series" if keep_series else Path(tempfile.mkdtemp(prefix="radnode-eval-"))
    results: list[CaseResult] = []
    bar = progress(cases, total=len(cases), desc=f"evaluate {pipeline.name}", enabled=show_progress)
    try:
        for case in bar:
            try:
                result = evaluate_case(pipeline, case, workdir, seg_out=out_dir / "segs" / f"{case.name}.dcm")
            except Exception as exc:  # noqa: BLE001 - one bad case is reported, the others still run
                result = CaseResult(name=case.name, error=f"{type(exc).__name__}: {exc}")
            if result.overlay_png is not None:
                (out_dir / "overlays").mkdir(exist_ok=True)
                (out_dir / "overlays" / f"{case.name}.png").write_bytes(result.overlay_png)
            results.append(result)
            bar.set_postfix_str(f"{case.name} Dice {_fmt(result.dice, 3)}")
            if not keep_series:
                shutil.rmtree(workdir / case.name, ignore_errors=True)
    finally:
        if not keep_series:
            shutil.rmtree(workdir, ignore_errors=True)
    report = EvaluationReport(pipeline=pipeline.name,
                              algorithm=f"{pipeline.algorithm_name} {pipeline.algorithm_version}", cases=results)
    (out_dir / "report.json").write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    (out_dir / "report.html").write_text(report_html(report), encoding="utf-8")
    return report
