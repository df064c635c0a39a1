"""The study that tests/viewer opens in OHIF: the MNI152 T1 head as an axial MR series plus a brain SEG.

Sources, best first (``build_study`` says which one it used in ``Study.source``):

* production pipeline, when ``pipelines.registry`` exists: MR series from ``pipelines.nifti_series``,
  SEG from the ``brain-extraction`` pipeline (deepbet + ``pipelines.writers.seg``);
* production writers, when ``pipelines.nifti_series`` and ``pipelines.writers.seg`` exist: the same
  MR series, and the SEG written by ``pipelines.writers.seg.write_seg`` from the shipped mask;
* local helper (this module), while neither exists: a small NIfTI -> MR series converter and a
  highdicom SEG from the shipped mask, so the viewer harness can be built and debugged on its own.

Either way the test checks what radnode really sends to a PACS as soon as radnode can make it.

Coordinates of the local helper: NIfTI voxels are mapped to DICOM patient coordinates (LPS, mm)
through the NIfTI affine after reorientation to RAS+ (``nibabel.as_closest_canonical``):
x_LPS = -x_RAS, y_LPS = -y_RAS, z_LPS = z_RAS. Each axial slice is written with
ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]`` (rows run to the patient's left, columns to
posterior), the conventional radiological display (PS3.3 C.7.6.2.1.1).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[2] / ".samples"
T1_NIFTI = SAMPLES / "MNI152_T1.nii.gz"
MASK_NIFTI = SAMPLES / "MNI152_mask.nii.gz"

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class Study:
    """Files of one study on disk: the source MR series and the SEG that references it."""

    study_instance_uid: str
    source_files: tuple[Path, ...]
    seg_file: Path
    source: str  # "production" or "local helper", with details

    @property
    def all_files(self) -> tuple[Path, ...]:
        return (*self.source_files, self.seg_file)


# --------------------------------------------------------------------------------------------------
# production path
# --------------------------------------------------------------------------------------------------


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def production_modules_present() -> bool:
    """True when radnode's own NIfTI -> series converter and SEG writer exist."""
    return _module_exists("pipelines.nifti_series") and _module_exists("pipelines.writers.seg")


def _build_with_production(out_dir: Path) -> Study:
    """MR series from ``pipelines.nifti_series``; SEG from the ``brain-extraction`` pipeline when
    the registry exists, else from ``pipelines.writers.seg`` fed with the shipped mask."""
    from pydicom.uid import generate_uid

    from pipelines.nifti_series import write_nifti_as_series

    study_uid = generate_uid()
    source_files = write_nifti_as_series(
        T1_NIFTI,
        out_dir / "mr",
        patient_name="MNI152^Head",
        patient_id="MNI152",
        study_uid=study_uid,
        series_description="T1 MNI152",
    )
    seg_file = out_dir / "seg.dcm"
    if _module_exists("pipelines.registry"):
        seg, how = _seg_from_pipeline(source_files)
    else:
        seg, how = _seg_from_writer(source_files)
    seg.save_as(seg_file, enforce_file_format=True)
    return Study(study_uid, tuple(source_files), seg_file, f"production: MR from pipelines.nifti_series; {how}")


def _seg_from_pipeline(source_files: list[Path]):
    from pydicom import dcmread

    from pipelines.base import RuntimeOptions, SourceSeries
    from pipelines.registry import create_pipeline
    from pipelines.settings import BrainExtractionSettings

    series_uid = str(dcmread(source_files[0], stop_before_pixels=True).SeriesInstanceUID)
    pipeline = create_pipeline(
        "brain-extraction", BrainExtractionSettings(write_sr=False, write_overlay=False), RuntimeOptions()
    )
    pipeline.load()
    result = pipeline.run(SourceSeries(series_uid, tuple(source_files)))
    segs = [ds for ds in result.datasets if getattr(ds, "Modality", "") == "SEG"]
    if len(segs) != 1:
        raise AssertionError(f"brain-extraction returned {len(segs)} SEG datasets, expected 1")
    algorithm = f"{pipeline.algorithm_name} {pipeline.algorithm_version}"
    return segs[0], f"SEG from the brain-extraction pipeline ({algorithm})"


def _seg_from_writer(source_files: list[Path]):
    from pipelines.nifti_series import read_mask_on_grid
    from pipelines.settings import CodeSpec, SegmentSpec
    from pipelines.volume import load_series
    from pipelines.writers.common import ResultIdentity
    from pipelines.writers.seg import write_seg

    volume = load_series(source_files)
    mask = read_mask_on_grid(MASK_NIFTI, volume.affine, volume.array.shape)
    brain = SegmentSpec(label=1, name="Brain", type=CodeSpec(value="12738006", scheme="SCT", meaning="Brain"))
    identity = ResultIdentity(
        source_series_uid=str(volume.frames[0].dataset.SeriesInstanceUID),
        pipeline_name="viewer-test",
        algorithm_name="MNI152 shipped brain mask",
        algorithm_version="1",
    )
    seg = write_seg(volume, mask.astype(np.uint8), [brain], identity, seg_format="auto")
    return seg, "SEG from pipelines.writers.seg.write_seg with the shipped MNI152 mask"


# --------------------------------------------------------------------------------------------------
# local helper
# --------------------------------------------------------------------------------------------------


def _canonical_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume reoriented to RAS+; returns (array[i, j, k], 4x4 affine in RAS mm)."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    affine = np.asarray(image.affine, dtype=float)
    rotation = affine[:3, :3]
    if not np.allclose(rotation, np.diag(np.diag(rotation)), atol=1e-4) or np.any(np.diag(rotation) <= 0):
        raise ValueError(f"{path}: only axis-aligned volumes are supported by this helper, affine {affine}")
    return np.asanyarray(image.dataobj), affine


def _axial_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial slices (inferior first) as [row, column] arrays: row -> posterior, column -> patient left.

    In RAS+ voxel order i runs to the right and j to anterior, so both axes are reversed.
    """
    return [np.ascontiguousarray(volume[::-1, ::-1, k].T) for k in range(volume.shape[2])]


def _slice_position_lps(affine: np.ndarray, shape: tuple[int, int, int], k: int) -> list[float]:
    """ImagePositionPatient (LPS, mm) of the first transmitted pixel of slice k (voxel (ni-1, nj-1, k))."""
    ras = affine @ np.array([shape[0] - 1, shape[1] - 1, k, 1.0])
    return [float(-ras[0]), float(-ras[1]), float(ras[2])]


def _write_mr_series(out_dir: Path, study_uid: str, frame_of_reference_uid: str) -> list[Path]:
    """Write the T1 head as single-frame MR Image Storage instances, one per axial slice."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    volume, affine = _canonical_volume(T1_NIFTI)
    volume = np.clip(np.rint(volume.astype(np.float64)), 0, 65535).astype(np.uint16)
    spacing = [float(affine[0, 0]), float(affine[1, 1]), float(affine[2, 2])]
    low, high = np.percentile(volume[volume > 0], [1, 99.5])
    series_uid = generate_uid()
    now = datetime.now()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, pixels in enumerate(_axial_slices(volume)):
        ds = Dataset()
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        ds.PatientName = "MNI152^Head"
        ds.PatientID = "MNI152"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.StudyID = "1"
        ds.AccessionNumber = "VIEWERTEST"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "MNI152 T1 head (radnode viewer test)"
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = "T1 MNI152"
        ds.SeriesDate = ds.StudyDate
        ds.SeriesTime = ds.StudyTime
        ds.BodyPartExamined = "HEAD"
        ds.Manufacturer = "radnode-test"
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _slice_position_lps(affine, volume.shape, k)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (j), column spacing (i)
        ds.SliceThickness = spacing[2]
        ds.SpacingBetweenSlices = spacing[2]
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = None
        ds.EchoTime = None
        ds.EchoTrainLength = None
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.WindowCenter = float((low + high) / 2)
        ds.WindowWidth = float(high - low)
        ds.PixelData = pixels.tobytes()

        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = out_dir / f"mr_{k + 1:03d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _write_seg(source_files: list[Path], out_path: Path) -> Path:
    """Write the shipped brain mask as a SEG on the source grid with highdicom.

    FRACTIONAL unless Rows*Columns is a multiple of 8 (FIELD-NOTES: bit-packed BINARY frames that
    are not byte-aligned never load in OHIF over Orthanc); 182 x 218 is not, so this is FRACTIONAL.
    """
    import highdicom as hd
    from pydicom import dcmread
    from pydicom.sr.coding import Code

    sources = sorted((dcmread(p) for p in source_files), key=lambda d: float(d.ImagePositionPatient[2]))
    mask_volume, _ = _canonical_volume(MASK_NIFTI)
    mask = np.stack(_axial_slices(np.asarray(mask_volume) > 0.5)).astype(np.float32)
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if mask.shape != (len(sources), rows, columns):
        raise ValueError(f"mask grid {mask.shape} differs from the series {(len(sources), rows, columns)}")
    byte_aligned = rows * columns % 8 == 0
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Brain",
        segmented_property_category=Code("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=Code("12738006", "SCT", "Brain"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="MNI152 brain mask (viewer test fixture)",
            version="1",
            family=Code("123110", "DCM", "Artificial Intelligence"),
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask if not byte_aligned else mask.astype(bool),
        segmentation_type=(
            hd.seg.SegmentationTypeValues.BINARY if byte_aligned else hd.seg.SegmentationTypeValues.FRACTIONAL
        ),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="radnode",
        manufacturer_model_name="radnode viewer test fixture",
        software_versions="0",
        device_serial_number="0",
    )
    seg.SeriesDescription = "AI: brain (viewer test fixture)"
    if "ReferencedSeriesSequence" not in seg:
        raise AssertionError("highdicom wrote no ReferencedSeriesSequence; OHIF needs it (FIELD-NOTES)")
    seg.save_as(out_path)
    return out_path


def _build_with_local_helper(out_dir: Path) -> Study:
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    source_files = _write_mr_series(out_dir / "mr", study_uid, generate_uid())
    seg_file = _write_seg(source_files, out_dir / "seg.dcm")
    return Study(study_uid, tuple(source_files), seg_file, "local helper (tests/viewer/sample_study.py)")


def build_study(out_dir: Path) -> Study:
    """Write the MR series and its brain SEG under ``out_dir``; production modules when present."""
    for path in (T1_NIFTI, MASK_NIFTI):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run scripts/bootstrap.sh (it fetches the samples)")
    if production_modules_present():
        return _build_with_production(out_dir)
    return _build_with_local_helper(out_dir)
