"""kill -9 of the whole node, over and over, at random moments of receiving, inferring and delivering.

A real ``radnode serve`` (receiver, worker with a small real MONAI bundle, delivery to a real Orthanc)
takes sphere phantom studies from storescu. Each round aims a SIGKILL of its whole process group at
one phase (seeded: the target phase, how far into it, which instance), reads from the node's
database which phases the kill actually landed in, restarts the node and lets the sender retry
what was not acknowledged. After the last round the node runs to quiescence and every count must
match exactly.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom

from tests.support.node_db import Activity, activity, query
from tests.support.node_process import RadnodeProcess, delivery_table, destination_table
from tests.support.orthanc import Orthanc
from tests.support.senders import RetryingSender
from tests.support.series import dataset_bytes
from tests.support.sphere_pipeline import build_sphere_bundle, sphere_pipeline_tables, write_sphere_study

SEED = 20261124
ROUNDS_PER_PHASE = 7
PHASES = ("receive", "infer", "deliver")
SLICES = 60


def _tables(bundle: Path, pacs_port: int) -> str:
    """Worker, delivery, destination and pipeline tables of the node under test."""
    # Leases far longer than the test waits after a restart: jobs and deliveries of the killed
    # node must be taken up again because their owners are gone, not because time passed.
    # max_attempts is above the kills one job can get here (each kill mid-job counts as an attempt).
    workers = "[workers]\ncount = 1\ntorch_threads = 1\nlease_s = 600\nmax_attempts = 12\npoll_interval_s = 0.1\n"
    return "\n".join([
        workers,
        delivery_table(first_retry_s=0.5, max_retry_s=1, check_interval_s=0.1, lease_s=600),
        destination_table("pacs", "ORTHANC", pacs_port),
        sphere_pipeline_tables(bundle, ["pacs"]),
    ])


def _poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _spool_count(node: RadnodeProcess, series_uid: str) -> int:
    """Complete instance files of one series in the node's spool."""
    return sum(1 for _ in (node.data_dir / "spool").glob(f"*/{series_uid}/*.dcm"))


class Flow:
    """Fresh sphere studies on demand, sent by one retrying storescu sender."""

    def __init__(self, folder: Path, sender: RetryingSender) -> None:
        self.folder = folder
        self.sender = sender
        self.studies: list[list[Path]] = []

    def new_study(self) -> list[Path]:
        files = write_sphere_study(self.folder / f"study-{len(self.studies):02d}", slices=SLICES,
                                   seed=len(self.studies))
        self.studies.append(files)
        self.sender.send(files)
        return files


def _aim(phase: str, node: RadnodeProcess, flow: Flow, rng: random.Random) -> None:
    """Return at a random moment of ``phase`` (best effort: the caller records what was hit)."""
    if phase == "receive":
        files = flow.new_study()
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        stored = rng.randint(1, SLICES - 2)
        _poll(lambda: _spool_count(node, series_uid) >= stored or not flow.sender.busy(), timeout=60, interval=0.001)
        return
    now = activity(node.data_dir)
    if not (now.queued_jobs or now.running_jobs or (phase == "deliver" and now.pending_deliveries)):
        flow.new_study()
    if phase == "infer":
        _poll(lambda: activity(node.data_dir).running_jobs > 0, timeout=90)
        time.sleep(rng.uniform(0.0, 1.0))
    else:
        _poll(lambda: activity(node.data_dir).sending_deliveries > 0, timeout=90, interval=0.002)
        time.sleep(rng.uniform(0.0, 0.3))


def _phases_hit(at_kill: Activity, cut_senders: int) -> set[str]:
    """The phases a kill landed in, from the database as the kill left it and the cut-off senders."""
    hit = set()
    if cut_senders and at_kill.receiving_series:
        hit.add("receive")
    if at_kill.running_jobs:
        hit.add("infer")
    if at_kill.sending_deliveries:
        hit.add("deliver")
    return hit


def _quiescent(node: RadnodeProcess, sender: RetryingSender) -> bool:
    """Everything sent is acknowledged (retrying what was not) and the node has nothing left to do."""
    if not sender.busy():
        sender.collect()
        if sender.unacknowledged:
            sender.retry()
            return False
    return not sender.busy() and activity(node.data_dir).quiet


def test_repeated_kill_9_in_receive_infer_and_deliver_loses_nothing_and_duplicates_nothing(
    radnode, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    rng = random.Random(SEED)
    schedule = [phase for phase in PHASES for _ in range(ROUNDS_PER_PHASE)]
    rng.shuffle(schedule)
    bundle = build_sphere_bundle(tmp_path / "bundle")
    pacs = Orthanc(tmp_path / "orthanc", tcp_nodelay=False).start()  # slow enough to be caught delivering
    node = radnode("node", grace_s=0.3, quiet_s=8, extra=_tables(bundle, pacs.dicom_port))
    port = node.port
    sender = RetryingSender(port, tmp_path / "storescu")
    flow = Flow(tmp_path / "studies", sender)
    hits: Counter[str] = Counter()
    log: list[tuple[str, list[str], float]] = []
    try:
        for phase in schedule:
            started = time.monotonic()
            _aim(phase, node, flow, rng)
            node.kill9()
            cut = sender.collect()
            landed = _phases_hit(activity(node.data_dir), cut)
            hits.update(landed)
            log.append((phase, sorted(landed), round(time.monotonic() - started, 1)))
            node.start()
            sender.retry()

        node.wait_for(lambda: _quiescent(node, sender), timeout=120, interval=0.3, what="quiescence")
        held_by_pacs = {uid: pacs.sop_instance_uids(uid)
                        for (uid,) in query(node.data_dir, "select study_instance_uid from studies")}
        pacs_total = pacs.instance_count()
    finally:
        sender.stop()
        node.kill9()
        pacs.stop()
    print(f"rounds {len(log)}, kills landed in {dict(hits)}, studies {len(flow.studies)}, "
          f"cut-off senders {sender.interrupted}: {log}")

    # the test did what it says: kills landed in every phase, several times each
    assert all(hits[phase] >= 4 for phase in PHASES), (dict(hits), log)

    # every instance: acknowledged, in the spool intact, indexed exactly once, nothing else there
    sent = {path for study in flow.studies for path in study}
    assert sender.acknowledged == sent and not sender.unacknowledged
    data = node.data_dir
    indexed = Counter(uid for (uid,) in query(data, "select sop_instance_uid from instances"))
    spool = {p.relative_to(data).as_posix() for p in node.spool_files()}
    assert set(indexed.values()) == {1} and len(indexed) == len(sent)
    assert spool == {path for (path,) in query(data, "select path from instances")}
    assert node.spool_leftovers() == []
    for path in sent:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored = data / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(path), f"{path} is not intact in the spool"
    assert query(data, "select count(*) from series where instance_count != "
                       "(select count(*) from instances where instances.series_id = series.id)") == [(0,)]

    # every job: one per (series, pipeline, generation) that completed, succeeded, nothing held
    series = query(data, "select id, generation, state from series")
    assert len(series) == len(flow.studies) and {state for _, _, state in series} == {"complete"}
    jobs = query(data, "select series_id, pipeline, generation, state, lease_owner from jobs")
    assert sorted((s, g) for s, _, g, _, _ in jobs) == sorted(
        (s, g) for s, generation, _ in series for g in range(generation + 1))
    assert {(state, owner) for _, _, _, state, owner in jobs} == {("succeeded", None)}

    # every result: delivered, and held by the PACS exactly once per study, nothing more
    deliveries = query(data, "select job_id, state, lease_owner from deliveries")
    assert len(deliveries) == len(jobs) and {(state, owner) for _, state, owner in deliveries} == {("done", None)}
    assert len(held_by_pacs) == len(flow.studies)
    for study_uid, held in held_by_pacs.items():
        expected = [uid for (uid,) in query(data, "select sop_instance_uid from results where "
                                                  "study_instance_uid = ? and fallback_for is null", study_uid)]
        assert sorted(held) == sorted(expected) and len(expected) > 2, study_uid
    assert pacs_total == sum(len(held) for held in held_by_pacs.values())


def test_worker_killed_alone_mid_job_is_restarted_and_its_job_taken_up_at_once(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        node = radnode("node", grace_s=0.3, extra=_tables(build_sphere_bundle(tmp_path / "bundle"), pacs.dicom_port))
        files = write_sphere_study(tmp_path / "study", slices=30)
        sender = RetryingSender(node.port, tmp_path / "storescu")
        sender.send(files)
        sender.collect()
        owner = node.wait_for(lambda: query(node.data_dir, "select lease_owner from jobs where state = 'running'"),
                              timeout=60, interval=0.05, what="the worker to take the job")[0][0]

        os.kill(int(owner.split(":")[1]), signal.SIGKILL)  # owner: host:pid:index

        # the lease is 600 s: within this wait the job can only come back because its owner died
        node.wait_for(lambda: query(node.data_dir, "select state from deliveries") == [("done",)],
                      timeout=90, interval=0.2, what="the job to be taken up again and delivered")
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        held = sorted(pacs.sop_instance_uids(study_uid))
    finally:
        pacs.stop()
    assert query(node.data_dir, "select state, attempts from jobs") == [("succeeded", 2)]
    assert "worker-0 exited with code -9; restarting" in node.log()
    assert held == sorted(uid for (uid,) in query(node.data_dir, "select sop_instance_uid from results "
                                                                  "where fallback_for is null"))
