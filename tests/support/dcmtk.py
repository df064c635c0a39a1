"""Driving DCMTK's echoscu and storescu (Debian dcmtk) as the real sending peers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Without TCP_NODELAY each DCMTK C-STORE waits ~40 ms on Nagle + delayed ACK (FIELD-NOTES.md).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: run scripts/bootstrap.sh (installs Debian dcmtk)")
    return path


@dataclass(frozen=True)
class StoreOutcome:
    returncode: int
    acknowledged: list[Path]  # files that got "Received Store Response (Success)"
    output: str


def echoscu(port: int, called: str = "RADNODE", calling: str = "ECHOSCU",
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("echoscu"), "-aet", calling, "-aec", called, "-to", "5", "127.0.0.1", str(port)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout,
    )


def storescu_command(port: int, files: list[Path], called: str = "RADNODE", calling: str = "STORESCU",
                     extra: list[str] | None = None) -> list[str]:
    return [require("storescu"), "-v", "-aet", calling, "-aec", called, *(extra or []),
            "127.0.0.1", str(port), *map(str, files)]


def storescu(port: int, files: list[Path], called: str = "RADNODE", calling: str = "STORESCU",
             extra: list[str] | None = None, timeout: float = 300) -> StoreOutcome:
    """Send ``files`` on one association with ``storescu -v``; report which were acknowledged."""
    process = subprocess.run(storescu_command(port, files, called, calling, extra),
                             capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)
    output = process.stdout + process.stderr
    return StoreOutcome(process.returncode, parse_acknowledged(output), output)


def parse_acknowledged(output: str) -> list[Path]:
    """Files whose C-STORE response was Success, from storescu -v output."""
    acknowledged: list[Path] = []
    current: Path | None = None
    for line in output.splitlines():
        sending = re.match(r"I: Sending file: (.+)$", line)
        if sending:
            current = Path(sending.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(current)
            current = None
    return acknowledged
