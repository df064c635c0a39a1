"""The outbox: result objects waiting for (and after) delivery, ``outbox/<study>/<series>/<sop>.dcm``."""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset

from storage.spool import SpoolPath, make_folder_durably, write_many_atomically
from storage.uids import validate_uid


class Outbox:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "outbox"
        self.root.mkdir(parents=True, exist_ok=True)

    def write_all(self, datasets: Sequence[Dataset]) -> list[tuple[SpoolPath, int]]:
        """Encode a job's result objects as DICOM files (PS3.10) and write them durably in one batch
        (storage/spool.py write_many_atomically: each file complete or absent, a few disk flushes for
        the lot); return each one's path and size, in order."""
        files: list[tuple[Path, str, bytes]] = []
        written: list[tuple[SpoolPath, int]] = []
        for dataset in datasets:
            study = validate_uid(dataset.StudyInstanceUID, "StudyInstanceUID")
            series = validate_uid(dataset.SeriesInstanceUID, "SeriesInstanceUID")
            sop = validate_uid(dataset.SOPInstanceUID, "SOPInstanceUID")
            relative = f"outbox/{study}/{series}/{sop}.dcm"
            buffer = BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
            folder = self.data_dir / f"outbox/{study}/{series}"
            make_folder_durably(folder)
            files.append((folder, f"{sop}.dcm", data))
            written.append((SpoolPath.under(self.data_dir, relative), len(data)))
        write_many_atomically(files)
        return written
