"""The file store: ``spool/<study>/<series>/<sop>.dcm`` under data_dir, written atomically.

A file is written under a temporary name that does not end in ``.dcm``, fsynced, renamed into
place and its folder fsynced, so a file with the final name is always complete and durable; a
crash leaves at most a temporary file. Received instances are written past the page cache
(``O_DIRECT``, storage/direct_io.py) where the file system allows.

The temporary name carries the writer's host and process id
(``.<name>.<host>-<pid>-<n>.partial``), so that the files of a dead process can be told from
those other processes, on this host or on others sharing ``data_dir``, are still writing: at
start-up :func:`remove_abandoned_partial_files` deletes those whose process of this host is gone,
and the supervisor deletes a dead child's at once (:func:`remove_partial_files_of`).
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from storage.direct_io import AlignedBuffers, write_all_direct, write_fully
from storage.uids import validate_uid

TEMP_SUFFIX = ".partial"
THIS_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"  # as it appears in temporary names
_TEMPORARY_NAME = re.compile(r"\..*\.([A-Za-z0-9_]+)-(\d+)-\d+" + re.escape(TEMP_SUFFIX))


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
        self._buffers = AlignedBuffers()

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> SpoolPath:
        """The path of an instance; every UID is validated first, so none can become ``..``."""
        study = validate_uid(study_uid, "StudyInstanceUID")
        series = validate_uid(series_uid, "SeriesInstanceUID")
        sop = validate_uid(sop_uid, "SOPInstanceUID")
        relative = f"spool/{study}/{series}/{sop}.dcm"
        return SpoolPath(relative=relative, absolute=self.data_dir / relative)

    def write(self, target: SpoolPath, data: bytes | memoryview) -> None:
        """Write ``data`` durably to ``target`` (temp file, fsync, rename, fsync of the folder),
        past the page cache where the file system allows (storage/direct_io.py). The series
        folder is made when it is missing (first instance, or removed by retention)."""
        write_atomically(target.absolute.parent, target.absolute.name, data, make_folder=True,
                         direct_buffers=self._buffers)

    def free_bytes(self) -> int:
        """Free space on the file system that holds the spool, in bytes."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize


def temporary_file_writer(file_name: str) -> tuple[str, int] | None:
    """The (host, pid) a temporary file's name gives its writer; None for another naming (a
    temporary file of an older radnode)."""
    match = _TEMPORARY_NAME.fullmatch(file_name)
    return None if match is None else (match.group(1), int(match.group(2)))


def remove_partial_files_of(root: Path, pid: int) -> int:
    """Delete the temporary files under ``root`` (none when it does not exist) that process
    ``pid`` of this host was writing (it died mid-write); others' are left alone. Return how many
    were deleted."""
    return _unlink_all(root.rglob(f"*.{THIS_HOST}-{pid}-*{TEMP_SUFFIX}"))


def remove_abandoned_partial_files(root: Path, process_alive: Callable[[int], bool]) -> int:
    """Delete the temporary files under ``root`` (none when it does not exist) whose writer cannot
    finish them: a process of this host that is gone, or a writer the name does not tell. Files
    of live processes and of other hosts sharing ``data_dir`` stay. Return how many were deleted."""

    def abandoned(path: Path) -> bool:
        writer = temporary_file_writer(path.name)
        return writer is None or (writer[0] == THIS_HOST and not process_alive(writer[1]))

    return _unlink_all(path for path in root.rglob(f"*{TEMP_SUFFIX}") if abandoned(path))


def _unlink_all(paths: Iterable[Path]) -> int:
    removed = 0
    for path in paths:
        path.unlink(missing_ok=True)
        removed += 1
    return removed


_temporary_numbers = itertools.count()  # next() on a count is atomic under the GIL: unique per process


def temporary_name(name: str, pid: int | None = None, host: str = THIS_HOST) -> str:
    """The temporary name for ``name`` written by process ``pid`` (this one by default) of
    ``host``: hidden, not ending in .dcm, unique among this process's writes."""
    return f".{name}.{host}-{os.getpid() if pid is None else pid}-{next(_temporary_numbers)}{TEMP_SUFFIX}"


def _create_temporary(folder: Path, name: str, make_folder: bool = False) -> tuple[Path, int]:
    """A new temporary file for ``folder/name``, open for writing; with ``make_folder``, the
    folder (and its parents) is made when the first attempt finds it missing."""
    temp = folder / temporary_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return temp, os.open(temp, flags, 0o640)
    except FileNotFoundError:
        if not make_folder:
            raise
    make_folder_durably(folder)
    return temp, os.open(temp, flags, 0o640)


def make_folder_durably(folder: Path) -> None:
    """``mkdir -p folder``, then fsync the parent of every folder made: a new folder's name lives
    in its parent, and without that flush a power cut could lose a whole new series folder."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    folder.mkdir(parents=True, exist_ok=True)
    for made in missing:
        _fsync_directory(made.parent)


def write_atomically(folder: Path, name: str, data: bytes | memoryview, make_folder: bool = False,
                     direct_buffers: AlignedBuffers | None = None) -> None:
    """Write ``folder/name`` so that it is either absent, the previous file, or complete; with
    ``make_folder``, a missing folder is made first; with ``direct_buffers``, the data bypasses
    the page cache where the file system allows (storage/direct_io.py)."""
    temp, fd = _create_temporary(folder, name, make_folder)
    try:
        if direct_buffers is None:
            write_fully(fd, data)
        else:
            write_all_direct(fd, data, direct_buffers)
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
                write_fully(fd, data)
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
