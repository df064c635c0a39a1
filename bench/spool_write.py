"""Wall and CPU time of one durable spool write, through the page cache and with O_DIRECT.

Not a test. Run: ``.venv/bin/python bench/spool_write.py [--files 300] [--kb 513] [--rounds 3]``.
Each file is written as the receiver writes an instance (storage/spool.py ``write_atomically``:
temporary name, write, fsync, rename, fsync of the folder) into a folder under the repository (the
disk a default ``data_dir`` is on); the files stay until the end of the run, as received instances
do, so each round writes into pages the page cache has not held before. The two ways alternate,
round after round, so that a drift of the machine's speed reaches both.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.direct_io import AlignedBuffers  # noqa: E402
from storage.spool import write_atomically  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_files(folder: Path, payloads: list[bytes], count: int, buffers: AlignedBuffers | None) -> tuple[float, float]:
    """Write ``count`` files; return (wall seconds, CPU seconds) per file."""
    folder.mkdir()
    os.sync()
    time.sleep(0.5)  # let earlier writeback finish before the clock starts
    started_wall, started_cpu = time.perf_counter(), cpu_seconds()
    for index in range(count):
        write_atomically(folder, f"{index}.dcm", payloads[index % len(payloads)], direct_buffers=buffers)
    return (time.perf_counter() - started_wall) / count, (cpu_seconds() - started_cpu) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="files per round and way")
    parser.add_argument("--kb", type=int, default=513, help="size of each file in KB (a 512 x 512 CT slice: 513)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    payloads = [os.urandom(args.kb * 1024) for _ in range(4)]
    work = Path(tempfile.mkdtemp(prefix=".bench-spool-write-", dir=ROOT))
    ways = {"page cache": None, "O_DIRECT": AlignedBuffers()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    try:
        for round_number in range(args.rounds):
            for name, buffers in ways.items():
                folder = work / f"{round_number}-{name.replace(' ', '_')}"
                wall, cpu = write_files(folder, payloads, args.files, buffers)
                results[name].append((wall, cpu))
                print(f"  round {round_number + 1}  {name:<10}  {wall * 1e3:6.2f} ms wall  {cpu * 1e3:6.2f} ms CPU",
                      flush=True)
    finally:
        shutil.rmtree(work)
    print(f"\n{args.files} files of {args.kb} KB per round; temporary name, write, fsync, rename, fsync of the folder")
    print(f"{'way':<12}{'median wall ms/file':>22}{'median CPU ms/file':>21}")
    medians = {}
    for name, rows in results.items():
        walls, cpus = sorted(r[0] for r in rows), sorted(r[1] for r in rows)
        medians[name] = (walls[len(walls) // 2], cpus[len(cpus) // 2])
        print(f"{name:<12}{medians[name][0] * 1e3:>22.2f}{medians[name][1] * 1e3:>21.2f}")
    buffered, direct = medians["page cache"], medians["O_DIRECT"]
    print(f"\npage cache / O_DIRECT: {buffered[0] / direct[0]:.2f}x wall, {buffered[1] / direct[1]:.2f}x CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
