"""The pipeline interface: a stored series in, DICOM result objects out.

A pipeline knows nothing of the database or the network (DESIGN.md): it takes file paths and
settings and returns pydicom datasets, so it can be run and tested on its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset


class PipelineRefusal(Exception):
    """The series is not one this pipeline can process (wrong modality, broken geometry, ...).

    The message is recorded on the job and shown to the admin; a refusal is final and not retried.
    """


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how models run: ``device`` is ``auto`` (cuda when present, else cpu), ``cpu`` or
    ``cuda``; ``torch_threads`` caps intra-op CPU threads so inference never starves the receiver."""

    device: str = "auto"
    torch_threads: int = 1


@dataclass(frozen=True)
class SourceSeries:
    """The stored instances of one series, as files in the spool, in any order."""

    series_instance_uid: str
    files: tuple[Path, ...]


@dataclass
class PipelineResult:
    """What one run produced: result datasets ready to store and send, and named measurements
    (e.g. ``{"brain_volume_ml": 1520.3}``) for status and logs."""

    datasets: list[Dataset]
    measurements: dict[str, float] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    #: Alternatives for archives that refuse a result's SOP class, keyed by the SOP Instance UID of
    #: the object each replaces (e.g. a BINARY SEG for a LABELMAP SEG, and an SR that references it).
    fallbacks: dict[str, Dataset] = field(default_factory=dict)


class Pipeline(ABC):
    """A loaded model plus its pre- and post-processing and result writers."""

    name: str
    algorithm_name: str
    algorithm_version: str

    @abstractmethod
    def load(self) -> None:
        """Load weights onto the device once; later runs reuse them."""

    @abstractmethod
    def run(self, series: SourceSeries) -> PipelineResult:
        """Process one series; raise PipelineRefusal for input this pipeline cannot take."""
