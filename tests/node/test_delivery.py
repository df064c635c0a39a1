"""Deliver: results of the real brain-extraction pipeline reach a real PACS (Orthanc), once each,
and wait out a PACS that is down, a node restart, and a give-up with `radnode retry`."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from pipelines.nifti_series import write_nifti_as_series
from tests.support.dcmtk import DCMTK_ENV, require, storescu
from tests.support.network import free_port
from tests.support.node_process import delivery_table, destination_table, model_worker_table, route_table
from tests.support.orthanc import Orthanc


@pytest.fixture(scope="module")
def mni_series(tmp_path_factory, mni152_paths) -> list[Path]:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("mni")
    return write_nifti_as_series(mni152_paths.t1, folder, patient_name="Mni^Delivery", patient_id="MNI-DELIVERY",
                                 series_description="T1 MNI152")


def _node_options(pacs_port: int, *, first_retry_s: float = 1.0, give_up_after_s: float = 3600) -> dict:
    return dict(workers=1, grace_s=0.5, extra="\n".join([
        model_worker_table(torch_threads=2, lease_s=120),
        delivery_table(first_retry_s=first_retry_s, max_retry_s=2, give_up_after_s=give_up_after_s,
                       check_interval_s=0.2),
        destination_table("pacs", "ORTHANC", pacs_port),
        route_table("t1-brain", '{ Modality = "MR", SeriesDescription = ".*T1.*" }', ["pacs"]),
    ]))


def _results_by_modality(pacs: Orthanc, study_uid: str) -> Counter[str]:
    """Instances per modality in the study at the PACS, results only (not the source MR)."""
    counts: Counter[str] = Counter()
    for series in pacs.series_of_study(study_uid):
        modality = series["MainDicomTags"].get("Modality", "")
        if modality != "MR":
            counts[modality] += len(series["Instances"])
    return counts


def _delivery(node, series_uid: str) -> dict | None:  # type: ignore[no-untyped-def]
    series = node.series_status(series_uid)
    if not series or not series["jobs"] or not series["jobs"][0]["deliveries"]:
        return None
    return series["jobs"][0]["deliveries"][0]


def _expected(node, series_uid: str) -> int:  # type: ignore[no-untyped-def]
    return node.series_status(series_uid)["jobs"][0]["results"]


def test_results_reach_the_pacs_in_the_source_study_once_each(radnode, mni_series, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        for path in mni_series:  # the PACS already holds the source series
            pacs.upload(path)
        node = radnode("node", **_node_options(pacs.dicom_port))
        header = pydicom.dcmread(mni_series[0], stop_before_pixels=True)

        assert len(storescu(node.port, mni_series).acknowledged) == len(mni_series)
        delivery = node.wait_for(
            lambda: (d := _delivery(node, header.SeriesInstanceUID)) and d["state"] == "done" and d,
            timeout=240, interval=1.0, what="delivery to Orthanc")

        results = _results_by_modality(pacs, header.StudyInstanceUID)
        assert results["SEG"] == 1 and results["SR"] == 1 and results["OT"] >= 1
        assert sum(results.values()) == _expected(node, header.SeriesInstanceUID)
        assert pacs.instance_count() == len(mni_series) + sum(results.values())
        assert delivery["attempts"] == 1
        study = pacs.get_json(f"/studies/{pacs.series_of_study(header.StudyInstanceUID)[0]['ParentStudy']}")
        assert study["PatientMainDicomTags"]["PatientID"] == "MNI-DELIVERY"
    finally:
        pacs.stop()


def test_results_wait_for_a_stopped_pacs_and_a_node_restart_and_arrive_once(radnode, mni_series, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs = Orthanc(tmp_path / "orthanc")  # not started: the PACS is down
    node = radnode("node", **_node_options(pacs.dicom_port))
    header = pydicom.dcmread(mni_series[0], stop_before_pixels=True)

    storescu(node.port, mni_series)
    node.wait_for(lambda: (d := _delivery(node, header.SeriesInstanceUID)) and d["attempts"] >= 2,
                  timeout=240, interval=1.0, what="failed delivery attempts while the PACS is down")
    assert _delivery(node, header.SeriesInstanceUID)["state"] in ("pending", "sending")
    node.stop()
    node.start()
    pacs.start()
    try:
        node.wait_for(lambda: _delivery(node, header.SeriesInstanceUID)["state"] == "done",
                      timeout=60, interval=0.5, what="delivery after the PACS came back")

        results = _results_by_modality(pacs, header.StudyInstanceUID)
        assert results["SEG"] == 1 and results["SR"] == 1
        assert pacs.instance_count() == sum(results.values()) == _expected(node, header.SeriesInstanceUID)
        assert "unreachable" in node.log() or "failed" in node.log()
    finally:
        pacs.stop()


def test_delivery_that_gives_up_is_dead_until_retry_requeues_it(radnode, mni_series, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs = Orthanc(tmp_path / "orthanc")
    node = radnode("node", **_node_options(pacs.dicom_port, first_retry_s=0.5, give_up_after_s=2))
    header = pydicom.dcmread(mni_series[0], stop_before_pixels=True)

    storescu(node.port, mni_series)
    dead = node.wait_for(lambda: (d := _delivery(node, header.SeriesInstanceUID)) and d["state"] == "dead" and d,
                         timeout=240, interval=1.0, what="the delivery to give up")
    assert "association" in dead["last_error"]
    assert "dead" in node.cli("status").stdout
    pacs.start()
    try:
        assert "re-queued 1 dead deliveries" in node.cli("retry").stdout
        node.wait_for(lambda: _delivery(node, header.SeriesInstanceUID)["state"] == "done",
                      timeout=60, what="delivery after retry")
        assert _results_by_modality(pacs, header.StudyInstanceUID)["SEG"] == 1
    finally:
        pacs.stop()


def test_echo_command_checks_a_destination(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        node = radnode("node", extra=f"""
[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {pacs.dicom_port}

[[destinations]]
name = "nowhere"
ae_title = "NOBODY"
host = "127.0.0.1"
port = {free_port()}
""")
        assert node.cli("echo", "pacs").returncode == 0
        failed = node.cli("echo", "nowhere", check=False)
        assert failed.returncode == 1 and "FAILED" in failed.stderr
        assert node.cli("echo", "unknown", check=False).returncode == 2
    finally:
        pacs.stop()


def test_destination_that_refuses_labelmap_seg_gets_the_binary_seg_and_a_matching_sr(
    radnode, mni_series, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    received = tmp_path / "storescp"
    received.mkdir()
    port = free_port()
    # DCMTK 3.6.7 predates the LABELMAP SEG SOP class, so its storescp refuses that context.
    scp = subprocess.Popen([require("storescp"), "-aet", "ORTHANC", "-od", str(received), str(port)],
                           env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        options = _node_options(port)
        options["extra"] += '\n[pipelines.brain-extraction]\nkind = "brain-extraction"\nseg_format = "labelmap"\n'
        node = radnode("node", **options)
        header = pydicom.dcmread(mni_series[0], stop_before_pixels=True)

        storescu(node.port, mni_series)
        node.wait_for(lambda: (d := _delivery(node, header.SeriesInstanceUID)) and d["state"] == "done",
                      timeout=240, interval=1.0, what="delivery to storescp")

        objects = [pydicom.dcmread(p, stop_before_pixels=True) for p in received.iterdir()]
        segs = [o for o in objects if o.Modality == "SEG"]
        srs = [o for o in objects if o.Modality == "SR"]
        assert [s.SOPClassUID for s in segs] == ["1.2.840.10008.5.1.4.1.1.66.4"]
        assert len(srs) == 1
        referenced = _referenced_uids(received)
        assert segs[0].SOPInstanceUID in referenced
        assert "sending the fallback objects" in node.log()
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def _referenced_uids(folder: Path) -> set[str]:
    """Every SOP Instance UID an SR in ``folder`` references in its evidence."""
    uids: set[str] = set()
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        if ds.Modality != "SR":
            continue
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            for series in study.ReferencedSeriesSequence:
                uids.update(str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence)
    return uids
