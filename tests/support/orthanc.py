"""Orthanc (Debian ``orthanc``) as the real PACS in tests: loopback only, files + index in a folder
the test owns, so it can be stopped and started again with what it stored."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.network import free_port

SETUP_HINT = "run scripts/bootstrap.sh (installs Debian orthanc and orthanc-dicomweb)"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)


def dicomweb_plugin() -> str | None:
    """libOrthancDicomWeb.so as installed by Debian's orthanc-dicomweb."""
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in listing.splitlines():
        if "libOrthancDicomWeb.so" in line and os.path.isfile(line):
            return line
    return None


@dataclass
class Orthanc:
    """An Orthanc process; ``dicom_port`` 0 turns its DICOM server off."""

    work_dir: Path
    aet: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    dicomweb: bool = False
    # False: Orthanc answers each C-STORE ~40 ms late (Nagle + delayed ACK, FIELD-NOTES.md), like a
    # slow PACS; a delivery of a dozen objects then lasts about half a second
    tcp_nodelay: bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "orthanc.log"

    def _config(self) -> dict:
        config: dict = {
            "Name": "radnode-test-pacs",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "DicomServerEnabled": self.dicom_port != 0,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port or free_port(),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "StorageCompression": False,
            "OverwriteInstances": True,  # a re-sent result with the same UIDs replaces the old one
            "Plugins": [],
        }
        if self.dicomweb:
            plugin = dicomweb_plugin()
            if plugin is None:
                raise RuntimeError(f"the Orthanc DICOMweb plugin is missing: {SETUP_HINT}")
            config["Plugins"] = [plugin]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                                  "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
        return config

    def start(self, timeout_s: float = 30.0) -> "Orthanc":
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError(f"Orthanc is not installed: {SETUP_HINT}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.work_dir / "orthanc.json"
        config_path.write_text(json.dumps(self._config(), indent=2))
        env = {key: value for key, value in os.environ.items() if key != "TCP_NODELAY"}
        if self.tcp_nodelay:
            env["TCP_NODELAY"] = "1"  # else ~40 ms per C-STORE (FIELD-NOTES.md)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.get_json("/system")
                return self
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer in {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get_json(self, path: str):  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def post_json(self, path: str, body: object):  # type: ignore[no-untyped-def]
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def upload(self, path: Path) -> dict:
        """``POST /instances`` one DICOM file; Orthanc's answer (Success or AlreadyStored)."""
        request = urllib.request.Request(self.url + "/instances", data=path.read_bytes(),
                                         headers={"Content-Type": "application/dicom"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc refused {path}: {answer}")
        return answer

    def series_of_study(self, study_uid: str) -> list[dict]:
        """Every series Orthanc holds for a study, expanded (MainDicomTags, Instances)."""
        return self.post_json("/tools/find", {"Level": "Series", "Expand": True,
                                              "Query": {"StudyInstanceUID": study_uid}})

    def sop_instance_uids(self, study_uid: str) -> list[str]:
        """The SOP Instance UID of every instance Orthanc holds in a study (one entry per instance)."""
        found = self.post_json("/tools/find", {"Level": "Instance", "Expand": True,
                                               "Query": {"StudyInstanceUID": study_uid}})
        return [item["MainDicomTags"]["SOPInstanceUID"] for item in found]

    def instance_count(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])


@contextlib.contextmanager
def running_orthanc(work_dir: Path, **options) -> Iterator[Orthanc]:  # type: ignore[no-untyped-def]
    orthanc = Orthanc(work_dir, **options).start()
    try:
        yield orthanc
    finally:
        orthanc.stop()
