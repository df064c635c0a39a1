"""The audit trail: one JSON object per line in ``data_dir/logs/audit.jsonl``.

Records say who talked to the node and what it did with which data: associations (calling AE
title, address, instances, bytes, outcome, duration), jobs (pipeline, series UID, state, seconds),
deliveries (destination, objects, outcome), retention purges and admin actions. They carry UIDs,
counts and timings only -- never patient names, IDs or birth dates, and never free text taken from
a dataset -- so the file can be kept and shipped without becoming PHI.

Several processes (receivers, workers, the supervisor, the web process) append to the same file:
each record is one ``write(2)`` on a descriptor opened with ``O_APPEND`` under an exclusive
``flock``, so lines never interleave or tear, and it is on disk in the kernel as soon as
``write`` returns (no user-space buffer to flush).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

AUDIT_FILE = Path("logs") / "audit.jsonl"

# Keys that could carry patient data if a caller passed them by mistake: refused outright.
_FORBIDDEN = frozenset({"patient_name", "patient_id", "patient_birth_date", "PatientName", "PatientID",
                        "PatientBirthDate", "birth_date"})


class AuditLog:
    """Appends audit records for one process; safe to share between its threads."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / AUDIT_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> None:
        """Append one record ``{"time": ISO-8601 UTC, "ts": POSIX s, "event": event, **fields}``.

        ``fields`` must be JSON-serialisable UIDs, AE titles, addresses, counts, states and timings."""
        bad = _FORBIDDEN.intersection(fields)
        if bad:
            raise ValueError(f"audit records never carry patient data: {', '.join(sorted(bad))}")
        now = time.time()
        entry = {"time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
                 "ts": round(now, 3), "event": event, **fields}
        line = (json.dumps(entry, separators=(",", ":"), ensure_ascii=True, default=str) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:  # a regular file takes it in one write; loop only for signals
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)  # closing releases the lock


def read_audit(data_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``data_dir``'s audit file, oldest first (for tests and tools)."""
    path = data_dir / AUDIT_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
