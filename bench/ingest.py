"""Ingest benchmark: radnode against DCMTK storescp and Orthanc, same images, same run.

What is measured
  * Throughput. ``--images`` (default 300) CT images of 512 x 512 x 16 bit (~512 KB each, fresh
    UIDs, one study and series) are sent by DCMTK ``storescu`` (``TCP_NODELAY=1``) over ONE
    association, and over FOUR concurrent associations (four folders, four storescu processes).
    Each receiver starts fresh for every run (empty storage, dirty pages of earlier runs flushed
    with sync) and is ready before the clock starts:
      - DCMTK ``storescp --fork`` (``TCP_NODELAY=1``) writing to a temp folder (no fsync);
      - Orthanc (Debian) with a minimal JSON config, ready when ``GET /system`` answers;
      - ``radnode serve`` (workers.count = 0, fresh data_dir, durable spool + SQLite index),
        ready when ``echoscu`` answers.
    The clock covers starting the storescu process(es) until the last one exits. Receivers are
    alternated (storescp, Orthanc, radnode, storescp, ...) and each configuration is repeated
    ``--repeats`` times; the table shows the median. After every radnode run the script checks that
    every image is in the spool and in the database (``radnode status --json``); after the other
    receivers' runs it checks the file count (storescp) or ``/statistics`` (Orthanc).
  * CPU per image, beside each run's time: the CPU time (user + system, from /proc) the receiver's
    processes used during the run, and that of the storescu senders, divided by the image count.
    It shows what each receiver costs the machine, and it varies far less than the time when the
    VM's disk or CPU slows down for minutes at a time. Beside it, the disk cache flushes per image
    that the data disk completed during the run (its /sys stat counter): what durability costs
    each receiver, on a disk where each flush waits for the device. And the share of the
    machine's CPU time left idle during the run (/proc/stat): near 0% means the cores are the
    limit; more means the senders and the receiver are waiting, e.g. for the disk.
  * C-STORE response latency at radnode while a CPU-heavy process runs (a 1-thread torch matmul
    loop, the kind of work a pipeline worker does), and without it for comparison. The latency is
    measured by a pynetdicom SCU in this script: wall time of each ``send_c_store`` call, i.e. from
    the first byte of the request until the response has been received (the file is streamed
    without decoding, ``STORE_SEND_CHUNKED_DATASET``).

Run on a quiet machine (nothing else heavy running)::

    .venv/bin/python bench/ingest.py --repeats 3

It needs Debian's dcmtk and orthanc packages. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.series import image_dataset  # noqa: E402  (the tests' synthetic images)

PYTHON = sys.executable
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # without it every C-STORE waits ~40 ms (FIELD-NOTES.md)
SCU_AET = "BENCHSCU"


# -- test data ------------------------------------------------------------------------------------
def make_images(root: Path, count: int, folders: int = 4, size: int = 512) -> list[list[Path]]:
    """Write ``count`` CT slices (size x size, 16 bit, 1 study, 1 series) split over ``folders``."""
    rng = np.random.default_rng(7)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    groups: list[list[Path]] = [[] for _ in range(folders)]
    pixels = rng.integers(0, 4000, size=(size, size), dtype=np.uint16)
    for index in range(count):
        ds = image_dataset(sop_class=CTImageStorage, study_uid=study, series_uid=series, frame_of_reference_uid=frame,
                           modality="CT", description="BENCH INGEST", instance_number=index + 1,
                           patient_name="Bench^Ingest", patient_id="BENCH-0001")
        ds.ImagePositionPatient = [-256.0, -256.0, 1.0 * index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.roll(pixels, index, axis=0).tobytes()
        folder = root / f"part{index % folders}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        groups[index % folders].append(path)
    return groups


# -- helpers --------------------------------------------------------------------------------------
def settle_disk(seconds: float = 1.0) -> None:
    """Flush what earlier runs left dirty and give the file system time to finish writing it
    back (ext4 checkpoints its journal after the commit that os.sync() waits for), then flush
    again, so that no receiver's clock pays for the previous receiver's writes."""
    os.sync()
    time.sleep(seconds)
    os.sync()


def other_receivers_running() -> list[str]:
    """Command lines of radnode, Orthanc or storescp processes already running (left by an earlier
    run or a test), which take CPU and disk from the receivers measured here."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(words).decode(errors="replace").strip()
        if ("radnode" in text and " serve" in text) or Path(words[0].decode(errors="replace")).name in ("Orthanc", "storescp"):
            found.append(f"pid {cmdline.parent.name}: {text[:120]}")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def echo_ok(port: int, called: str) -> bool:
    result = subprocess.run(["echoscu", "-aet", SCU_AET, "-aec", called, "-to", "2", "127.0.0.1", str(port)],
                            capture_output=True, env=DCMTK_ENV, timeout=10)
    return result.returncode == 0


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group the process leads, then SIGKILL if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``, by its live descendants and by
    the children it has reaped (their threads included): what a receiver spent, read before and
    after a run. The clock ticks of /proc are 10 ms."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        process = int(stat.parent.name)
        parents[process] = int(fields[1])
        times[process] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    tree, pending = set(), [pid]
    while pending:
        current = pending.pop()
        tree.add(current)
        pending += [child for child, parent in parents.items() if parent == current and child not in tree]
    return sum(times.get(process, 0.0) for process in tree)


def disk_flushes(path: Path) -> int | None:
    """Flush requests completed so far by the block device that holds ``path`` (the 16th field of
    its /sys stat file, kernel 5.5 and newer); None when the kernel does not tell."""
    device = os.stat(path).st_dev
    try:
        fields = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat").read_text().split()
    except OSError:
        return None
    return int(fields[15]) if len(fields) > 15 else None


def machine_cpu_ticks() -> tuple[int, int]:
    """Idle (idle + iowait) and total clock ticks of all CPUs so far (the first line of /proc/stat;
    guest time is already inside user and nice)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def children_cpu_seconds() -> float:
    """CPU seconds of this script's reaped children (the storescu senders, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- receivers ------------------------------------------------------------------------------------
@dataclass
class Receiver:
    """One freshly started receiver; ``check(count)`` raises unless ``count`` images were stored."""

    name: str
    called_aet: str
    workdir: Path
    port: int = 0
    process: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    def start(self) -> None:
        raise NotImplementedError

    def check(self, count: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


class StoreSCP(Receiver):
    def start(self) -> None:
        self.port = free_port()
        out = self.workdir / "out"
        out.mkdir(parents=True)
        self.log = open(self.workdir / "storescp.log", "wb")
        # --fork: one child process per association, so four associations are served concurrently
        self.process = subprocess.Popen(
            ["storescp", "--fork", "-aet", self.called_aet, "-od", str(out), str(self.port)],
            env=DCMTK_ENV, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(lambda: echo_ok(self.port, self.called_aet), 20, "storescp", self.process)

    def check(self, count: int) -> None:
        stored = sum(1 for _ in (self.workdir / "out").iterdir())
        if stored != count:
            raise RuntimeError(f"storescp stored {stored} of {count} images")


class Orthanc(Receiver):
    def start(self) -> None:
        self.port, self.http = free_port(), free_port()
        config = {
            "Name": "bench", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"), "DicomAet": self.called_aet,
            "DicomPort": self.port, "HttpPort": self.http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = open(self.workdir / "orthanc.log", "wb")
        self.process = subprocess.Popen(["Orthanc", str(path)], env=DCMTK_ENV, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self._get("/system"), 60, "Orthanc /system", self.process)
        wait_until(lambda: echo_ok(self.port, self.called_aet), 20, "Orthanc C-ECHO", self.process)

    def _get(self, route: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{route}", timeout=5) as response:
            return json.load(response)

    def check(self, count: int) -> None:
        stored = int(self._get("/statistics")["CountInstances"])
        if stored != count:
            raise RuntimeError(f"Orthanc stored {stored} of {count} images")


class Radnode(Receiver):
    def start(self) -> None:
        self.port = free_port()
        self.config_path = self.workdir / "config.toml"
        self.config_path.write_text(
            f"""
[node]
ae_title = "{self.called_aet}"
host = "127.0.0.1"
port = {self.port}
data_dir = "{(self.workdir / 'data').as_posix()}"
min_free_disk_mb = 1
receivers = {self.extra['receivers']}
log_level = "INFO"

[workers]
count = 0
"""
        )
        self.log = open(self.workdir / "serve.log", "wb")
        self.process = subprocess.Popen(
            [str(Path(PYTHON).with_name("radnode")), "serve", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir,
        )
        wait_until(lambda: echo_ok(self.port, self.called_aet), 60, "radnode C-ECHO", self.process)
        # with several receiver processes make sure each serves the shared socket
        wait_until(lambda: self._receivers_ready() >= self.extra["receivers"], 30, "all radnode receivers")

    def _receivers_ready(self) -> int:
        self.log.flush()
        text = (self.workdir / "serve.log").read_text(errors="replace")
        return text.count(f"listening on 127.0.0.1:{self.port} ")

    def check(self, count: int) -> None:
        spool = sum(1 for _ in (self.workdir / "data" / "spool").glob("*/*/*.dcm"))
        result = subprocess.run([str(Path(PYTHON).with_name("radnode")), "status", "--json",
                                 "--config", str(self.config_path)],
                                capture_output=True, text=True, timeout=120, check=True)
        indexed = sum(series["instance_count"] for study in json.loads(result.stdout)["studies"]
                      for series in study["series"])
        if spool != count or indexed != count:
            raise RuntimeError(f"radnode: {spool} files in spool, {indexed} indexed, expected {count}")


RECEIVERS = {"storescp": (StoreSCP, "STORESCP"), "orthanc": (Orthanc, "ORTHANC"), "radnode": (Radnode, "RADNODE")}


# -- senders --------------------------------------------------------------------------------------
def send_with_storescu(port: int, called: str, groups: list[list[Path]]) -> float:
    """Start one storescu per group at once; return seconds until the last one exits."""
    commands = [["storescu", "-aet", SCU_AET, "-aec", called, "127.0.0.1", str(port), *map(str, group)]
                for group in groups]
    start = time.perf_counter()
    processes = [subprocess.Popen(c, env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for c in commands]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    elapsed = time.perf_counter() - start
    for process, output in zip(processes, outputs):
        if process.returncode != 0 or b"E:" in output or b"W: Store" in output:
            raise RuntimeError(f"storescu failed ({process.returncode}):\n{output.decode(errors='replace')[-2000:]}")
    return elapsed


def store_spans(port: int, called: str, files: list[Path]) -> list[tuple[float, float]]:
    """Send ``files`` on one association with pynetdicom, one at a time; the wall-clock (start,
    end) of each send_c_store call, i.e. from the first byte of the request to the response."""
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import CTImageStorage as CT

    from node.pynetdicom_tuning import hand_stolen_responses_back

    _config.STORE_SEND_CHUNKED_DATASET = True  # stream the file, no decode/encode in the SCU
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError("latency SCU: association not established")
    hand_stolen_responses_back(assoc)  # else pynetdicom's reactor race can lose a response under load
    spans = []
    try:
        for path in files:
            start = time.time()
            status = assoc.send_c_store(path)
            spans.append((start, time.time()))
            if not status or status.Status != 0x0000:
                raise RuntimeError(f"latency SCU: C-STORE of {path.name} failed: {status}")
    finally:
        assoc.release()
    return spans


def store_latencies(port: int, called: str, files: list[Path]) -> list[float]:
    """Seconds per send_c_store call of :func:`store_spans`."""
    return [end - start for start, end in store_spans(port, called, files)]


CPU_HOG = """
import torch, time
torch.set_num_threads(1)
a = torch.randn(1024, 1024); b = torch.randn(1024, 1024)
print("ready", flush=True)
while True:
    a = (a @ b).tanh_()
"""


# -- the run --------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per receiver and association count")
    parser.add_argument("--images", type=int, default=300, help="number of 512 KB CT images")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (images, logs, stores)")
    parser.add_argument("--receivers", type=int, default=None,
                        help="radnode [node] receivers (default: the value in the repository's config.toml)")
    parser.add_argument("--only", default="storescp,orthanc,radnode", help="comma-separated receivers to run")
    parser.add_argument("--associations", default="1,4", help="comma-separated association counts")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency-under-load measurement")
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "echoscu", "Orthanc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found: install Debian dcmtk and orthanc (scripts/bootstrap.sh)")
    receivers_count = args.receivers
    if receivers_count is None:
        receivers_count = tomllib.loads((REPO / "config.toml").read_text())["node"].get("receivers", 1)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    association_counts = [int(a) for a in args.associations.split(",")]

    root = Path(tempfile.mkdtemp(prefix="radnode-bench-"))
    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[tuple[float, float]]] = {}  # (receiver, senders) CPU seconds per run
    flushes: dict[tuple[str, int], list[int]] = {}  # disk flush requests per run, whoever issued them
    idle: dict[tuple[str, int], list[float]] = {}  # share of the machine's CPU time left idle per run
    with ExitStack() as cleanup:
        if not args.keep:
            cleanup.callback(shutil.rmtree, root, True)
        print(f"writing {args.images} images to {root} ...", flush=True)
        groups = make_images(root / "images", args.images)
        all_files = sorted(p for g in groups for p in g)
        size_mb = sum(p.stat().st_size for p in all_files) / 1e6
        print(f"{args.images} images, {size_mb:.0f} MB; radnode receivers = {receivers_count}; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for line in other_receivers_running():
            print(f"WARNING: another DICOM receiver is running and will skew the numbers: {line}", flush=True)

        run = 0
        for repeat in range(args.repeats):
            for associations in association_counts:
                split = [all_files] if associations == 1 else [g for g in _split(all_files, associations)]
                for name in names:
                    cls, aet = RECEIVERS[name]
                    run += 1
                    receiver = cls(name=name, called_aet=aet, workdir=root / f"run{run:03d}-{name}",
                                   extra={"receivers": receivers_count})
                    receiver.workdir.mkdir(parents=True)
                    try:
                        receiver.start()
                        # Flush what earlier runs left dirty (storescp writes 150 MB without fsync),
                        # else the next receiver's first fsyncs pay for writing it back.
                        settle_disk()
                        assert receiver.process is not None
                        cpu_before = (tree_cpu_seconds(receiver.process.pid), children_cpu_seconds())
                        flushes_before = disk_flushes(receiver.workdir)
                        ticks_before = machine_cpu_ticks()
                        seconds = send_with_storescu(receiver.port, aet, split)
                        ticks_after = machine_cpu_ticks()
                        idle.setdefault((name, associations), []).append(
                            (ticks_after[0] - ticks_before[0]) / max(1, ticks_after[1] - ticks_before[1]))
                        cpu_used = (tree_cpu_seconds(receiver.process.pid) - cpu_before[0],
                                    children_cpu_seconds() - cpu_before[1])
                        flushes_after = disk_flushes(receiver.workdir)
                        if flushes_before is not None and flushes_after is not None:
                            flushes.setdefault((name, associations), []).append(flushes_after - flushes_before)
                        receiver.check(args.images)
                    finally:
                        receiver.stop()
                    results.setdefault((name, associations), []).append(seconds)
                    cpu.setdefault((name, associations), []).append(cpu_used)
                    print(f"  repeat {repeat + 1}  {associations} assoc  {name:<9} {seconds:6.3f} s", flush=True)

        latency_rows = []
        if not args.no_latency and "radnode" in names:
            for label, hog in (("idle", False), ("1-thread torch matmul loop", True)):
                receiver = Radnode(name="radnode", called_aet="RADNODE", workdir=root / f"latency-{int(hog)}",
                                   extra={"receivers": receivers_count})
                receiver.workdir.mkdir(parents=True)
                hog_process = None
                try:
                    receiver.start()
                    if hog:
                        hog_process = subprocess.Popen([PYTHON, "-c", CPU_HOG], stdout=subprocess.PIPE,
                                                       start_new_session=True)
                        assert hog_process.stdout is not None
                        hog_process.stdout.readline()
                        time.sleep(1.0)
                    settle_disk()
                    latencies = store_latencies(receiver.port, "RADNODE", all_files)
                    receiver.check(args.images)
                finally:
                    if hog_process is not None:
                        stop_process(hog_process)
                    receiver.stop()
                latency_rows.append((label, latencies))

    print_table(results, cpu, flushes, idle, association_counts, names, args, receivers_count, latency_rows)
    if args.keep:
        print(f"\nkept {root}")
    return 0


def _split(files: list[Path], parts: int) -> list[list[Path]]:
    return [files[i::parts] for i in range(parts)]


def print_table(results, cpu, flushes, idle, association_counts, names, args, receivers_count, latency_rows) -> None:  # type: ignore[no-untyped-def]
    print()
    print(f"Ingest of {args.images} x 512 KB CT images (storescu, TCP_NODELAY=1), median of {args.repeats}; "
          f"radnode receivers = {receivers_count}")
    print("CPU ms/image: CPU time (user + system) per image of the receiver's processes and of the "
          "storescu senders during the run; flushes/image: disk cache flushes the data disk completed "
          "during the run, per image (fsync and commits of anyone on the machine); idle: share of all "
          "CPUs' time nobody used during the run (/proc/stat idle + iowait); medians of the runs")
    print(f"{'associations':<13}{'receiver':<10}{'median s':>9}{'images/s':>10}{'min s':>8}{'max s':>8}"
          f"{'CPU ms/image':>14}{'storescu':>10}{'flushes/image':>15}{'idle':>7}")
    for associations in association_counts:
        for name in names:
            values = results[(name, associations)]
            median = statistics.median(values)
            receiver_cpu = statistics.median(used[0] for used in cpu[(name, associations)]) * 1e3 / args.images
            sender_cpu = statistics.median(used[1] for used in cpu[(name, associations)]) * 1e3 / args.images
            counted = flushes.get((name, associations))
            flush_text = f"{statistics.median(counted) / args.images:15.2f}" if counted else f"{'n/a':>15}"
            idle_text = f"{statistics.median(idle[(name, associations)]) * 100:6.0f}%"
            print(f"{associations:<13}{name:<10}{median:9.3f}{args.images / median:10.0f}"
                  f"{min(values):8.3f}{max(values):8.3f}{receiver_cpu:14.2f}{sender_cpu:10.2f}{flush_text}{idle_text}")
    if "radnode" in names:
        # The medians are the result. On a shared VM, whose disk and CPU slow down for seconds at a
        # time, the fastest runs are shown beside them (as timeit's best-of): what each receiver does
        # when nothing else on the host is in its way.
        for label, pick in (("median", statistics.median), ("fastest", min)):
            print(f"\nradnode throughput relative to the others ({label} time of the other / radnode's; "
                  ">1 = radnode faster)")
            for associations in association_counts:
                radnode = pick(results[("radnode", associations)])
                parts = [f"{associations} assoc:"]
                for other in ("orthanc", "storescp"):
                    if other in names:
                        parts.append(f"radnode/{other} = {pick(results[(other, associations)]) / radnode:.2f}x")
                print("  " + "   ".join(parts))
        print("\nradnode throughput relative to the others, paired: the other's time / radnode's in the same "
              "repeat (run back to back), median and range of the repeats")
        for associations in association_counts:
            parts = [f"{associations} assoc:"]
            for other in ("orthanc", "storescp"):
                if other in names:
                    ratios = [o / r for o, r in zip(results[(other, associations)], results[("radnode", associations)])]
                    parts.append(f"radnode/{other} = {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
            print("  " + "   ".join(parts))
    if latency_rows:
        print("\nradnode C-STORE response latency, one association, measured by a pynetdicom SCU "
              "(wall time of each send_c_store: request sent -> response received)")
        print(f"{'load':<30}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'total s':>9}")
        for label, latencies in latency_rows:
            print(f"{label:<30}{percentile(latencies, 50) * 1e3:8.2f}{percentile(latencies, 99) * 1e3:8.2f}"
                  f"{max(latencies) * 1e3:8.2f}{sum(latencies):9.2f}")


if __name__ == "__main__":
    sys.exit(main())
