"""A full disk: the node's data directory on a tmpfs of a few MB that fills while studies arrive.

Refused instances answer 0xA700 and leave nothing behind, the node keeps answering, and once space
is freed the senders' retries store the rest; every acknowledged instance is intact throughout.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from storage.direct_io import AlignedBuffers
from storage.spool import TEMP_SUFFIX, write_atomically
from tests.support.dcmtk import DCMTK_ENV, echoscu, parse_acknowledged, storescu_command
from tests.support.series import dataset_bytes, write_series

MB = 2**20


@pytest.fixture
def small_filesystem() -> Iterator[Callable[..., Path]]:
    """Mount a file system of a given size (MB) on a folder: a tmpfs, or ``kind="ext4"``, an ext4
    on a loop device, where O_DIRECT writes reach a block device (storage/direct_io.py). Every
    mount is undone after the test."""
    mounted: list[Path] = []

    def _mount(folder: Path, size_mb: int, kind: str = "tmpfs") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "tmpfs":
            command = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(folder)]
        else:
            image = folder.with_name(f"{folder.name}.ext4")
            with open(image, "wb") as handle:
                handle.truncate(size_mb * MB)
            # 4 KB blocks as on a real disk; no blocks reserved for root, who runs the node here
            subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", str(image)], check=True,
                           capture_output=True)
            command = ["mount", "-o", "loop", str(image), str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"mounting a {kind} is not permitted here ({result.stderr.strip()}); "
                        f"this test needs root or CAP_SYS_ADMIN")
        mounted.append(folder)
        if kind != "tmpfs":
            (folder / "lost+found").rmdir()  # the tests list what the disk holds
            folder.chmod(0o755)
        return folder

    yield _mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # a process still held it


def _free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def _fill(path: Path, size: int) -> None:
    """Another user of the disk: ``size`` bytes of real (not sparse) data."""
    with open(path, "wb") as handle:
        handle.write(b"\xa5" * size)
        handle.flush()
        os.fsync(handle.fileno())


def _statuses(output: str) -> Counter[str]:
    return Counter(re.findall(r"Received Store Response \(([^)]*)\)", output))


@pytest.mark.parametrize(("kind", "direct"), [("tmpfs", False), ("tmpfs", True), ("ext4", True)],
                         ids=["tmpfs-buffered", "tmpfs-direct", "ext4-direct"])
def test_write_that_hits_enospc_mid_file_leaves_neither_a_partial_file_nor_a_changed_one(
    small_filesystem, tmp_path: Path, kind: str, direct: bool  # type: ignore[no-untyped-def]
) -> None:
    folder = small_filesystem(tmp_path / "disk", 1 if kind == "tmpfs" else 8, kind)
    write_atomically(folder, "kept.dcm", b"first version")
    too_big = b"\x00" * (_free_bytes(folder) + 2 * MB)  # fills the disk part way through

    with pytest.raises(OSError) as raised:
        write_atomically(folder, "kept.dcm", too_big, direct_buffers=AlignedBuffers() if direct else None)

    assert raised.value.errno == errno.ENOSPC
    assert sorted(p.name for p in folder.iterdir()) == ["kept.dcm"]
    assert (folder / "kept.dcm").read_bytes() == b"first version"
    assert not list(folder.glob(f"*{TEMP_SUFFIX}"))


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_full_disk_refuses_with_out_of_resources_and_a_retry_stores_the_rest_once_space_is_freed(
    small_filesystem, radnode, tmp_path: Path, kind: str  # type: ignore[no-untyped-def]
) -> None:
    data_dir = small_filesystem(tmp_path / "node" / "data", 12 if kind == "tmpfs" else 24, kind)
    filler = data_dir / "other-data.bin"
    _fill(filler, _free_bytes(data_dir) - 4 * MB)  # leaves ~4 MB for the node, the studies need ~7 MB
    node = radnode("node", min_free_disk_mb=1)
    assert node.data_dir == data_dir
    studies = []
    for index in range(3):  # large and small images alternate, so small ones still fit late on
        large = write_series(tmp_path / f"large-{index}", 16, size=256, seed=index)
        small = write_series(tmp_path / f"small-{index}", 16, size=48, seed=10 + index,
                             study_uid=str(pydicom.dcmread(large[0]).StudyInstanceUID))
        studies.append([path for pair in zip(large, small) for path in pair])

    # three senders at once, each going on after a refusal (-nh), so writes race for the last bytes
    senders = [subprocess.Popen(storescu_command(node.port, files, extra=["-nh"]), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV) for files in studies]
    outputs = [sender.communicate(timeout=120)[0] for sender in senders]
    acknowledged = {path for output in outputs for path in parse_acknowledged(output)}
    statuses = sum((_statuses(output) for output in outputs), Counter())
    print(f"while full: {dict(statuses)}; free {_free_bytes(data_dir)} B")

    assert statuses["Refused: OutOfResources"] > 0 and set(statuses) == {"Success", "Refused: OutOfResources"}
    assert node.spool_leftovers() == []
    assert echoscu(node.port).returncode == 0
    assert node.process is not None and node.process.poll() is None and "exited with code" not in node.log()
    _assert_stored_intact(node, acknowledged)

    filler.unlink()  # the admin frees space
    unacknowledged = [path for files in studies for path in files if path not in acknowledged]
    retry = subprocess.run(storescu_command(node.port, unacknowledged), capture_output=True, text=True,
                           env=DCMTK_ENV, timeout=120)
    retried = set(parse_acknowledged(retry.stdout + retry.stderr))

    assert retried == set(unacknowledged)
    _assert_stored_intact(node, {path for files in studies for path in files})
    assert node.spool_leftovers() == []
    assert sum(s["instance_count"] for s in node.status()["studies"]) == sum(len(files) for files in studies)


def _assert_stored_intact(node, files: set[Path]) -> None:  # type: ignore[no-untyped-def]
    """Each file is in the spool byte for byte (dataset), and the spool holds nothing else."""
    expected = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored = node.data_dir / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(path), f"{path} was acknowledged but is not intact"
        expected.add(stored)
    assert set(node.spool_files()) == expected


def test_a_database_whose_disk_fills_refuses_with_out_of_resources_and_keeps_spool_and_index_in_step(
    small_filesystem, radnode, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """The spool has room, the SQLite database's own disk does not: the index write fails with
    "database or disk is full", the file just written is removed and the sender gets 0xA700."""
    database_disk = small_filesystem(tmp_path / "database-disk", 4)
    node = radnode("node", database_url=f"sqlite:///{database_disk / 'radnode.sqlite3'}")
    stats = os.statvfs(database_disk)
    filler = database_disk / "other-data.bin"
    _fill(filler, stats.f_bavail * stats.f_frsize - 96 * 1024)  # room for a few commits only
    files = write_series(tmp_path / "s", 150, size=32, seed=21)

    outcome = subprocess.run(storescu_command(node.port, files, extra=["-nh"]), capture_output=True, text=True,
                             env=DCMTK_ENV, timeout=120)
    output = outcome.stdout + outcome.stderr
    acknowledged = set(parse_acknowledged(output))
    statuses = _statuses(output)
    print(f"database disk full: {dict(statuses)}")

    assert statuses["Refused: OutOfResources"] > 0 and set(statuses) == {"Success", "Refused: OutOfResources"}
    assert "database cannot grow (disk full)" in node.log()
    assert echoscu(node.port).returncode == 0
    _assert_stored_intact(node, acknowledged)  # refused instances left nothing in the spool
    assert node.spool_leftovers() == []

    filler.unlink()
    unacknowledged = [path for path in files if path not in acknowledged]
    retry = subprocess.run(storescu_command(node.port, unacknowledged), capture_output=True, text=True,
                           env=DCMTK_ENV, timeout=120)
    assert set(parse_acknowledged(retry.stdout + retry.stderr)) == set(unacknowledged)
    _assert_stored_intact(node, set(files))
    assert sum(s["instance_count"] for s in node.status()["studies"]) == len(files)
