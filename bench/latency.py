"""C-STORE response latency while the node's own worker runs a brain-extraction job.

Run by hand (not a test):  .venv/bin/python bench/latency.py [--jobs 3] [--images 600]

The node runs on the shipped config.toml (one worker, ``torch_threads = 1``; only ports, data
folder and the destination differ) and delivers to Orthanc (Debian). The MNI152 head (182 MR
images) is sent ``--jobs`` times as new series, so that its route queues as many
brain-extraction jobs and the worker runs them back to back: model inference, result encoding
and their durable writes, while the supervisor delivers the finished ones. Meanwhile a
pynetdicom SCU sends 512 x 512 CT images (which match no route) on one association, one at a
time, and times each C-STORE from request to response. Only the stores that started and ended
while a job was running count as "during a job". The same SCU then sends the same number of
images to the idle node for comparison.

The latency measured by bench/ingest.py beside a bare torch loop is the same kind of figure; this
one has the whole pipeline (the worker process, its writes to the same disk, the delivery) beside
the receiver, as the issue "Receive" asks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from e2e import config_text, send  # noqa: E402
from ingest import make_images, percentile, store_spans, wait_until  # noqa: E402
from pipelines.nifti_series import write_nifti_as_series  # noqa: E402
from storage.database import create_database_engine  # noqa: E402
from storage.status import collect_status  # noqa: E402
from tests.support.network import free_port  # noqa: E402
from tests.support.node_process import RadnodeProcess  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402

SAMPLE = REPO / ".samples" / "MNI152_T1.nii.gz"


def jobs_of(engine, series_uids: set[str]) -> list:  # type: ignore[no-untyped-def]
    """The status of the jobs of ``series_uids`` (storage/status.py)."""
    return [job for study in collect_status(engine) for series in study.series
            if series.series_instance_uid in series_uids for job in series.jobs]


def delivered(job) -> bool:  # type: ignore[no-untyped-def]
    return bool(job.deliveries) and all(delivery.state == "done" for delivery in job.deliveries)


def summary(label: str, latencies_s: list[float]) -> str:
    return (f"{label:<34}{len(latencies_s):>7}{percentile(latencies_s, 50) * 1e3:9.2f}"
            f"{percentile(latencies_s, 99) * 1e3:9.2f}{max(latencies_s) * 1e3:9.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3, help="brain-extraction jobs queued back to back")
    parser.add_argument("--images", type=int, default=600, help="CT images the latency SCU sends")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radnode-latency-"))
    images = sorted(p for group in make_images(work / "ct", args.images) for p in group)
    pacs = Orthanc(work / "orthanc").start()
    port = free_port()
    node = RadnodeProcess(workdir=work / "node", config_text=config_text(port, work / "node" / "data",
                                                                          pacs.dicom_port, None), port=port).start()
    engine = create_database_engine(f"sqlite:///{work / 'node' / 'data' / 'radnode.sqlite3'}")
    try:
        series_uids: set[str] = set()
        for index in range(args.jobs):
            files = write_nifti_as_series(SAMPLE, work / f"mr{index}", patient_name="Bench^Latency",
                                          patient_id="BENCH", study_uid=generate_uid(),
                                          series_description="T1 MNI152 bench")
            series_uids.add(str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID))
            send(port, files)
        wait_until(lambda: any(job.started_at is not None for job in jobs_of(engine, series_uids)), 120,
                   "the first brain-extraction job to start")
        busy = store_spans(port, "RADNODE", images)
        wait_until(lambda: len(jobs := jobs_of(engine, series_uids)) == args.jobs and all(map(delivered, jobs)),
                   600, "every job to finish and be delivered")
        windows = [(job.started_at, job.finished_at) for job in jobs_of(engine, series_uids)]
        during = [end - start for start, end in busy
                  if any(job_start <= start and end <= job_end for job_start, job_end in windows)]
        idle = [end - start for start, end in store_spans(port, "RADNODE", images)]
    finally:
        node.stop()
        pacs.stop()
    origin = busy[0][0]
    print(f"\nC-STORE response latency, one association, 512 x 512 CT, pynetdicom SCU. The SCU sent from 0 s "
          f"to {busy[-1][1] - origin:.1f} s; the {len(windows)} brain-extraction jobs ran from "
          f"{min(s for s, _ in windows) - origin:+.1f} s to {max(e for _, e in windows) - origin:+.1f} s.")
    print(f"{'':<34}{'stores':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    if not during:
        print("no store started and ended while a job ran: raise --jobs or --images")
        return 1
    print(summary("during a brain-extraction job", during))
    print(summary("idle node (jobs delivered)", idle))
    print(f"p50 during a job / idle: {statistics.median(during) / statistics.median(idle):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
