"""Pipeline kinds -> implementations.

Entries are ``"module:Class"`` strings imported on first use, so a kind whose module is heavy or
not written yet (``bundle``) costs nothing until a config names it. Every class is constructed as
``Class(name, settings, runtime)``.
"""

from __future__ import annotations

import importlib

from pipelines.base import Pipeline, RuntimeOptions
from pipelines.settings import PipelineSettings

REGISTRY: dict[str, str] = {
    "brain-extraction": "pipelines.brain_extraction:BrainExtractionPipeline",
    "bundle": "pipelines.bundle:BundlePipeline",
}


def pipeline_class(kind: str) -> type[Pipeline]:
    """The class registered for ``kind``; ``KeyError``/``ImportError`` with the kind named."""
    try:
        target = REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown pipeline kind {kind!r}; known kinds: {', '.join(sorted(REGISTRY))}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"pipeline kind {kind!r} is registered as {target} but cannot be imported: {exc}") from exc
    return getattr(module, class_name)


def create_pipeline(name: str, settings: PipelineSettings, runtime: RuntimeOptions) -> Pipeline:
    """Build (not load) the pipeline called ``name`` (the ``[pipelines.NAME]`` key) from its settings.

    Call ``load()`` once in the worker, then ``run(SourceSeries(...))`` per job.
    """
    return pipeline_class(settings.kind)(name, settings, runtime)
