"""Comprehensive 3D SR measurement reports (TID 1500, PS3.16) written with highdicom.

* Segmentation results: one TID 1411 Volumetric ROI group per SEG segment, holding the segment's
  volume in mL (UCUM ``mL``; pydicom's code dictionary has none) and a reference to the segment
  (SEG SOP instance + segment number + source series). When the pipeline knows it, the group also
  holds the segment's confidence: (111012, DCM, "Certainty of Finding"), the concept the CAD SR
  templates of PS3.16 use for how certain a machine is of a finding, in UCUM ``%`` (0..100), with
  Derivation (121401, DCM) = (373098007, SCT, "Mean"): 100 x the mean, over the segment's voxels,
  of the model's probability for the segment's label (:attr:`SegmentVolume.confidence`).
* Classification results: one TID 1501 group per class with a qualitative evaluation
  (Finding = class) and its probability (unitless, 0..1).

The evidence (Current Requested Procedure Evidence, PS3.3 C.17.2) lists the source images and the
SEG: dciodvfy requires every referenced instance there. The device observer context (TID 1004)
and each measurement's algorithm identification (TID 4019) name the algorithm and version; the
Series Description starts with "AI:" and the observer name carries the AI statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.settings import CodeSpec, SegmentSpec
from pipelines.writers.common import MANUFACTURER, SERIES_NUMBERS, ResultIdentity, software_version
from pipelines.writers.seg import coded

MILLILITER = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
PROBABILITY = hd.sr.CodedConcept("PROB", "99RADNODE", "Probability")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "Percent")
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # (111012, DCM)
MEAN = codes.SCT.Mean  # (373098007, SCT)
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")


@dataclass(frozen=True)
class SegmentVolume:
    """The volume (mL = cm^3) of SEG segment ``segment_number`` (1-based) described by ``spec``, and
    optionally its ``confidence``: the mean, over the segment's voxels, of the model's probability
    for the segment's label (a fraction in [0, 1]; written to the SR in percent)."""

    segment_number: int
    spec: SegmentSpec
    volume_ml: float
    confidence: float | None = None


@dataclass(frozen=True)
class ClassFinding:
    """One class of a classification model and its probability in [0, 1].

    ``code`` codes the class (defaults to a private ``99RADNODE`` code named after ``name``).
    """

    name: str
    probability: float
    code: CodeSpec | None = None

    def concept(self) -> hd.sr.CodedConcept:
        if self.code is not None:
            return coded(self.code)
        value = "".join(c if c.isalnum() else "-" for c in self.name.upper())[:16] or "CLASS"
        return hd.sr.CodedConcept(value, "99RADNODE", self.name[:64])


def write_sr(
    source_datasets: Sequence[Dataset],
    identity: ResultIdentity,
    *,
    seg: Dataset | None = None,
    volumes: Sequence[SegmentVolume] = (),
    findings: Sequence[ClassFinding] = (),
    procedure: hd.sr.CodedConcept = IMAGING_PROCEDURE,
    uid_kind: str = "sr",
) -> Dataset:
    """Write a Comprehensive 3D SR (1.2.840.10008.5.1.4.1.1.88.34) for one source series.

    ``uid_kind`` names the object for its stable SOP Instance UID (another value for a fallback copy).

    ``source_datasets`` are the source images (one per instance); ``seg`` is required when
    ``volumes`` is not empty, since each volume references its SEG segment.
    """
    if volumes and seg is None:
        raise ValueError("segment volumes reference a SEG: pass the SEG dataset")
    if not volumes and not findings:
        raise ValueError("an SR needs at least one segment volume or class finding")
    algorithm = hd.sr.AlgorithmIdentification(
        name=identity.algorithm_name, version=identity.algorithm_version, manufacturer=MANUFACTURER
    )
    groups: list = []
    for item in volumes:
        if not item.volume_ml >= 0:
            raise ValueError(f"volume of segment {item.segment_number} is {item.volume_ml} mL")
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Volume, value=float(item.volume_ml), unit=MILLILITER, algorithm_id=algorithm)
        ]
        if item.confidence is not None:
            if not 0.0 <= item.confidence <= 1.0:
                raise ValueError(f"confidence of segment {item.segment_number} is {item.confidence}, not in [0, 1]")
            measurements.append(hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=100.0 * float(item.confidence),
                                                  unit=PERCENT, derivation=MEAN, algorithm_id=algorithm))
        referenced = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=item.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_datasets[0].SeriesInstanceUID),
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=identity.uid("sr-roi", item.segment_number), identifier=item.spec.name
                ),
                referenced_segment=referenced,
                finding_type=coded(item.spec.type),
                finding_category=coded(item.spec.category),
                algorithm_id=algorithm,
                measurements=measurements,
            )
        )
    for index, finding in enumerate(findings, start=1):
        if not 0.0 <= finding.probability <= 1.0:
            raise ValueError(f"probability of {finding.name!r} is {finding.probability}, not in [0, 1]")
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=identity.uid("sr-class", index), identifier=finding.name[:64]
                ),
                algorithm_id=algorithm,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=finding.concept())],
                measurements=[
                    hd.sr.Measurement(
                        name=PROBABILITY, value=float(finding.probability), unit=UNITLESS, algorithm_id=algorithm
                    )
                ],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.uid("sr-device"),
            name=f"AI-generated: {identity.algorithm_name}"[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{identity.algorithm_name} {identity.algorithm_version}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure,
        imaging_measurements=groups,
    )
    evidence = list(source_datasets) + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=identity.series_uid("sr"),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=identity.uid(uid_kind, 0),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=identity.series_description("measurements"),
        software_versions=software_version(),
        manufacturer_model_name=identity.algorithm_name[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    return sr
