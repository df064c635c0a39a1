"""Logging set-up: one format for every process, to stderr and ``data_dir/logs/radnode.log``.

Log lines carry UIDs, AE titles, addresses and counts, never patient names, IDs or birth dates.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"


def configure_logging(level: str, data_dir: Path | None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(stream)
    if data_dir is not None:
        log_dir = data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / "radnode.log", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(file_handler)
    # pynetdicom logs dataset summaries at DEBUG/INFO that can contain patient data: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # highdicom logs each module it copies into every SEG and SR at INFO: 16 lines per job, more than
    # radnode's own. Kept for DEBUG, where they help trace a result object's attributes.
    logging.getLogger("highdicom").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
