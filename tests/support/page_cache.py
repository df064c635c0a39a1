"""What of a file the page cache holds, and what file system a folder is on (util-linux, coreutils)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` held in the page cache (util-linux ``fincore``)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def file_system_type(path: Path) -> str:
    """The type of the file system ``path`` is on, as ``stat -f`` names it (ext2/ext3, xfs, tmpfs...)."""
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def skip_where_files_live_in_the_page_cache(path: Path) -> None:
    """Skip the calling test when ``path`` is on tmpfs, whose files live in the page cache:
    there is nothing for a write to bypass."""
    if file_system_type(path) == "tmpfs":
        pytest.skip(f"{path} is on tmpfs, whose files live in the page cache: nothing to bypass")
