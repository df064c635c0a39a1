"""storescu runs in the background, as a scanner would: the test keeps what each acknowledged and
sends what was not acknowledged again (what a scanner's retry queue does)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.support.dcmtk import DCMTK_ENV, parse_acknowledged, storescu_command


@dataclass
class RetryingSender:
    """Every file handed to :meth:`send` is either in ``acknowledged`` or in ``unacknowledged``
    once :meth:`collect` has seen the storescu that carried it end."""

    port: int
    log_dir: Path  # each storescu's -v output is kept here, for reading after a failure
    acknowledged: set[Path] = field(default_factory=set)
    unacknowledged: set[Path] = field(default_factory=set)
    interrupted: int = 0  # storescu runs that ended before every file was acknowledged
    _started: int = 0
    _running: list[tuple[subprocess.Popen[str], IO[str], list[Path]]] = field(default_factory=list)

    def send(self, files: list[Path]) -> None:
        """Start one storescu association carrying ``files``; returns at once."""
        self.unacknowledged.update(files)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._started += 1
        output = open(self.log_dir / f"storescu-{self._started:03d}.log", "w+", encoding="utf-8")
        process = subprocess.Popen(storescu_command(self.port, files), stdout=output, stderr=subprocess.STDOUT,
                                   text=True, env=DCMTK_ENV)
        self._running.append((process, output, files))

    def busy(self) -> bool:
        return any(process.poll() is None for process, _, _ in self._running)

    def collect(self, timeout: float = 120.0) -> int:
        """Wait for every running storescu; return how many of them were cut off."""
        cut = 0
        for process, output, files in self._running:
            process.wait(timeout=timeout)
            output.seek(0)
            acknowledged = set(parse_acknowledged(output.read()))
            output.close()
            self.acknowledged |= acknowledged
            self.unacknowledged -= acknowledged
            if len(acknowledged) < len(files):
                cut += 1
        self._running.clear()
        self.interrupted += cut
        return cut

    def retry(self) -> None:
        """Send again what was handed over but never acknowledged (one association)."""
        if self.unacknowledged:
            self.send(sorted(self.unacknowledged))

    def stop(self) -> None:
        for process, output, _ in self._running:
            if process.poll() is None:
                process.kill()
                process.wait()
            output.close()
        self._running.clear()
