"""Operating a real node end to end (storescu -> radnode with the brain-extraction pipeline -> DCMTK
storescp as PACS, plus a destination that is down): the audit trail records associations, jobs and
deliveries by UID; no log or audit file holds a patient name, ID or birth date; metrics show the
inference; retention deletes what is delivered and never what is not (yet)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from node.audit import read_audit
from pipelines.nifti_series import write_nifti_as_series
from tests.support.dcmtk import DCMTK_ENV, require, storescu
from tests.support.network import free_port
from tests.support.node_process import (
    RadnodeProcess,
    delivery_table,
    destination_table,
    model_worker_table,
    route_table,
    start_node,
)
from tests.support.series import write_series

TOKEN = "ops-token-2718"
# Fake patient data of this module; none of it may appear in any log or audit file.
PATIENT_NAME = "Opspatient^Delta"
PATIENT_ID = "PID-OPS-8812"
BIRTH_DATE = "19530704"


@dataclass
class Scenario:
    node: RadnodeProcess
    web_url: str
    pacs_folder: Path
    offline_port: int
    study: str
    series: str
    unrouted_study: str
    instances: int


def _with_birth_date(paths: list[Path]) -> list[Path]:
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = BIRTH_DATE
        ds.save_as(path)
    return paths


def _header(paths: list[Path]) -> pydicom.Dataset:
    return pydicom.dcmread(paths[0], stop_before_pixels=True)


def _deliveries(node: RadnodeProcess, series_uid: str) -> dict[str, dict]:
    series = node.series_status(series_uid)
    return {d["destination"]: d for job in (series or {}).get("jobs", []) for d in job["deliveries"]}


def _storescp(ae_title: str, folder: Path, port: int) -> subprocess.Popen[bytes]:
    folder.mkdir(exist_ok=True)
    return subprocess.Popen([require("storescp"), "-aet", ae_title, "-od", str(folder), str(port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, mni152_paths) -> Iterator[Scenario]:  # type: ignore[no-untyped-def]
    """One MR head routed to two destinations, one of them down; one CT series that no route takes."""
    workdir = tmp_path_factory.mktemp("ops")
    pacs_port, offline_port, web_port = free_port(), free_port(), free_port()
    pacs = _storescp("PACS", workdir / "pacs", pacs_port)
    node = None
    try:
        node = start_node(workdir / "node", grace_s=0.3, extra="\n".join([
            model_worker_table(torch_threads=2, lease_s=120),
            delivery_table(first_retry_s=0.5, max_retry_s=1, give_up_after_s=3600, check_interval_s=0.2),
            f'[web]\nport = {web_port}\ntoken = "{TOKEN}"\n',
            destination_table("pacs", "PACS", pacs_port),
            destination_table("offline", "OFFLINE", offline_port),
            route_table("t1", '{ Modality = "MR", SeriesDescription = ".*T1.*" }', ["pacs", "offline"]),
            '[pipelines.brain-extraction]\nkind = "brain-extraction"\nwrite_overlay = false\n',
        ]))
        common = dict(patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
        head = _with_birth_date(write_nifti_as_series(mni152_paths.t1, workdir / "head",
                                                      series_description="T1 HEAD", **common))
        unrouted = _with_birth_date(write_series(workdir / "ct", 3, modality="CT", description="CHEST", **common))
        for files in (head, unrouted):
            outcome = storescu(node.port, files)
            assert len(outcome.acknowledged) == len(files), outcome.output
        series = str(_header(head).SeriesInstanceUID)
        node.wait_for(lambda: (d := _deliveries(node, series)) and d["pacs"]["state"] == "done"
                      and d["offline"]["attempts"] >= 1, timeout=240, interval=0.5,
                      what="the delivery to the PACS and a failed attempt to the offline destination")
        yield Scenario(node, f"http://127.0.0.1:{web_port}", workdir / "pacs", offline_port,
                       str(_header(head).StudyInstanceUID), series, str(_header(unrouted).StudyInstanceUID),
                       len(head))
    finally:
        if node is not None:
            node.kill9()
        pacs.terminate()
        pacs.wait(timeout=10)


def test_the_audit_trail_records_associations_jobs_and_deliveries(scenario: Scenario) -> None:
    records = read_audit(scenario.node.data_dir)
    associations = [r for r in records if r["event"] == "association"]
    assert [(a["outcome"], a["calling_ae_title"], a["instances"]) for a in associations] == [
        ("released", "STORESCU", scenario.instances), ("released", "STORESCU", 3)]
    assert all(a["address"] == "127.0.0.1" and a["bytes"] > 0 and a["duration_s"] >= 0 for a in associations)
    jobs = [r for r in records if r["event"] == "job"]
    assert [(j["series_instance_uid"], j["pipeline"], j["state"]) for j in jobs] == [
        (scenario.series, "brain-extraction", "succeeded")]
    assert jobs[0]["seconds"] > 0 and jobs[0]["study_instance_uid"] == scenario.study
    deliveries = [r for r in records if r["event"] == "delivery"]
    done = [d for d in deliveries if d["outcome"] == "done"]
    assert [(d["destination"], d["ae_title"]) for d in done] == [("pacs", "PACS")]
    assert done[0]["objects"] == len(list(scenario.pacs_folder.iterdir())) == jobs[0]["results"]
    assert any(d["destination"] == "offline" and d["outcome"] == "retry" for d in deliveries)


def test_no_log_or_audit_file_holds_patient_names_ids_or_birth_dates(scenario: Scenario) -> None:
    logs = [*sorted((scenario.node.data_dir / "logs").rglob("*")), scenario.node.log_path]
    files = [p for p in logs if p.is_file()]
    assert {p.name for p in files} >= {"radnode.log", "audit.jsonl", "serve.log"}
    forbidden = [PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID, BIRTH_DATE, "1953-07-04"]
    found = {f"{p.name}: {word}" for p in files for word in forbidden
             if word.lower() in p.read_text(errors="replace").lower()}
    assert not found
    assert scenario.series in (scenario.node.data_dir / "logs" / "audit.jsonl").read_text()


def test_metrics_show_inference_seconds_and_deliveries_by_state(scenario: Scenario) -> None:
    text = httpx.get(f"{scenario.web_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert re.search(r'^radnode_inference_seconds_count\{pipeline="brain-extraction"\} 1\.0$', text, re.M), text
    assert re.search(r'^radnode_jobs\{state="succeeded"\} 1\.0$', text, re.M)
    assert re.search(r'^radnode_deliveries\{state="done"\} 1\.0$', text, re.M)
    assert re.search(r'^radnode_instances_received_total %d\.0$' % (scenario.instances + 3), text, re.M)


def _files_of_study(data_dir: Path, study_uid: str) -> list[Path]:
    return sorted(p for area in ("spool", "outbox") for p in (data_dir / area / study_uid).rglob("*.dcm"))


def test_purge_keeps_a_study_until_every_delivery_is_done_then_deletes_it(scenario: Scenario) -> None:
    node, data_dir = scenario.node, scenario.node.data_dir
    before = _files_of_study(data_dir, scenario.study)
    assert len(before) > scenario.instances  # its images and its results

    first = node.cli("purge", "--older-than", "0")
    assert "purged 1 finished studies" in first.stdout  # the CT: no route, nothing to send
    assert _files_of_study(data_dir, scenario.unrouted_study) == []
    assert _files_of_study(data_dir, scenario.study) == before  # "offline" has not got its results yet

    offline = _storescp("OFFLINE", data_dir.parent / "offline", scenario.offline_port)
    try:
        node.wait_for(lambda: _deliveries(node, scenario.series)["offline"]["state"] == "done", timeout=60,
                      what="the delivery to the destination that came back")
    finally:
        offline.terminate()
        offline.wait(timeout=10)
    assert node.cli("purge", "--older-than", "1", "--dry-run").stdout.startswith("would purge 0")  # too recent
    second = node.cli("purge", "--older-than", "0")
    assert "purged 1 finished studies" in second.stdout
    assert _files_of_study(data_dir, scenario.study) == []

    studies = httpx.get(f"{scenario.web_url}/api/studies", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert all(s["purged_at"] for s in studies["items"])
    retention = [r for r in read_audit(data_dir) if r["event"] == "retention"]
    assert [r["study_instance_uid"] for r in retention] == [scenario.unrouted_study, scenario.study]
    assert retention[1]["files"] == len(before)


def test_the_periodic_retention_job_purges_by_age_and_keeps_unprocessed_data(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node", workers=0, extra="""
[retention]
max_age_days = 0.00002
check_interval_s = 0.5

[[routes]]
name = "ct"
pipeline = "brain-extraction"
when = { SeriesDescription = "QUEUED" }
""")
    try:
        finished = write_series(tmp_path / "a", 2, description="NO ROUTE", seed=3)
        unprocessed = write_series(tmp_path / "b", 2, description="QUEUED", seed=4)
        storescu(node.port, finished)
        storescu(node.port, unprocessed)
        finished_study = str(_header(finished).StudyInstanceUID)
        unprocessed_study = str(_header(unprocessed).StudyInstanceUID)
        node.wait_for(lambda: not _files_of_study(node.data_dir, finished_study), timeout=30,
                      what="the retention job to delete the finished study's files")
        time.sleep(2.0)  # several more retention runs
        assert len(_files_of_study(node.data_dir, unprocessed_study)) == 2  # its job is still queued
    finally:
        node.kill9()
