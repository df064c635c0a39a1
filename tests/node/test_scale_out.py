"""Scale-out on PostgreSQL: one receiver and two worker nodes share a database and a data_dir;
a worker killed mid-job loses its lease and the other finishes the job, delivered exactly once."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pydicom

from pipelines.nifti_series import write_nifti_as_series
from tests.support.dcmtk import storescu
from tests.support.network import free_port
from tests.support.node_process import (
    RadnodeProcess,
    base_config,
    delivery_table,
    destination_table,
    model_worker_table,
    route_table,
)
from tests.support.orthanc import Orthanc
from tests.support.postgres import sqlalchemy_url


def _config(port: int, data_dir: Path, database_url: str, pacs_port: int) -> str:
    return base_config(port, data_dir, database_url=database_url, grace_s=0.5, extra="\n".join([
        model_worker_table(torch_threads=1, lease_s=6),
        delivery_table(first_retry_s=1, max_retry_s=2),
        destination_table("pacs", "ORTHANC", pacs_port),
        route_table("t1-brain", '{ Modality = "MR" }', ["pacs"]),
    ]))


def test_worker_killed_mid_job_is_replaced_and_results_arrive_exactly_once(
    postgresql_database, mni152_paths, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    url = sqlalchemy_url(postgresql_database)
    shared = tmp_path / "shared-data"
    pacs = Orthanc(tmp_path / "orthanc").start()
    nodes: list[RadnodeProcess] = []
    try:
        port = free_port()
        receiver = RadnodeProcess(tmp_path / "receiver", _config(port, shared, url, pacs.dicom_port), port,
                                  role="receiver").start()
        nodes.append(receiver)
        workers = []
        for name in ("worker-a", "worker-b"):
            worker = RadnodeProcess(tmp_path / name, _config(free_port(), shared, url, pacs.dicom_port), 0,
                                    role="worker").start()
            nodes.append(worker)
            workers.append(worker)
        files = write_nifti_as_series(mni152_paths.t1, tmp_path / "mni", patient_name="Scale^Out",
                                      patient_id="SCALE-1", series_description="T1 scale-out")
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)

        assert len(storescu(port, files).acknowledged) == len(files)
        holder = receiver.wait_for(
            lambda: next((w for w in workers if re.search(r"job \d+: brain-extraction on series", w.log())), None),
            timeout=120, interval=0.1, what="a worker to take the job")
        time.sleep(1.0)  # well inside the model run
        holder.kill9()
        survivor = next(w for w in workers if w is not holder)

        job = receiver.wait_for(
            lambda: (s := receiver.series_status(series_uid)) and s["jobs"][0]["deliveries"]
            and s["jobs"][0]["deliveries"][0]["state"] == "done" and s["jobs"][0],
            timeout=300, interval=1.0, what="the surviving worker to finish and deliver")

        assert job["state"] == "succeeded" and job["attempts"] == 2
        assert re.search(r"job \d+: brain-extraction on series .* \(attempt 2\)", survivor.log())
        study = pacs.series_of_study(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
        by_modality = {s["MainDicomTags"]["Modality"]: len(s["Instances"]) for s in study}
        assert by_modality["SEG"] == 1 and by_modality["SR"] == 1
        assert pacs.instance_count() == job["results"]
        assert len(job["deliveries"]) == 1 and job["deliveries"][0]["attempts"] == 1
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.kill9()
        pacs.stop()
