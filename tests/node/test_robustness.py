"""Reliability and security of the receiver (issue 6): DICOM TLS, input limits, a seeded fuzzer
while a real study arrives, and 20 concurrent senders. Loopback only; every loop is bounded."""

from __future__ import annotations

import random
import re
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE

from node.config import DestinationSettings
from node.delivery import address_of, echo, send_files
from storage.deliveries import ResultFile
from tests.support.dcmtk import DCMTK_ENV, parse_acknowledged, require, storescu, storescu_command
from tests.support.network import free_port
from tests.support.scu import send_raw
from tests.support.series import dataset_bytes, write_series
from tests.support.tls import ThrowawayPKI, make_pki


# -- helpers -------------------------------------------------------------------------------------


def _indexed(node) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(rows, distinct SOP Instance UIDs) in the instance index."""
    with sqlite3.connect(node.data_dir / "radnode.sqlite3") as db:
        return db.execute("select count(*), count(distinct sop_instance_uid) from instances").fetchone()


def _status_instance_count(node) -> int:  # type: ignore[no-untyped-def]
    return sum(series["instance_count"] for study in node.status()["studies"] for series in study["series"])


def _receiver_pid(node) -> int:  # type: ignore[no-untyped-def]
    pids = re.findall(r"listening on .*\(pid (\d+)", node.log())
    assert pids, node.log()[-2000:]
    return int(pids[-1])


def _memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _echo_ok(port: int) -> bool:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().get("Status", -1)) == 0
    finally:
        assoc.release()


def _dataset_file(path: Path, *, pixels: bytes, syntax: str = ExplicitVRLittleEndian, rows: int = 64) -> Path:
    """One CT instance with the given pixel bytes (16-bit, ``rows`` x len/2/rows) in ``syntax``."""
    source = pydicom.dcmread(write_series(path.parent / f"{path.stem}-src", 1)[0])
    source.file_meta.TransferSyntaxUID = syntax
    source.Rows = rows
    source.Columns = len(pixels) // 2 // rows
    source.PixelData = pixels
    source.save_as(path, enforce_file_format=True)
    return path


# -- DICOM TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> ThrowawayPKI:  # type: ignore[no-untyped-def]
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_node(radnode, pki: ThrowawayPKI, *, require_client_cert: bool = True):  # type: ignore[no-untyped-def]
    tls_port = free_port()
    client_ca = f'client_ca = "{pki.ca}"\n' if require_client_cert else ""
    extra = f"""
[node.tls]
port = {tls_port}
certificate = "{pki.server_cert}"
private_key = "{pki.server_key}"
{client_ca}"""
    # [node.tls] is a sub-table of [node]: it must come right after it, so it is spliced in there
    node = radnode(extra="")
    node.stop()
    text = node.config_text.replace("[completion]", extra + "\n[completion]", 1)
    node.config_path.write_text(text)
    node.start()
    return node, tls_port


def _dcmtk_tls(key: Path | None, cert: Path | None, ca: Path) -> list[str]:
    auth = ["+tls", str(key), str(cert)] if key else ["+tla"]
    return [*auth, "+cf", str(ca)]


def test_dicom_tls_with_required_client_certificates_beside_the_plain_port(radnode, pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node, tls_port = _tls_node(radnode, pki)
    files = write_series(tmp_path / "s", 5, seed=3)
    tls = _dcmtk_tls(pki.client_key, pki.client_cert, pki.ca)

    echo_tls = subprocess.run([require("echoscu"), *tls, "-aec", "RADNODE", "127.0.0.1", str(tls_port)],
                              capture_output=True, text=True, env=DCMTK_ENV, timeout=30)
    stored = storescu(tls_port, files, extra=tls, timeout=60)
    no_cert = subprocess.run([require("echoscu"), *_dcmtk_tls(None, None, pki.ca), "-aec", "RADNODE",
                              "127.0.0.1", str(tls_port)], capture_output=True, text=True, env=DCMTK_ENV, timeout=30)
    stranger = subprocess.run([require("echoscu"), *_dcmtk_tls(pki.stranger_key, pki.stranger_cert, pki.ca),
                               "-aec", "RADNODE", "127.0.0.1", str(tls_port)],
                              capture_output=True, text=True, env=DCMTK_ENV, timeout=30)
    plain_on_tls_port = subprocess.run([require("echoscu"), "-to", "5", "-aec", "RADNODE", "127.0.0.1",
                                        str(tls_port)], capture_output=True, text=True, env=DCMTK_ENV, timeout=30)

    assert echo_tls.returncode == 0, echo_tls.stderr + echo_tls.stdout
    assert stored.returncode == 0 and sorted(stored.acknowledged) == sorted(files), stored.output[-2000:]
    assert len(node.spool_files()) == 5
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = node.data_dir / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(target) == dataset_bytes(path)
    assert no_cert.returncode != 0, "a TLS client without a certificate must be refused"
    assert stranger.returncode != 0, "a client certificate from another CA must be refused"
    assert plain_on_tls_port.returncode != 0, "plain DICOM must not be spoken on the TLS port"
    assert _echo_ok(node.port), "the plain port keeps working beside the TLS port"
    assert "TLS handshake with 127.0.0.1 failed" in node.log()


def test_delivery_scu_speaks_tls_with_a_client_certificate(radnode, pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node, tls_port = _tls_node(radnode, pki)
    destination = DestinationSettings(name="secure-pacs", ae_title="RADNODE", host="127.0.0.1", port=tls_port,
                                      tls=True, tls_ca=pki.ca, tls_certificate=pki.client_cert,
                                      tls_private_key=pki.client_key)
    address = address_of(destination)
    outbox = tmp_path / "outbox"
    result = write_series(outbox / "r", 1, seed=11)[0]
    ds = pydicom.dcmread(result, stop_before_pixels=True)

    echo(address, "RADNODE_SCU", timeout_s=10)
    sent = send_files(address, [ResultFile(str(ds.SOPClassUID), str(ds.SOPInstanceUID), "r/0000.dcm", None)],
                      outbox, "RADNODE_SCU", timeout_s=10)
    without_cert = address_of(destination.model_copy(update={"tls_certificate": None, "tls_private_key": None}))

    assert sent == 1 and len(node.spool_files()) == 1
    with pytest.raises(Exception):
        echo(without_cert, "RADNODE_SCU", timeout_s=10)


def test_tls_settings_name_a_missing_file(tmp_path: Path) -> None:
    from node.config import ConfigError, parse_config

    text = '[node]\nport = 11112\n[node.tls]\nport = 2762\ncertificate = "nope.pem"\nprivate_key = "nope.key"\n'
    with pytest.raises(ConfigError) as error:
        parse_config(text, base_dir=tmp_path)
    assert "node.tls.certificate" in str(error.value) and "node.tls.private_key" in str(error.value)


# -- limits --------------------------------------------------------------------------------------


def test_association_limit_rejects_transient_local_limit_exceeded(radnode) -> None:  # type: ignore[no-untyped-def]
    node = radnode(extra="")
    node.stop()
    node.config_path.write_text(node.config_text.replace("receivers = 1\n", "receivers = 1\nmax_associations = 3\n"))
    node.start()
    time.sleep(1.0)  # let the start-up probe's connection end
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", node.port, ae_title="RADNODE") for _ in range(3)]
    try:
        assert all(a.is_established for a in held)
        extra = ae.associate("127.0.0.1", node.port, ae_title="RADNODE")
        assert extra.is_rejected
        rejection = extra.acceptor.primitive
        # PS3.8 Table 9-21: rejected-transient (2), service-provider ACSE... presentation (3), local-limit-exceeded (2)
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        for assoc in held:
            assoc.release()
    assert node.wait_for(lambda: _echo_ok(node.port), timeout=10, what="an association after the others left")


def _limited_node(radnode, **limits: int):  # type: ignore[no-untyped-def]
    node = radnode()
    node.stop()
    lines = "".join(f"{key} = {value}\n" for key, value in limits.items())
    node.config_path.write_text(node.config_text.replace("receivers = 1\n", "receivers = 1\n" + lines))
    node.start()
    return node


def test_dataset_above_max_dataset_mb_is_refused_while_it_arrives(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = _limited_node(radnode, max_dataset_mb=1, max_pdu_kb=64)
    rng = np.random.default_rng(5)
    big = _dataset_file(tmp_path / "big.dcm", pixels=rng.integers(0, 4000, 1024 * 1024, dtype=np.uint16).tobytes(),
                        rows=1024)  # 2 MiB of pixel data, sent in 64 KiB PDUs
    small = write_series(tmp_path / "ok", 1, seed=6)[0]

    assert send_raw(node.port, big) == 0xA701
    assert send_raw(node.port, small) == 0x0000
    assert len(node.spool_files()) == 1 and node.spool_leftovers() == []
    assert "above the limit" in node.log()


def test_declared_element_length_above_the_limit_is_refused(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = _limited_node(radnode, max_element_mb=1, max_dataset_mb=8)
    pixels = bytes(3 * 2**20 // 2 * 2)  # 3 MiB: within the dataset limit, above the element limit
    path = _dataset_file(tmp_path / "long.dcm", pixels=pixels, rows=1024)

    assert send_raw(node.port, path) == 0xC004
    assert node.spool_files() == [] and node.spool_leftovers() == []


def test_deflate_bomb_is_refused_and_a_normal_deflated_dataset_is_stored(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = _limited_node(radnode, max_inflated_mb=8, max_dataset_mb=8)
    bomb = _dataset_file(tmp_path / "bomb.dcm", pixels=bytes(64 * 2**20), syntax=DeflatedExplicitVRLittleEndian,
                         rows=4096)  # 64 MiB of zeros deflate to ~64 KiB
    normal = _dataset_file(tmp_path / "normal.dcm", pixels=bytes(range(256)) * 512, syntax=DeflatedExplicitVRLittleEndian)
    assert bomb.stat().st_size < 1 * 2**20

    assert send_raw(node.port, bomb) == 0xC005
    assert send_raw(node.port, normal) == 0x0000
    assert len(node.spool_files()) == 1


def test_absurd_pdu_length_closes_the_connection_before_the_body_is_read(radnode) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    pid = _receiver_pid(node)
    before = _memory_kb(pid)["VmRSS"]
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 65536)
        closed = _read_until_closed(sock, limit_s=10)
    assert closed, "the node kept reading a PDU that declares 4 GiB"
    assert _memory_kb(pid)["VmRSS"] - before < 50 * 1024
    assert _echo_ok(node.port)


# -- fuzzing -------------------------------------------------------------------------------------


def _read_until_closed(sock: socket.socket, limit_s: float) -> bool:
    """Read what the node answers until it closes the connection; False if it did not within limit_s."""
    deadline = time.monotonic() + limit_s
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def _associate_rq(called: bytes = b"RADNODE", calling: bytes = b"FUZZER") -> bytes:
    """A valid A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing CT Image Storage in Explicit VR Little Endian."""

    def item(kind: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(payload)) + payload

    context = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, CTImageStorage.encode()) + item(0x40, ExplicitVRLittleEndian.encode()))
    user = item(0x50, item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.9999"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def _malformed_pdus(rng: random.Random, count: int) -> list[tuple[str, bytes, bool]]:
    """(kind, bytes, associate first) for raw-socket attacks, seeded."""
    valid = _associate_rq()
    attacks: list[tuple[str, bytes, bool]] = []
    for index in range(count):
        kind = index % 8
        if kind == 0:
            attacks.append(("raw garbage", rng.randbytes(rng.randint(1, 4096)), False))
        elif kind == 1:
            attacks.append(("absurd PDU length", struct.pack(">BBL", rng.choice([1, 4, 5, 7]), 0, rng.randint(2**28, 2**32 - 1))
                            + rng.randbytes(1024), False))
        elif kind == 2:
            data = bytearray(valid)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(6, len(data))] ^= 1 << rng.randrange(8)
            attacks.append(("bit-flipped A-ASSOCIATE-RQ", bytes(data), False))
        elif kind == 3:
            attacks.append(("truncated A-ASSOCIATE-RQ", valid[: rng.randint(1, len(valid) - 1)], False))
        elif kind == 4:
            data = bytearray(valid)
            position = rng.choice([74, 76 + 2 + 21 + 2])  # an item length field
            data[position : position + 2] = struct.pack(">H", rng.choice([0, 1, 0xFFFF, rng.randrange(65536)]))
            attacks.append(("A-ASSOCIATE-RQ with a wrong item length", bytes(data), False))
        elif kind == 5:  # after a valid association: a P-DATA-TF whose PDV length lies
            pdv = struct.pack(">LB", rng.choice([0, 1, 0xFFFFFFFF, rng.randrange(2**31)]), 1) + b"\x03" + rng.randbytes(64)
            attacks.append(("P-DATA with a wrong PDV length", struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv, True))
        elif kind == 6:  # after a valid association: a command set that is garbage
            payload = bytes([1, 0x03]) + rng.randbytes(rng.randint(0, 512))
            pdv = struct.pack(">L", len(payload)) + payload
            attacks.append(("P-DATA with a garbage command", struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv, True))
        else:  # after a valid association: an unknown PDU type, then garbage
            attacks.append(("unknown PDU type", struct.pack(">BBL", rng.choice([0, 8, 0x55, 0xFF]), 0, 16) + rng.randbytes(16), True))
    return attacks


def _attack(port: int, payload: bytes, associate_first: bool) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if associate_first:
            sock.sendall(_associate_rq())
            header = sock.recv(6)
            if len(header) < 6 or header[0] != 0x02:
                return False
            remaining = struct.unpack(">L", header[2:])[0]
            while remaining > 0:
                chunk = sock.recv(remaining)
                if not chunk:
                    return False
                remaining -= len(chunk)
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # the node sees the end of the stream, as with a dead peer
        except OSError:
            return True  # already closed by the node
        return _read_until_closed(sock, limit_s=15)


def _element_offsets(dataset: bytes) -> list[int]:
    """Offsets of the top-level element headers of an Explicit VR Little Endian dataset."""
    offsets, position = [], 0
    while position + 8 <= len(dataset):
        offsets.append(position)
        vr = dataset[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV", b"SV", b"UV"):
            position += 12 + struct.unpack_from("<L", dataset, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", dataset, position + 6)[0]
    return offsets


def _mutate(rng: random.Random, dataset: bytes, offsets: list[int], kind: int) -> bytes:
    data = bytearray(dataset)
    header_end = offsets[-1]  # everything before Pixel Data
    if kind == 0:  # bit flips in the element headers and values before the pixel data
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del data[rng.randrange(1, len(data) - 1):]
    elif kind == 2:  # absurd declared length
        at = rng.choice(offsets)
        if data[at + 4 : at + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
            data[at + 8 : at + 12] = struct.pack("<L", rng.choice([0xFFFFFFF0, 0x7FFFFFFF, len(data) * 4 + 2]))
        else:
            data[at + 6 : at + 8] = struct.pack("<H", rng.choice([0xFFFF, 0xFFF0, 0x8001]))
    elif kind == 3:  # wrong VR
        at = rng.choice(offsets)
        data[at + 4 : at + 6] = rng.choice([b"ZZ", b"\x00\x00", b"sq", b"Q1", bytes(rng.randbytes(2))])
    elif kind == 4:  # garbage after a prefix of good elements
        del data[rng.choice(offsets[1:]):]
        data += rng.randbytes(rng.randint(1, 2048))
    else:  # nothing but garbage
        data = bytearray(rng.randbytes(rng.randint(1, 4096)))
    return bytes(data)


def _fuzz_files(folder: Path, count: int, seed: int) -> dict[Path, str]:
    """``count`` corrupted copies of one CT instance, each with its own SOP Instance UID (same length)."""
    folder.mkdir(parents=True, exist_ok=True)
    base_path = write_series(folder / "base", 1, size=16, seed=seed)[0]
    ds = pydicom.dcmread(base_path)
    template = "1.2.826.0.1.3680043.10.4242.1{:08d}"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = template.format(0)
    ds.save_as(base_path, enforce_file_format=True)
    raw = base_path.read_bytes()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")
    meta, dataset = raw[:meta_end], raw[meta_end:]
    offsets = _element_offsets(dataset)
    rng = random.Random(seed)
    paths = {}
    old = template.format(0).encode()
    for index in range(count):
        new = template.format(index + 1).encode()
        body = _mutate(rng, dataset.replace(old, new), offsets, index % 6)
        path = folder / f"fuzz{index:05d}.dcm"
        path.write_bytes(meta.replace(old, new) + body)
        paths[path] = new.decode()
    return paths


def _send_corrupt(port: int, files: list[Path], statuses: dict[Path, int | None]) -> None:
    """C-STORE each file's bytes as they are on as few associations as possible."""
    from pynetdicom import _config

    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assert _config.STORE_SEND_CHUNKED_DATASET
    assoc = None
    for path in files:
        for _attempt in range(3):
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
                if not assoc.is_established:
                    time.sleep(0.2)
                    continue
            response = assoc.send_c_store(path)
            statuses[path] = int(response.Status) if "Status" in response else None
            break
    if assoc is not None and assoc.is_established:
        assoc.release()


def test_fuzzer_keeps_the_node_answering_and_stores_every_valid_instance(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pynetdicom import _config

    started = time.monotonic()
    node = _limited_node(radnode, max_dataset_mb=16, max_pdu_kb=1024, max_associations=16)
    pid = _receiver_pid(node)
    valid = write_series(tmp_path / "valid", 150, size=64, seed=21)
    corrupt_uids = _fuzz_files(tmp_path / "fuzz", 2000, seed=1234)
    corrupt = list(corrupt_uids)
    attacks = _malformed_pdus(random.Random(99), 240)
    memory_before = _memory_kb(pid)

    sender = subprocess.Popen(storescu_command(node.port, valid), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    statuses: dict[Path, int | None] = {}
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        threads = [threading.Thread(target=_send_corrupt, args=(node.port, corrupt[i::4], statuses)) for i in range(4)]
        for thread in threads:
            thread.start()
        closed = [_attack(node.port, payload, first) for _kind, payload, first in attacks]
        for thread in threads:
            thread.join(timeout=120)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    output, _ = sender.communicate(timeout=120)
    memory_after = _memory_kb(pid)

    # the node kept answering, and every valid instance is stored, intact, once
    assert _echo_ok(node.port)
    assert sorted(parse_acknowledged(output)) == sorted(valid), output[-3000:]
    assert all(closed), [kind for (kind, _p, _f), ok in zip(attacks, closed) if not ok][:10]
    assert len(statuses) == len(corrupt), "some corrupted datasets got no answer"
    refused = [p for p, s in statuses.items() if s != 0x0000]
    accepted = [p for p, s in statuses.items() if s == 0x0000]
    assert all(s is not None and (0xA700 <= s <= 0xA7FF or 0xC000 <= s <= 0xCFFF) for p, s in statuses.items()
               if p in refused), {hex(s) for s in statuses.values() if s is not None}
    assert len(refused) >= 0.9 * len(corrupt), f"only {len(refused)} refused"
    stored = {p.stem for p in node.spool_files()}
    valid_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in valid}
    assert valid_uids <= stored
    for path in refused:  # nothing of a refused dataset is in the spool
        assert corrupt_uids[path] not in stored, f"{path.name} (status 0x{statuses[path]:04X}) was stored"
    for path in accepted:  # what was accepted is a well-formed dataset, stored byte for byte
        ds = pydicom.dcmread(path, force=True)
        ds.walk(lambda _ds, _elem: None)
        assert corrupt_uids[path] in stored
    assert len(stored) == len(valid_uids) + len(accepted)
    assert node.spool_leftovers() == []
    assert _indexed(node) == (len(stored), len(stored))
    # memory of the receiver process stays bounded
    growth_mb = (memory_after["VmRSS"] - memory_before["VmRSS"]) / 1024
    assert growth_mb < 150, f"receiver RSS grew by {growth_mb:.0f} MB"
    assert memory_after["VmHWM"] / 1024 < 600, memory_after
    print(f"fuzz: {len(corrupt)} datasets ({len(refused)} refused), {len(attacks)} raw PDU attacks, "
          f"RSS {memory_before['VmRSS'] // 1024} -> {memory_after['VmRSS'] // 1024} MB, "
          f"peak {memory_after['VmHWM'] // 1024} MB, {time.monotonic() - started:.1f} s")


# -- load ----------------------------------------------------------------------------------------


def test_twenty_concurrent_associations_store_2000_instances_once(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = _limited_node(radnode, max_associations=24)
    series = [write_series(tmp_path / f"s{i:02d}", 100, size=16, seed=100 + i) for i in range(20)]
    senders = [subprocess.Popen(storescu_command(node.port, files, calling=f"LOAD{i:02d}"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV) for i, files in enumerate(series)]
    outputs = [sender.communicate(timeout=300)[0] for sender in senders]

    for files, output, sender in zip(series, outputs, senders):
        assert sender.returncode == 0 and sorted(parse_acknowledged(output)) == sorted(files), output[-2000:]
    assert len(node.spool_files()) == 2000 and node.spool_leftovers() == []
    assert _indexed(node) == (2000, 2000)
    assert node.wait_for(lambda: _status_instance_count(node) == 2000, timeout=30, what="status to count 2000")
    status = node.status()
    assert sorted(s["instance_count"] for study in status["studies"] for s in study["series"]) == [100] * 20
