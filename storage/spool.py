"""The file store: ``spool/<study>/<series>/<sop>.dcm`` under data_dir, written atomically.

A file is written under a temporary name that does not end in ``.dcm``, fsynced, renamed into
place and its folder fsynced, so a file with the final name is always complete and durable; a
crash leaves at most a temporary file, which ``remove_partial_files`` deletes at start-up.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from storage.uids import validate_uid

TEMP_SUFFIX = ".partial"


@dataclass(frozen=True)
class SpoolPath:
    """Where one instance lives: ``relative`` to data_dir and ``absolute``."""

    relative: str
    absolute: Path


class Spool:
    """The received-instance store under ``data_dir/spool``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "spool"
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> SpoolPath:
        """The path of an instance; every UID is validated first, so none can become ``..``."""
        study = validate_uid(study_uid, "StudyInstanceUID")
        series = validate_uid(series_uid, "SeriesInstanceUID")
        sop = validate_uid(sop_uid, "SOPInstanceUID")
        relative = f"spool/{study}/{series}/{sop}.dcm"
        return SpoolPath(relative=relative, absolute=self.data_dir / relative)

    def write(self, target: SpoolPath, data: bytes | memoryview) -> None:
        """Write ``data`` durably to ``target`` (temp file, fsync, rename, fsync of the folder)."""
        folder = target.absolute.parent
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder, target.absolute.name, data)

    def free_bytes(self) -> int:
        """Free space on the file system that holds the spool, in bytes."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def remove_partial_files(self) -> int:
        """Delete temporary files left by a crash mid-write; return how many were removed."""
        removed = 0
        for path in self.root.rglob(f"*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed


def _create_temporary(folder: Path, name: str) -> tuple[Path, int]:
    """A new temporary file for ``folder/name`` (a name that does not end in .dcm), open for writing."""
    temp = folder / f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    return temp, os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)


def _write_fully(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomically(folder: Path, name: str, data: bytes | memoryview) -> None:
    """Write ``folder/name`` so that it is either absent, the previous file, or complete."""
    temp, fd = _create_temporary(folder, name)
    try:
        _write_fully(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temp, folder / name)
    _fsync_directory(folder)


def _fsync_directory(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


FSYNC_THREADS = 8  # concurrent fsyncs share journal commits (ext4/xfs), so a batch costs a few flushes


def write_many_atomically(files: Sequence[tuple[Path, str, bytes]]) -> None:
    """Write several ``(folder, name, data)`` files with the guarantee of :func:`write_atomically`
    for each, at the cost of far fewer disk flushes: every file is written under its temporary
    name, all are fsynced concurrently, then renamed, and each folder is fsynced once.

    When anything fails, no temporary file is left and no final name is created by this call
    (a failure while renaming leaves the files renamed so far, each complete)."""
    temps: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        for folder, name, data in files:
            temp, fd = _create_temporary(folder, name)
            temps.append((temp, folder / name))
            try:
                _write_fully(fd, data)
            finally:
                os.close(fd)

        def fsync_path(path: Path) -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        with ThreadPoolExecutor(max_workers=min(FSYNC_THREADS, max(1, len(temps)))) as pool:
            list(pool.map(fsync_path, [temp for temp, _ in temps]))
    except BaseException:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        raise
    for index, (temp, final) in enumerate(temps):
        try:
            os.replace(temp, final)
        except BaseException:
            for leftover, _ in temps[index:]:
                leftover.unlink(missing_ok=True)
            raise
    for folder in sorted({final.parent for _, final in temps}):
        _fsync_directory(folder)
