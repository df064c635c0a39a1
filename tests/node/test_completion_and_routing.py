"""Completion (release + grace, or quiet period) and routing of completed series to jobs."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from tests.support.dcmtk import storescu
from tests.support.scu import send_then_abort
from tests.support.series import write_series

ROUTES = """
[[routes]]
name = "t1-brain"
pipeline = "brain-extraction"
when = { Modality = "MR", SeriesDescription = ".*T1.*" }
"""


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_series_completes_shortly_after_its_association_is_released(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode(grace_s=0.5, quiet_s=600)
    files = write_series(tmp_path / "s", 3)

    storescu(node.port, files)

    series = node.wait_for(
        lambda: (s := node.series_status(_series_uid(files[0]))) and s["state"] == "complete" and s,
        timeout=20, what="completion after release",
    )
    assert series["instance_count"] == 3


def test_series_of_an_aborted_association_completes_after_the_quiet_period(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode(grace_s=0.2, quiet_s=4)
    files = write_series(tmp_path / "s", 2)

    statuses = send_then_abort(node.port, files)
    time.sleep(1.5)  # well past the grace period, well before the quiet period
    still_open = node.series_status(_series_uid(files[0]))

    assert statuses == [0, 0]
    assert still_open is not None and still_open["state"] == "receiving"
    node.wait_for(lambda: node.series_status(_series_uid(files[0]))["state"] == "complete",
                  timeout=20, what="completion after the quiet period")


def test_matching_route_queues_one_job_and_other_series_queue_none(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode(extra=ROUTES)
    study = pydicom.uid.generate_uid()
    t1 = write_series(tmp_path / "t1", 3, modality="MR", description="Sag T1 MPRAGE", study_uid=study)
    t2 = write_series(tmp_path / "t2", 3, modality="MR", description="Ax T2 FLAIR", study_uid=study)
    ct = write_series(tmp_path / "ct", 3, modality="CT", description="T1 lookalike", study_uid=study)

    storescu(node.port, t1 + t2 + ct)

    def all_complete() -> list[dict] | None:
        series = [node.series_status(_series_uid(f[0])) for f in (t1, t2, ct)]
        return series if all(s and s["state"] == "complete" for s in series) else None

    t1_status, t2_status, ct_status = node.wait_for(all_complete, timeout=20, what="three completions")
    assert [(j["pipeline"], j["route"], j["state"]) for j in t1_status["jobs"]] == [
        ("brain-extraction", "t1-brain", "queued")
    ]
    assert t2_status["jobs"] == [] and ct_status["jobs"] == []
    assert ct_status["routing_note"] == "no route matched"


def test_late_instance_reopens_a_series_and_reruns_only_when_the_route_asks(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    routes = ROUTES + 'rerun_on_late = true\n'
    node = radnode(extra=routes)
    files = write_series(tmp_path / "s", 4, modality="MR", description="T1 axial")
    uid = _series_uid(files[0])

    storescu(node.port, files[:3])
    node.wait_for(lambda: node.series_status(uid)["state"] == "complete", what="first completion")
    storescu(node.port, files[3:])
    series = node.wait_for(
        lambda: (s := node.series_status(uid)) and s["state"] == "complete" and s["generation"] == 1 and s,
        what="completion of the reopened series",
    )

    assert series["instance_count"] == 4
    assert sorted((j["generation"], j["state"]) for j in series["jobs"]) == [(0, "queued"), (1, "queued")]


def test_late_instance_without_rerun_queues_nothing_new(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode(extra=ROUTES)
    files = write_series(tmp_path / "s", 3, modality="MR", description="T1 axial")
    uid = _series_uid(files[0])

    storescu(node.port, files[:2])
    node.wait_for(lambda: node.series_status(uid)["state"] == "complete", what="first completion")
    storescu(node.port, files[2:])
    series = node.wait_for(
        lambda: (s := node.series_status(uid)) and s["state"] == "complete" and s["generation"] == 1 and s,
        what="completion of the reopened series",
    )

    assert [j["generation"] for j in series["jobs"]] == [0]
    assert "no route asks for a re-run" in series["routing_note"]
