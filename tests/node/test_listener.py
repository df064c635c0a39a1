"""The DICOM port is bound once by the supervisor and shared by the receivers, least busy first."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.config import NodeSettings
from node.listener import AssociationLoad, PortUnavailable, open_listening_socket
from node.peers import PeerPolicy
from node.scp import build_application_entity, start_server
from tests.support.dcmtk import echoscu
from tests.support.network import free_port
from tests.support.node_process import RADNODE, RadnodeProcess, base_config


def _load(receivers: int, index: int) -> AssociationLoad:
    return AssociationLoad(multiprocessing.get_context("spawn").Array("i", receivers), index)


def test_a_receiver_serving_more_associations_than_another_is_the_busier() -> None:
    counts = multiprocessing.get_context("spawn").Array("i", 2)
    first, second = AssociationLoad(counts, 0), AssociationLoad(counts, 1)
    first.started()
    assert first.busier_than_another() and not second.busier_than_another()
    second.started()
    assert not first.busier_than_another() and not second.busier_than_another()
    first.ended()
    assert second.busier_than_another() and not first.busier_than_another()


def test_a_restarted_receiver_starts_with_no_associations() -> None:
    counts = multiprocessing.get_context("spawn").Array("i", 2)
    counts[1] = 3  # what a receiver that died with three associations left behind
    AssociationLoad(counts, 1)
    assert list(counts) == [0, 0]


def test_association_count_does_not_go_below_zero() -> None:
    load = _load(1, 0)
    load.ended()
    assert not load.busier_than_another()


def test_a_port_in_use_is_refused_with_its_address() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        with pytest.raises(PortUnavailable, match=rf"cannot listen for DICOM on 127\.0\.0\.1:{port}: .*in use"):
            open_listening_socket("127.0.0.1", port)


def test_serve_exits_with_code_2_and_names_the_port_when_it_is_in_use(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(base_config(port, tmp_path / "data"))
    with socket.create_server(("127.0.0.1", port)):
        result = subprocess.run([*RADNODE, "serve", "--config", str(config)], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert f"cannot listen for DICOM on 127.0.0.1:{port}" in result.stdout + result.stderr


def _wait_until(predicate, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_receiver_counts_a_connection_from_accept_until_its_association_ends(tmp_path: Path) -> None:
    counts = multiprocessing.get_context("spawn").Array("i", 2)
    settings = NodeSettings(ae_title="RADNODE", host="127.0.0.1", port=free_port(), data_dir=tmp_path)
    listening = open_listening_socket(settings.host, settings.port)
    ae = build_application_entity(settings, receivers=2)
    start_server(ae, settings, lambda: PeerPolicy(()), [], listening, AssociationLoad(counts, 0))
    try:
        with socket.create_connection(("127.0.0.1", settings.port)):  # a probe that never associates
            _wait_until(lambda: counts[0] == 1, "the probe to be counted")
        _wait_until(lambda: counts[0] == 0, "the closed probe to leave the count")
        caller = AE(ae_title="HOLDER")
        caller.add_requested_context(Verification)
        held = caller.associate("127.0.0.1", settings.port, ae_title="RADNODE")
        assert held.is_established
        assert counts[0] == 1
        held.release()
        _wait_until(lambda: counts[0] == 0, "the released association to leave the count")
    finally:
        ae.shutdown()
        listening.close()


def _receiver_of_each_release(log: str) -> list[str]:
    return re.findall(r"\[(receiver-\d+)\] radnode\.receiver: association released", log)


def test_an_association_arriving_while_one_receiver_is_busy_goes_to_the_idle_receiver(tmp_path: Path) -> None:
    port = free_port()
    node = RadnodeProcess(tmp_path / "node", base_config(port, tmp_path / "node" / "data", receivers=2), port).start()
    try:
        node.wait_for(lambda: node.log().count("radnode.receiver: listening on") == 2, what="both receivers")
        caller = AE(ae_title="HOLDER")
        caller.add_requested_context(Verification)
        held = caller.associate("127.0.0.1", port, ae_title="RADNODE")
        assert held.is_established
        try:
            assert echoscu(port).returncode == 0  # a second association while the first stays open
        finally:
            held.release()
        releases = node.wait_for(lambda: len(found := _receiver_of_each_release(node.log())) == 2 and found,
                                 what="both associations to be released")
        assert releases[0] != releases[1], f"both associations were served by {releases[0]}"
    finally:
        node.stop()


def test_a_connection_made_while_the_only_receiver_restarts_waits_for_it_and_is_served(tmp_path: Path) -> None:
    port = free_port()
    node = RadnodeProcess(tmp_path / "node", base_config(port, tmp_path / "node" / "data"), port).start()
    try:
        receiver_pid = int(re.findall(r"listening on .* \(pid (\d+),", node.log())[-1])
        os.kill(receiver_pid, signal.SIGKILL)
        answered = echoscu(port, timeout=60)  # the supervisor's socket keeps it in the backlog meanwhile
        assert answered.returncode == 0, answered.stdout + answered.stderr
        assert "receiver-0 exited with code -9; restarting" in node.log()
    finally:
        node.stop()
