"""The PACS is down for two minutes while studies keep arriving: results queue, retry with backoff,
and every one arrives exactly once when the PACS is back; none is given up."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from tests.support.dcmtk import storescu
from tests.support.network import SilentPeer
from tests.support.node_db import query
from tests.support.node_process import delivery_table, destination_table, model_worker_table
from tests.support.orthanc import Orthanc
from tests.support.sphere_pipeline import build_sphere_bundle, sphere_pipeline_tables, write_sphere_study

OUTAGE_S = 120.0
STUDIES = 4  # one every OUTAGE_S / STUDIES seconds, all while the PACS is down


def test_results_queue_through_a_two_minute_pacs_outage_and_arrive_once(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs = Orthanc(tmp_path / "orthanc")  # not started: the outage begins before the first study
    node = radnode("node", workers=1, grace_s=0.3, extra="\n".join([
        model_worker_table(torch_threads=1, lease_s=60),
        # first retry after 2 s, doubling up to 5 s: several tries inside the outage; giving up
        # only after 10 minutes, far beyond it
        delivery_table(first_retry_s=2, max_retry_s=5, give_up_after_s=600, check_interval_s=0.2, timeout_s=5),
        destination_table("pacs", "ORTHANC", pacs.dicom_port),
        sphere_pipeline_tables(build_sphere_bundle(tmp_path / "bundle"), ["pacs"]),
    ]))
    outage_started = time.monotonic()
    study_uids: list[str] = []
    hung: SilentPeer | None = None
    try:
        for index in range(STUDIES):
            # first half: nothing listens (connection refused); second half: a hung PACS that
            # accepts the connection and never answers (the association times out)
            if hung is None and index >= STUDIES // 2:
                hung = SilentPeer(pacs.dicom_port)
            files = write_sphere_study(tmp_path / f"study-{index}", slices=30, seed=index)
            assert len(storescu(node.port, files).acknowledged) == len(files)
            study_uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
            time.sleep(max(0.0, outage_started + (index + 1) * OUTAGE_S / STUDIES - time.monotonic()))
        waiting = query(node.data_dir, "select state, attempts from deliveries")
        assert hung is not None and hung.accepted > 0
        hung.close()
        outage_s = time.monotonic() - outage_started
        pacs.start()

        node.wait_for(lambda: query(node.data_dir, "select count(*) from deliveries where state != 'done'") == [(0,)]
                      and len(query(node.data_dir, "select id from deliveries")) == STUDIES,
                      timeout=120, interval=0.5, what="every delivery done after the PACS came back")
        deliveries = query(node.data_dir, "select state, attempts from deliveries")
        held = {uid: sorted(pacs.sop_instance_uids(uid)) for uid in study_uids}
        pacs_total = pacs.instance_count()
    finally:
        if hung is not None:
            hung.close()
        pacs.stop()
    print(f"outage {outage_s:.0f} s; deliveries during it {waiting}; at the end {deliveries}")

    assert len(waiting) == STUDIES and {state for state, _ in waiting} <= {"pending", "sending"}
    assert all(attempts > 1 for _, attempts in deliveries), deliveries
    assert {state for state, _ in deliveries} == {"done"}
    for study_uid, uids in held.items():
        expected = sorted(uid for (uid,) in query(
            node.data_dir, "select sop_instance_uid from results where study_instance_uid = ? and "
                           "fallback_for is null", study_uid))
        assert uids == expected and len(expected) > 2, study_uid
    assert pacs_total == sum(len(uids) for uids in held.values())
