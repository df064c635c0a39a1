"""Workers: refusals are recorded with their reason; a worker keeps its pipeline loaded between jobs."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.support.dcmtk import storescu
from tests.support.series import write_series

ROUTE_EVERYTHING = """
[[routes]]
name = "everything"
pipeline = "brain-extraction"
when = { Modality = ".*" }
"""


def test_series_the_pipeline_cannot_take_is_refused_with_its_reason_and_the_model_is_loaded_once(
    radnode, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    node = radnode(workers=1, extra=ROUTE_EVERYTHING)
    first = write_series(tmp_path / "a", 3, modality="CT", description="chest", seed=1)
    second = write_series(tmp_path / "b", 3, modality="CT", description="abdomen", seed=2)

    storescu(node.port, first)
    storescu(node.port, second)

    for files in (first, second):
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        job = node.wait_for(
            lambda: (s := node.series_status(uid)) and s["jobs"] and s["jobs"][0]["state"] == "refused"
            and s["jobs"][0], timeout=120, what="the refusal")
        assert "MR" in job["last_error"] and "CT" in job["last_error"]
        assert job["attempts"] == 1
    assert "refused" in node.cli("status").stdout
    assert node.log().count("pipeline brain-extraction loaded") == 1
