"""Typed settings of a ``[pipelines.NAME]`` table in config.toml.

The ``kind`` key chooses the implementation; every other key belongs to that kind. Unknown keys are
errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class CodeSpec(BaseModel):
    """A coded concept (PS3.3 Section 8.8): code value, coding scheme designator and meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: str
    scheme: str = "SCT"
    meaning: str


class SegmentSpec(BaseModel):
    """One output label of a segmentation model and the codes its SEG segment carries (PS3.3 C.8.20.4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: int = Field(ge=1, le=65535, description="Integer label in the model's output map")
    name: str = Field(min_length=1, max_length=64)
    category: CodeSpec = CodeSpec(value="91723000", scheme="SCT", meaning="Anatomical Structure")
    type: CodeSpec


SegFormat = Literal["auto", "binary", "fractional", "labelmap"]
#: How a classification bundle explains its decision: ``none``, or ``gradcam`` (pipelines.explain).
ExplainMethod = Literal["none", "gradcam"]


class BrainExtractionSettings(BaseModel):
    """Settings of the built-in ``brain-extraction`` pipeline (deepbet TorchScript weights)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["brain-extraction"] = "brain-extraction"
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Probability above which a voxel is brain")
    seg_format: SegFormat = Field(
        "auto",
        description="auto: BINARY when Rows*Columns is a multiple of 8, else FRACTIONAL (viewers "
        "fail on bit-packed frames that are not byte-aligned)",
    )
    write_sr: bool = True
    write_overlay: bool = Field(True, description="Burned-in Secondary Capture series for archives without SEG")


class BundleSettings(BaseModel):
    """Settings of kind ``bundle``: a MONAI bundle folder on local disk (nothing is downloaded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bundle"] = "bundle"
    path: Path
    segments: list[SegmentSpec] = Field(default_factory=list)
    seg_format: SegFormat = "auto"
    write_sr: bool = True
    write_overlay: bool = True
    accepts_modality: list[str] = Field(default_factory=list, description="Empty: any modality")
    explain: ExplainMethod = Field(
        "none",
        description="gradcam: a classification bundle also returns a Grad-CAM map of the predicted class "
        "as a FRACTIONAL SEG (needs models/model.pt and network_def; pipelines.explain)",
    )
    explain_layer: str | None = Field(
        None, min_length=1,
        description="Dotted module name of the layer Grad-CAM weighs (default: the network's last convolution)",
    )


PipelineSettings = Annotated[Union[BrainExtractionSettings, BundleSettings], Field(discriminator="kind")]
