"""Receive: radnode serve as a Storage SCP, driven by DCMTK's echoscu and storescu on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from tests.support.dcmtk import DCMTK_ENV, echoscu, require, storescu
from tests.support.series import dataset_bytes, write_series


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _stored_path(node, path: Path) -> Path:  # type: ignore[no-untyped-def]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return node.data_dir / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def test_echo_is_answered_with_success(radnode) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    assert echoscu(node.port).returncode == 0


def test_multi_series_study_is_stored_and_indexed(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    study_uid = pydicom.uid.generate_uid()
    first = write_series(tmp_path / "a", 5, modality="CT", study_uid=study_uid, seed=1)
    second = write_series(tmp_path / "b", 3, modality="CT", study_uid=study_uid, seed=2)

    outcome = storescu(node.port, first + second)

    assert outcome.returncode == 0, outcome.output
    assert len(outcome.acknowledged) == 8
    studies = node.status()["studies"]
    assert [s["study_instance_uid"] for s in studies] == [study_uid]
    assert sorted(s["instance_count"] for s in studies[0]["series"]) == [3, 5]
    for path in first + second:
        assert dataset_bytes(_stored_path(node, path)) == dataset_bytes(path)


@pytest.mark.parametrize(
    ("codec", "storescu_option"),
    [("jpeg-lossless", "-xs"), ("jpeg-ls", "-xt"), ("rle", "-xr"), ("jpeg2000", "-xv")],
)
def test_compressed_transfer_syntax_is_stored_exactly_as_received(
    radnode, tmp_path: Path, codec: str, storescu_option: str  # type: ignore[no-untyped-def]
) -> None:
    node = radnode()
    source = write_series(tmp_path / "plain", 2, modality="CT", seed=3)
    compressed = []
    for index, path in enumerate(source):
        target = tmp_path / codec / f"{index}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        if codec == "jpeg2000":  # Debian's DCMTK has no JPEG 2000 encoder (FIELD-NOTES.md)
            ds = pydicom.dcmread(path)
            ds.compress(JPEG2000Lossless)
            ds.save_as(target, enforce_file_format=True)
        else:
            tool = {"jpeg-lossless": ["dcmcjpeg", "+e1"], "jpeg-ls": ["dcmcjpls"], "rle": ["dcmcrle"]}[codec]
            subprocess.run([require(tool[0]), *tool[1:], str(path), str(target)], check=True, env=DCMTK_ENV)
        compressed.append(target)
    sent_syntax = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in compressed}
    assert all(pydicom.uid.UID(uid).is_compressed for uid in sent_syntax)

    outcome = storescu(node.port, compressed, extra=[storescu_option])

    assert outcome.returncode == 0, outcome.output
    assert len(outcome.acknowledged) == 2
    for path in compressed:
        stored = _stored_path(node, path)
        stored_syntax = str(pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        assert stored_syntax in sent_syntax
        assert dataset_bytes(stored) == dataset_bytes(path)


def test_unknown_calling_ae_title_is_rejected_when_peers_are_listed(radnode) -> None:  # type: ignore[no-untyped-def]
    node = radnode(extra='[[peers]]\nae_title = "SCANNER1"\n')

    refused = echoscu(node.port, calling="INTRUDER")
    admitted = echoscu(node.port, calling="SCANNER1")

    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert admitted.returncode == 0


def test_known_ae_title_from_another_host_is_rejected(radnode) -> None:  # type: ignore[no-untyped-def]
    node = radnode(extra='[[peers]]\nae_title = "SCANNER1"\nhost = "127.0.0.2"\n')

    refused = echoscu(node.port, calling="SCANNER1")  # comes from 127.0.0.1

    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def test_wrong_called_ae_title_is_rejected(radnode) -> None:  # type: ignore[no-untyped-def]
    node = radnode()

    refused = echoscu(node.port, called="NOTRADNODE")

    assert refused.returncode != 0
    assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr


def test_repeated_sop_instance_is_stored_once(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    files = write_series(tmp_path / "s", 2, seed=4)

    storescu(node.port, files)
    again = storescu(node.port, files)

    assert len(again.acknowledged) == 2
    series = node.series_status(str(pydicom.dcmread(files[0]).SeriesInstanceUID))
    assert series is not None and series["instance_count"] == 2
    assert len(node.spool_files()) == 2


def test_status_command_lists_received_study(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    files = write_series(tmp_path / "s", 3, seed=5)
    storescu(node.port, files)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)

    node.wait_for(lambda: node.series_status(str(pydicom.dcmread(files[0]).SeriesInstanceUID))["state"] == "complete",
                  what="completion")
    text = node.cli("status").stdout

    assert study_uid in text
    assert "3 instances" in text
    assert "complete" in text


def test_patient_data_never_reaches_the_log(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    files = write_series(tmp_path / "s", 3, seed=6, patient_name="Secretname^Patient", patient_id="PID-SECRET-42")
    storescu(node.port, files)
    node.wait_for(lambda: "complete (" in node.log(), what="completion log line")
    node.stop()

    log = node.log() + "".join(p.read_text() for p in (node.data_dir / "logs").glob("*.log"))

    assert "Secretname" not in log
    assert "PID-SECRET-42" not in log
    assert "19700101" not in log
