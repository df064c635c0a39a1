"""Pipeline registry and torch device choice."""

from __future__ import annotations

import pytest
import torch

from pipelines.base import RuntimeOptions
from pipelines.brain_extraction import BrainExtractionPipeline
from pipelines.devices import select_device
from pipelines.registry import REGISTRY, create_pipeline, pipeline_class
from pipelines.settings import BrainExtractionSettings


def test_create_pipeline_builds_brain_extraction_from_its_settings_without_loading_weights() -> None:
    pipeline = create_pipeline("brain", BrainExtractionSettings(threshold=0.6), RuntimeOptions())
    assert isinstance(pipeline, BrainExtractionPipeline)
    assert (pipeline.name, pipeline.algorithm_name, pipeline.settings.threshold) == ("brain", "deepbet", 0.6)
    assert pipeline._network is None


def test_bundle_kind_is_registered_by_module_path_so_it_loads_only_when_used() -> None:
    assert REGISTRY["bundle"] == "pipelines.bundle:BundlePipeline"


def test_an_unknown_kind_names_the_known_kinds() -> None:
    with pytest.raises(KeyError, match="unknown pipeline kind 'nope'; known kinds: brain-extraction, bundle"):
        pipeline_class("nope")


def test_auto_device_is_cuda_only_when_available_and_threads_are_capped() -> None:
    device = select_device(RuntimeOptions(device="auto", torch_threads=1))
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.get_num_threads() == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_asking_for_cuda_without_a_gpu_is_an_error() -> None:
    with pytest.raises(ValueError, match="torch.cuda.is_available"):
        select_device(RuntimeOptions(device="cuda"))
