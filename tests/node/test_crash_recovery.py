"""kill -9 of the node while storescu sends: nothing acknowledged is lost, nothing partial counts."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pydicom

from storage.spool import temporary_name
from tests.support.dcmtk import DCMTK_ENV, parse_acknowledged, storescu_command
from tests.support.series import dataset_bytes, write_series


def _indexed_sop_uids(node) -> set[str]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(node.data_dir / "radnode.sqlite3") as db:
        return {row[0] for row in db.execute("select sop_instance_uid from instances")}


def test_every_acknowledged_instance_survives_kill_9_and_the_study_completes(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode(grace_s=0.5, quiet_s=3)
    files = write_series(tmp_path / "s", 400, size=256, seed=7)
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    sender = subprocess.Popen(storescu_command(node.port, files), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    node.wait_for(lambda: len(node.spool_files()) >= 40, timeout=60, interval=0.02, what="40 stored files")

    node.kill9()
    output, _ = sender.communicate(timeout=60)
    acknowledged = parse_acknowledged(output)
    node.start()

    assert 0 < len(acknowledged) < len(files), "the kill must land while storescu is sending"
    indexed = _indexed_sop_uids(node)
    for path in acknowledged:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored = node.data_dir / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(path), f"{path.name} was acknowledged but is not intact"
        assert ds.SOPInstanceUID in indexed
    assert node.spool_leftovers() == [], "a partial file survived the restart"
    assert len(indexed) == len(node.spool_files())
    series = node.wait_for(
        lambda: (s := node.series_status(series_uid)) and s["state"] == "complete" and s,
        timeout=30, what="the interrupted series to complete after restart",
    )
    assert series["instance_count"] == len(indexed)


def test_a_receiver_killed_alone_has_its_partial_files_removed_and_no_other_process_files(radnode) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    receiver_pid = int(re.findall(r"listening on .* \(pid (\d+),", node.log())[-1])
    folder = node.data_dir / "spool" / "1.2.826.0.1.1" / "1.2.826.0.1.2"
    folder.mkdir(parents=True)
    left_by_receiver = folder / temporary_name("1.2.826.0.1.3.dcm", pid=receiver_pid)
    other_writer = folder / temporary_name("1.2.826.0.1.4.dcm", pid=receiver_pid + 100_000)
    left_by_receiver.write_bytes(b"half an image")
    other_writer.write_bytes(b"another process is writing this one")

    os.kill(receiver_pid, signal.SIGKILL)
    node.wait_for(lambda: not left_by_receiver.exists(), what="the killed receiver's partial file to be removed")

    assert other_writer.exists()
    node.wait_for(lambda: f"removed 1 partial spool file(s) left by receiver-0 (pid {receiver_pid})" in node.log(),
                  what="the removal to be logged")


def test_a_start_removes_the_outbox_files_of_gone_workers_and_leaves_those_still_being_written(
    radnode, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    folder = tmp_path / "node" / "data" / "outbox" / "1.2.826.0.1.1" / "1.2.826.0.1.2"
    folder.mkdir(parents=True)
    gone_worker = subprocess.Popen(["true"])
    gone_worker.wait()
    abandoned = folder / temporary_name("1.2.826.0.1.3.dcm", pid=gone_worker.pid)
    being_written = folder / temporary_name("1.2.826.0.1.4.dcm", pid=os.getpid())  # a live process
    other_host = folder / temporary_name("1.2.826.0.1.5.dcm", pid=gone_worker.pid, host="another_node")
    for path in (abandoned, being_written, other_host):
        path.write_bytes(b"part of a SEG")

    node = radnode()

    assert not abandoned.exists()
    assert being_written.exists() and other_host.exists()
    assert "outbox recovery: 1 partial files removed" in node.log()


def test_a_worker_killed_alone_has_its_partial_outbox_files_removed(radnode) -> None:  # type: ignore[no-untyped-def]
    node = radnode(workers=1)
    found = node.wait_for(lambda: re.findall(r"worker 0 ready \(pid (\d+),", node.log()), timeout=60,
                          what="the worker to be ready")
    worker_pid = int(found[-1])
    folder = node.data_dir / "outbox" / "1.2.826.0.1.1" / "1.2.826.0.1.2"
    folder.mkdir(parents=True)
    left_by_worker = folder / temporary_name("1.2.826.0.1.3.dcm", pid=worker_pid)
    left_by_worker.write_bytes(b"part of a SEG")

    os.kill(worker_pid, signal.SIGKILL)

    node.wait_for(lambda: not left_by_worker.exists(), what="the killed worker's partial outbox file to be removed")
    node.wait_for(lambda: f"removed 1 partial outbox file(s) left by worker-0 (pid {worker_pid})" in node.log(),
                  what="the removal to be logged")
