"""The audit writer: records from several processes at once land as whole JSON lines."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from node.audit import AuditLog, read_audit

WRITERS, RECORDS = 4, 300


def _write(data_dir: Path, writer: int) -> None:
    audit = AuditLog(data_dir)
    for index in range(RECORDS):
        audit.record("association", writer=writer, index=index, calling_ae_title="X" * 16, padding="p" * 900)


def test_records_from_concurrent_processes_are_whole_lines(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write, args=(tmp_path, n)) for n in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    records = read_audit(tmp_path)  # json.loads of every line: a torn or interleaved line would fail here
    assert sorted((r["writer"], r["index"]) for r in records) == [
        (w, i) for w in range(WRITERS) for i in range(RECORDS)]


def test_patient_fields_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="patient"):
        AuditLog(tmp_path).record("job", PatientName="Doe^John")
    assert read_audit(tmp_path) == []
