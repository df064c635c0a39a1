"""End-to-end latency: last image's C-STORE response -> last result stored at the PACS (Orthanc).

Run by hand (not a test):  .venv/bin/python bench/e2e.py [--runs 2] [--torch-threads N]

The node runs on the shipped config.toml's defaults (only ports, data folder, the destination and
the route's send_to differ); the PACS is Orthanc (Debian), the study the real MNI152 head (182 MR
images). Prints the breakdown per run: completion wait, queue wait, read + volume, model, writing,
recording, sending; and compares with the issue's target (model load + inference + 5 s).
Run 1 includes the model load in its worker ("model load" is the job time outside the pipeline's
stages and the outbox writes: creating and loading the pipeline); later runs reuse the loaded model.
"writing" is the result objects' encoding plus their durable writes to the outbox.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402

from node.pynetdicom_tuning import hand_stolen_responses_back  # noqa: E402
from pipelines.nifti_series import write_nifti_as_series  # noqa: E402
from storage.database import create_database_engine  # noqa: E402
from storage.status import collect_status  # noqa: E402
from tests.support.network import free_port  # noqa: E402
from tests.support.node_process import RadnodeProcess  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402

SAMPLE = REPO / ".samples" / "MNI152_T1.nii.gz"


def send(port: int, files: list[Path]) -> float:
    """Store on one association; return the time of the last C-STORE response."""
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(dcmread(files[0], stop_before_pixels=True).SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    hand_stolen_responses_back(assoc)  # else pynetdicom's reactor race can lose a response under load
    datasets = [dcmread(p) for p in files]
    for ds in datasets:
        assoc.send_c_store(ds)
    last = time.time()
    assoc.release()
    return last


def wait_delivered(engine, series_uid: str, timeout_s: float = 600) -> dict:  # type: ignore[no-untyped-def]
    """The job of ``series_uid`` once its delivery is done (read from the database, no subprocess)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for study in collect_status(engine):
            for series in study.series:
                if series.series_instance_uid == series_uid and series.jobs:
                    job = series.jobs[0]
                    if job.deliveries and job.deliveries[0].state == "done":
                        return asdict(job)
        time.sleep(0.02)
    raise TimeoutError(f"series {series_uid} was not delivered within {timeout_s} s")


def config_text(port: int, data_dir: Path, pacs_port: int, torch_threads: int | None) -> str:
    text = (REPO / "config.toml").read_text()
    text = text.replace("port = 11112", f"port = {port}", 1)
    text = text.replace('data_dir = "radnode-data"', f'data_dir = "{data_dir}"', 1)
    text = text.replace("send_to = []", 'send_to = ["pacs"]', 1)
    if torch_threads is not None:
        text = text.replace("torch_threads = 1 ", f"torch_threads = {torch_threads} ", 1)
    return text + f'\n[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {pacs_port}\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=None, help="override [workers] torch_threads")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radnode-e2e-"))
    pacs = Orthanc(work / "orthanc").start()
    port = free_port()
    node = RadnodeProcess(workdir=work / "node", config_text=config_text(port, work / "node" / "data", pacs.dicom_port,
                                                                          args.torch_threads), port=port).start()
    engine = create_database_engine(f"sqlite:///{work / 'node' / 'data' / 'radnode.sqlite3'}")
    rows = []
    try:
        for run in range(1, args.runs + 1):
            study_uid = generate_uid()
            files = write_nifti_as_series(SAMPLE, work / f"study{run}", patient_name="Bench^E2E", patient_id="BENCH",
                                          study_uid=study_uid, series_description="T1 MNI152 bench")
            before = pacs.instance_count()
            last_image = send(port, files)
            series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
            job = wait_delivered(engine, series_uid)
            expected = before + job["results"]
            while pacs.instance_count() < expected:
                time.sleep(0.02)
            delivered = job["deliveries"][0]["delivered_at"]
            t = job["timings"]
            row = {
                "run": run,
                "completion wait": job["created_at"] - last_image,
                "queue wait": job["started_at"] - job["created_at"],
                "read + volume": t.get("read", 0) + t.get("volume", 0),
                "model load": t["total"] - sum(t.get(k, 0) for k in ("read", "volume", "inference", "write", "outbox")),
                "model inference": t["inference"],
                "writing": t["write"] + t.get("outbox", 0),
                "recording": job["finished_at"] - job["started_at"] - t["total"],
                "sending": delivered - job["finished_at"],
                "total": delivered - last_image,
            }
            row["target"] = row["model load"] + row["model inference"] + 5.0
            rows.append(row)
    finally:
        node.stop()
        pacs.stop()
    keys = list(rows[0])
    print(f"{'':>18}" + "".join(f"{'run ' + str(r['run']):>10}" for r in rows))
    for key in keys[1:]:
        print(f"{key:>18}" + "".join(f"{r[key]:>9.2f}s" for r in rows))
    for r in rows:
        verdict = "meets" if r["total"] <= r["target"] else "misses"
        print(f"run {r['run']}: {r['total']:.2f} s from last image to last result; {verdict} the target "
              f"(load + inference + 5 s = {r['target']:.2f} s); {job['results']} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
