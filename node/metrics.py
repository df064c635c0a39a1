"""Prometheus metrics (names start with ``radnode_``), gathered from two sources.

*Events* happen in receiver and worker processes: instances and bytes received, refusals,
associations by outcome, the C-STORE handling time (what the sender waits for) and inference
seconds per pipeline. They are prometheus-client counters and histograms in **multiprocess mode**:
the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at ``data_dir/metrics/<host>-<pid>`` (new at each
start) before it spawns any child, each child writes its values to memory-mapped files there, and
the web process sums them at scrape time. Counters of a child that died and was restarted stay
counted; they reset when ``radnode serve`` restarts, which Prometheus' ``rate()`` handles.

*State* lives in the database: jobs and deliveries by state, the age of the oldest waiting job and
delivery, plus free disk. Those are read at scrape time (:class:`StateCollector`), so they are
right whatever process changed them, on whatever host, and survive restarts.

A worker-only host (``--role worker``) runs no web process, so its inference histogram is not
exported; its jobs still show in ``radnode_jobs`` through the database.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from node.processes import process_exists

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(data_dir: Path) -> Path:
    """Create ``data_dir/metrics/<host>-<pid>`` for this supervisor, export it as
    ``PROMETHEUS_MULTIPROC_DIR``, and remove the folders of supervisors of this host that are gone.

    Call in the supervisor before any child is spawned: the children inherit the environment and
    prometheus-client picks its storage when it is first imported. One folder per supervisor, so
    several ``radnode serve`` on one host (or on hosts sharing data_dir) never mix or delete each
    other's values."""
    root = data_dir / "metrics"
    host = socket.gethostname()
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f"{host}-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = root / f"{host}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


from prometheus_client import Counter, Histogram  # noqa: E402  (after the helper above, by design)

INSTANCES_RECEIVED = Counter("radnode_instances_received", "SOP instances stored and acknowledged with 0x0000")
BYTES_RECEIVED = Counter("radnode_received_bytes", "Bytes of datasets stored and acknowledged")
INSTANCES_REFUSED = Counter("radnode_instances_refused", "C-STORE requests answered with a failure status",
                            ["status"])
ASSOCIATIONS = Counter("radnode_associations", "Associations by outcome (released, aborted, rejected)",
                       ["outcome"])
CSTORE_SECONDS = Histogram(
    "radnode_cstore_duration_seconds", "Time from C-STORE request to response (validate, write, fsync, index)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INFERENCE_SECONDS = Histogram(
    "radnode_inference_seconds", "Seconds a pipeline took on one series (load, infer, write results)",
    ["pipeline"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)


class StateCollector:
    """Gauges read from the database and the file system at each scrape."""

    def __init__(self, engine, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
        self._engine = engine
        self._data_dir = data_dir

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import GaugeMetricFamily

        from storage.status import queue_counts

        counts = queue_counts(self._engine, time.time())
        jobs = GaugeMetricFamily("radnode_jobs", "Jobs by state", labels=["state"])
        for state, count in counts.jobs.items():
            jobs.add_metric([state], count)
        yield jobs
        deliveries = GaugeMetricFamily("radnode_deliveries", "Deliveries by state", labels=["state"])
        for state, count in counts.deliveries.items():
            deliveries.add_metric([state], count)
        yield deliveries
        age = GaugeMetricFamily("radnode_queue_oldest_age_seconds",
                                "Age of the oldest queued/running job or pending/sending delivery (0: none)",
                                labels=["queue"])
        age.add_metric(["jobs"], counts.oldest_queued_job_s)
        age.add_metric(["deliveries"], counts.oldest_pending_delivery_s)
        yield age
        usage = shutil.disk_usage(self._data_dir)
        yield GaugeMetricFamily("radnode_disk_free_bytes", "Free bytes on the file system of data_dir",
                                value=usage.free)
        yield GaugeMetricFamily("radnode_disk_total_bytes", "Size of the file system of data_dir",
                                value=usage.total)


def render(engine, data_dir: Path) -> tuple[bytes, str]:  # type: ignore[no-untyped-def]
    """The exposition text (and its content type) for one scrape: children's events + state."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    registry.register(StateCollector(engine, data_dir))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
