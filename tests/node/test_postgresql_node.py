"""The node on PostgreSQL (``database_url``), with a real server started by pytest-postgresql."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.support.dcmtk import storescu
from tests.support.postgres import sqlalchemy_url
from tests.support.series import write_series


def test_study_sent_to_a_node_on_postgresql_is_indexed_and_completes(
    radnode, postgresql_database, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    node = radnode(database_url=sqlalchemy_url(postgresql_database), extra=(
        '[[routes]]\nname = "t1"\npipeline = "brain-extraction"\nwhen = { Modality = "MR" }\n'
    ))
    files = write_series(tmp_path / "s", 5, modality="MR", description="T1")
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)

    outcome = storescu(node.port, files)

    assert len(outcome.acknowledged) == 5
    series = node.wait_for(
        lambda: (s := node.series_status(series_uid)) and s["state"] == "complete" and s, what="completion"
    )
    assert series["instance_count"] == 5
    assert [job["pipeline"] for job in series["jobs"]] == ["brain-extraction"]
    assert not (node.data_dir / "radnode.sqlite3").exists()
