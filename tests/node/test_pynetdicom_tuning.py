"""node/pynetdicom_tuning.py: the receiver runs with event-driven pynetdicom waits and still
stores every instance exactly as received, released and aborted associations included."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom import association as association_module
from pynetdicom import dul as dul_module
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.sop_class import CTImageStorage, Verification

from node import pynetdicom_tuning
from node.file_meta import encode_file
from node.received_file import FileBufferPool, ReceivedFileBuffer
from node.receiver import received_file, release_received_dataset
from storage.direct_io import is_block_aligned
from tests.support.dcmtk import DCMTK_ENV, parse_acknowledged, storescu_command
from tests.support.network import free_port
from tests.support.series import dataset_bytes, write_series


def _stored_path(node, path: Path) -> Path:  # type: ignore[no-untyped-def]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return node.data_dir / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def test_receiver_logs_that_the_tuning_is_on_and_stores_a_study_byte_identical(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    study_uid = pydicom.uid.generate_uid()
    files = (write_series(tmp_path / "a", 40, study_uid=study_uid, size=128, seed=11)
             + write_series(tmp_path / "b", 25, study_uid=study_uid, size=96, seed=12))
    # two associations at once, so the waits of concurrent associations cannot cross
    senders = [subprocess.Popen(storescu_command(node.port, part), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
               for part in (files[0::2], files[1::2])]
    outputs = [sender.communicate(timeout=120)[0] for sender in senders]

    assert "pynetdicom tuning on" in node.log()
    assert all(sender.returncode == 0 for sender in senders), outputs
    assert sum(len(parse_acknowledged(output)) for output in outputs) == len(files)
    for path in files:
        assert dataset_bytes(_stored_path(node, path)) == dataset_bytes(path)
    studies = node.status()["studies"]
    assert sorted(s["instance_count"] for s in studies[0]["series"]) == [25, 40]


def test_tuning_can_be_switched_off_for_comparisons(tmp_path: Path) -> None:
    from tests.support.node_process import RadnodeProcess, base_config

    port = free_port()
    node = RadnodeProcess(workdir=tmp_path / "off", config_text=base_config(port, tmp_path / "off" / "data"), port=port)
    os.environ["RADNODE_PYNETDICOM_TUNING"] = "0"
    try:
        node.start()
    finally:
        del os.environ["RADNODE_PYNETDICOM_TUNING"]
    try:
        files = write_series(tmp_path / "s", 3, seed=13)
        output = subprocess.run(storescu_command(port, files), capture_output=True, text=True,
                                env=DCMTK_ENV, timeout=60)
        assert len(parse_acknowledged(output.stdout + output.stderr)) == 3
        assert "pynetdicom tuning off" in node.log()
    finally:
        node.stop()


@pytest.fixture
def scp_statuses() -> dict[str, int]:
    """The statuses tuned_scp's handler answers, by SOP Instance UID (default 0x0000)."""
    return {}


@pytest.fixture
def scp_handler_threads() -> list[threading.Thread]:
    """The thread each C-STORE handler call of tuned_scp ran on."""
    return []


@pytest.fixture
def scp_store_delay_s() -> float:
    """How long tuned_scp's C-STORE handler takes (parametrize to change)."""
    return 0.0


@pytest.fixture
def scp_extra_handlers() -> list[tuple[object, object]]:
    """Event handlers tuned_scp binds besides its C-STORE handler (parametrize to change)."""
    return []


@pytest.fixture
def scp_file_buffers() -> FileBufferPool | None:
    """The pool tuned_scp assembles datasets in (node/received_file.py; parametrize to give one);
    None keeps pynetdicom's BytesIO."""
    return None


@pytest.fixture
def scp_whole_files() -> list[bool]:
    """For each C-STORE tuned_scp served with file buffers: whether the handler got the whole file
    as one page-aligned view of the assembly buffer."""
    return []


@pytest.fixture
def tuned_scp(scp_statuses: dict[str, int], scp_extra_handlers: list[tuple[object, object]],  # type: ignore[no-untyped-def]
              scp_handler_threads: list[threading.Thread], scp_store_delay_s: float,
              scp_file_buffers: FileBufferPool | None, scp_whole_files: list[bool],
              monkeypatch: pytest.MonkeyPatch):
    """An in-process SCP built as the receiver builds it, recording each C-STORE's bytes."""
    from node.scp import _SharedPortServer
    from node.pynetdicom_tuning import TunedRequestHandler

    assert pynetdicom_tuning.apply()
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")  # as node/scp.py sets it, before the server
    received: dict[str, bytes] = {}
    threads: list[threading.Thread] = []

    def on_store(event):  # type: ignore[no-untyped-def]
        threads.append(event.assoc)  # the acceptor's Association thread
        scp_handler_threads.append(threading.current_thread())
        time.sleep(scp_store_delay_s)
        uid = str(event.request.AffectedSOPInstanceUID)
        if scp_file_buffers is None:
            received[uid] = bytes(event.encoded_dataset())
        else:  # as the receiver's handler does (node/receiver.py)
            whole_file = received_file(event)
            scp_whole_files.append(isinstance(whole_file, memoryview) and is_block_aligned(whole_file))
            received[uid] = bytes(whole_file)
            del whole_file
            release_received_dataset(event)
        return scp_statuses.get(uid, 0x0000)

    ae = AE(ae_title="TUNED")
    ae.network_timeout = 0.5 if scp_store_delay_s else 60  # a slow store must not count as a silent peer
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = _SharedPortServer(ae, ("127.0.0.1", port), "TUNED", ae.supported_contexts, None,
                               evt_handlers=[(evt.EVT_C_STORE, on_store), *scp_extra_handlers], request_handler=TunedRequestHandler)
    server.file_buffers = scp_file_buffers
    ae._servers.append(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port, received, threads
    ae.shutdown()



def test_accepted_associations_wait_on_events_and_other_threads_sleep_normally(
    tuned_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, received, threads = tuned_scp
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the files' own bytes
    assert pynetdicom_tuning.is_applied()
    assert isinstance(dul_module.time, pynetdicom_tuning._TimeProxy)
    assert isinstance(association_module.time, pynetdicom_tuning._TimeProxy)
    assert association_module.time.monotonic() > 0  # the rest of ``time`` is the real module

    files = write_series(tmp_path / "s", 30, size=256, seed=14)
    scu = AE(ae_title="SCU")
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = scu.associate("127.0.0.1", port, ae_title="TUNED")
    assert assoc.is_established
    # the requestor side is not tuned: its threads keep pynetdicom's own sleeps
    assert not hasattr(assoc, pynetdicom_tuning._WAKE_ATTR)
    assert not getattr(assoc.dul, pynetdicom_tuning._TUNED_DUL_ATTR, False)
    for path in files:
        assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()

    acceptor = threads[0]
    assert isinstance(getattr(acceptor, pynetdicom_tuning._WAKE_ATTR), threading.Event)
    assert getattr(acceptor.dul, pynetdicom_tuning._TUNED_DUL_ATTR) is True
    assert len(received) == len(files)
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes_from(received[uid]) == dataset_bytes(path)

    # an untuned thread calling the proxy sleeps for real
    start = time.perf_counter()
    association_module.time.sleep(0.02)
    assert time.perf_counter() - start >= 0.019


def test_aborted_association_ends_promptly(tuned_scp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, _received, threads = tuned_scp
    scu = AE(ae_title="SCU")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", port, ae_title="TUNED")
    assert assoc.is_established
    assoc.send_c_store(pydicom.dcmread(write_series(tmp_path / "s", 1, seed=15)[0]))
    assoc.abort()
    acceptor = threads[0]
    acceptor.join(timeout=5)
    assert not acceptor.is_alive()
    assert not acceptor.dul.is_alive()


def dataset_bytes_from(data: bytes) -> bytes:
    """The dataset part of a Part 10 byte string (see tests.support.series.dataset_bytes)."""
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]


def test_a_queued_primitive_signals_the_tuned_dul_which_then_resets_the_signal() -> None:
    """A C-STORE-RSP queued by the association thread makes the DUL's select() return at once."""
    import select
    import socket
    from types import SimpleNamespace

    near, far = socket.socketpair()
    outgoing = pynetdicom_tuning._SignallingQueue()
    dul = SimpleNamespace(socket=SimpleNamespace(socket=near), to_provider_queue=outgoing,
                          state_machine=SimpleNamespace(current_state="Sta6"))
    try:
        assert select.select([outgoing.wake_fd], [], [], 0)[0] == []
        outgoing.put("C-STORE-RSP")
        assert select.select([outgoing.wake_fd], [], [], 0)[0] == [outgoing.wake_fd]
        assert pynetdicom_tuning._wait_for_dul_work(dul, 0.0)
        assert select.select([outgoing.wake_fd], [], [], 0)[0] == []  # reset; the work stays queued
        assert outgoing.get_nowait() == "C-STORE-RSP"
    finally:
        near.close()
        far.close()


def test_killing_a_tuned_dul_also_wakes_it_from_its_wait() -> None:
    from types import SimpleNamespace

    killed: list[bool] = []
    dul = SimpleNamespace(kill_dul=lambda: killed.append(True), to_provider_queue=None)
    pynetdicom_tuning._tune_dul(dul)
    dul.kill_dul()
    assert killed == [True]
    assert os.eventfd_read(dul.to_provider_queue.wake_fd) == 1


def test_an_idle_established_association_wakes_its_threads_a_few_times_a_second_not_a_thousand(
    tuned_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, _received, threads = tuned_scp
    scu = AE(ae_title="SCU")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", port, ae_title="TUNED")
    assert assoc.is_established
    assert assoc.send_c_store(pydicom.dcmread(write_series(tmp_path / "s", 1, seed=16)[0])).Status == 0x0000
    acceptor = threads[0]
    dul_waits = _count_calls(monkeypatch, "_wait_for_dul_work")
    wake = getattr(acceptor, pynetdicom_tuning._WAKE_ATTR)
    association_waits = [0]
    original_wait = wake.wait

    def counted_wait(timeout: float | None = None) -> bool:
        association_waits[0] += 1
        return original_wait(timeout)

    monkeypatch.setattr(wake, "wait", counted_wait)
    time.sleep(1.0)  # idle: nothing sent either way
    assoc.release()
    assert assoc.is_released
    # pynetdicom's own loops wake every 1 ms (about 1000 times in this second); the tuned ones
    # every ESTABLISHED_POLL_S (50 ms: about 20 times)
    assert 0 < dul_waits[0] < 100
    assert 0 < association_waits[0] < 100


def test_associations_do_not_leak_their_wake_descriptors(tuned_scp) -> None:  # type: ignore[no-untyped-def]
    import gc

    port, _received, threads = tuned_scp
    scu = AE(ae_title="SCU")
    scu.add_requested_context(Verification)

    def echo_once() -> None:
        assoc = scu.associate("127.0.0.1", port, ae_title="TUNED")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()

    echo_once()  # server threads and pools warmed up
    for thread in threads:
        thread.join(timeout=5)
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        echo_once()
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/fd")) > before and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= before


def _tuned_delivery_association(port: int, dimse_timeout: float = 30):  # type: ignore[no-untyped-def]
    """An established CT storage association to the tuned SCP, its DUL tuned as delivery's is."""
    scu = AE(ae_title="SCU")
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    scu.dimse_timeout = dimse_timeout
    assoc = scu.associate("127.0.0.1", port, ae_title="TUNED")
    assert assoc.is_established
    assert pynetdicom_tuning.tune_requestor(assoc)
    return assoc


def test_a_tuned_delivery_association_stores_every_object_as_sent(
    tuned_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, received, _threads = tuned_scp
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = write_series(tmp_path / "s", 20, size=128, seed=16)
    assoc = _tuned_delivery_association(port)
    assert getattr(assoc.dul, pynetdicom_tuning._TUNED_DUL_ATTR) is True
    for path in files:
        assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    assert assoc.is_released
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes_from(received[uid]) == dataset_bytes(path)


def test_a_response_the_requestors_reactor_takes_by_race_still_reaches_the_sender(
    tuned_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, received, _threads = tuned_scp
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = write_series(tmp_path / "s", 3, size=64, seed=17)
    assoc = _tuned_delivery_association(port, dimse_timeout=3)  # a lost response fails in 3 s, not 30
    assert pynetdicom_tuning.hand_stolen_responses_back(assoc)
    # The interleaving of the race, made certain: the reactor stalls right after it passed its
    # pause point (as when it loses the GIL there), so the sender sees it paused and sends; the
    # response arrives while the sender is slow to take it (waiting for the GIL), and the reactor,
    # resuming, finds it in the queue first.
    checkpoint, dimse, sender = assoc._reactor_checkpoint, assoc.dimse, threading.current_thread()
    original_wait, original_get_msg = checkpoint.wait, dimse.get_msg

    def wait_then_stall(timeout: float | None = None) -> bool:
        passed = original_wait(timeout)
        time.sleep(0.1)
        return passed

    def get_msg_slowly_in_the_sender(block: bool = False):  # type: ignore[no-untyped-def]
        if block and threading.current_thread() is sender:
            time.sleep(0.3)
        return original_get_msg(block)

    monkeypatch.setattr(checkpoint, "wait", wait_then_stall)
    monkeypatch.setattr(dimse, "get_msg", get_msg_slowly_in_the_sender)
    statuses = [getattr(assoc.send_c_store(path), "Status", None) for path in files]
    assoc.release()
    assert statuses == [0x0000] * len(files)
    assert len(received) == len(files)


def test_a_requestor_that_is_not_established_is_left_alone() -> None:
    assert pynetdicom_tuning.apply()
    scu = AE(ae_title="SCU")
    scu.add_requested_context(Verification)
    scu.acse_timeout = scu.network_timeout = 5
    refused = scu.associate("127.0.0.1", free_port(), ae_title="NOBODY")  # nothing listens there
    assert not refused.is_established
    assert not pynetdicom_tuning.tune_requestor(refused)
    assert not getattr(refused.dul, pynetdicom_tuning._TUNED_DUL_ATTR, False)


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of pynetdicom_tuning.<name> (the tuned paths look it up at each call)."""
    calls = [0]
    original = getattr(pynetdicom_tuning, name)

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(pynetdicom_tuning, name, counted)
    return calls


def _count_method_calls(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[int]:
    calls = [0]
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def _store_all(port: int, files: list[Path]) -> list[tuple[int, str]]:
    """C-STORE each file's own bytes on one association; (status, responded SOP Instance UID) each."""
    scu = AE(ae_title="SCU")
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    scu.maximum_pdu_size = 16384  # a 128 x 128 image arrives as several P-DATA-TF PDUs
    answers: list[tuple[int, str]] = []

    def on_response(event):  # type: ignore[no-untyped-def]
        command = event.message.command_set
        answers.append((int(command.Status), str(command.AffectedSOPInstanceUID)))

    assoc = scu.associate("127.0.0.1", port, ae_title="TUNED", evt_handlers=[(evt.EVT_DIMSE_RECV, on_response)])
    assert assoc.is_established
    for path in files:
        assoc.send_c_store(path)
    assoc.release()
    assert assoc.is_released
    return answers


def test_p_data_of_an_established_association_goes_straight_to_dimse_and_is_served_on_the_dul_thread(
    tuned_scp, scp_handler_threads: list[threading.Thread], tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received, associations = tuned_scp
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    split_calls = _count_calls(monkeypatch, "split_pdv_items")
    files = write_series(tmp_path / "s", 12, size=128, seed=17)

    answers = _store_all(port, files)

    assert [status for status, _ in answers] == [0x0000] * len(files)
    assert split_calls[0] >= 2 * len(files)  # a command PDU and at least one dataset PDU each
    # each request was served where it was completed: on the association's DUL thread
    assert scp_handler_threads == [associations[0].dul] * len(files)
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes_from(received[uid]) == dataset_bytes(path)


def test_c_store_requests_on_the_direct_path_are_read_from_their_command_set(
    tuned_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, received, _ = tuned_scp
    read: list[object] = []
    original = pynetdicom_tuning.store_request_primitive

    def recorded(message):  # type: ignore[no-untyped-def]
        read.append(original(message))
        return read[-1]

    monkeypatch.setattr(pynetdicom_tuning, "store_request_primitive", recorded)
    files = write_series(tmp_path / "s", 5, size=128, seed=19)

    assert [status for status, _ in _store_all(port, files)] == [0x0000] * len(files)
    assert len(read) == len(files) and all(primitive is not None for primitive in read)
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes_from(received[uid]) == dataset_bytes(path)


def _count_command_set_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count pynetdicom's decodes of received command sets through pydicom (dimse_messages.decode);
    each call records the Command Field it decoded."""
    from pynetdicom import dimse_messages

    fields: list[int] = []
    original = dimse_messages.decode

    def decode(*args, **kwargs):  # type: ignore[no-untyped-def]
        command_set = original(*args, **kwargs)
        fields.append(int(command_set.CommandField))
        return command_set

    monkeypatch.setattr(dimse_messages, "decode", decode)
    return fields


@pytest.mark.parametrize(("scp_extra_handlers", "decoded_per_request"), [
    ([], 0),  # typed from the raw Command Field and Command Data Set Type
    ([(evt.EVT_DIMSE_RECV, lambda event: None)], 1),  # a listener may read the command set: decoded for it
], ids=["no-listener", "dimse-recv-listener"])
def test_a_c_store_requests_command_set_goes_through_pydicom_only_for_a_listener_to_received_messages(
    tuned_scp, decoded_per_request: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, received, _ = tuned_scp
    decoded = _count_command_set_decodes(monkeypatch)
    files = write_series(tmp_path / "s", 4, size=128, seed=29)

    assert [status for status, _ in _store_all(port, files)] == [0x0000] * len(files)
    assert decoded.count(0x0001) == decoded_per_request * len(files)  # 0x0001: C-STORE-RQ
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes_from(received[uid]) == dataset_bytes(path)


def test_a_message_to_assemble_has_every_attribute_pynetdicoms_constructor_gives_it() -> None:
    made_here, made_by_pynetdicom = pynetdicom_tuning._new_message(), DIMSEMessage()
    assert vars(made_here).keys() == vars(made_by_pynetdicom).keys()
    assert made_here.command_set is None  # set once the command set is complete (or never: typed directly)


@pytest.mark.parametrize("size", [128, 1024])  # 32 KB, and 2 MB: beyond the pooled 1 MB, the buffer grows
@pytest.mark.parametrize("scp_file_buffers", [FileBufferPool()])
def test_with_file_buffers_each_dataset_arrives_as_one_aligned_file_in_a_reused_buffer(
    tuned_scp, scp_file_buffers: FileBufferPool, scp_whole_files: list[bool],  # type: ignore[no-untyped-def]
    tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received, _ = tuned_scp
    files = write_series(tmp_path / "s", 4, size=size, seed=23)
    received_directly = _count_method_calls(monkeypatch, ReceivedFileBuffer, "receive")
    copied_bytes: list[int] = []
    write = ReceivedFileBuffer.write

    def counted_write(self: ReceivedFileBuffer, data: bytes) -> int:
        copied_bytes.append(write(self, data))
        return copied_bytes[-1]

    monkeypatch.setattr(ReceivedFileBuffer, "write", counted_write)

    assert [status for status, _ in _store_all(port, files)] == [0x0000] * len(files)
    assert scp_whole_files == [True] * len(files)
    # every dataset PDU after the command's went from the socket straight into the buffer
    assert received_directly[0] >= len(files) * (size * size * 2 // 16384) and sum(copied_bytes) == 0
    assert scp_file_buffers.idle == 1  # one association, one buffer, back in the pool after each image
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(header.SOPInstanceUID)
        # the same file the BytesIO path writes: File Meta from the request and context, dataset as sent
        assert received[uid] == encode_file(str(header.SOPClassUID), uid, ExplicitVRLittleEndian, dataset_bytes(path))


@pytest.mark.parametrize("scp_extra_handlers", [[(evt.EVT_PDU_RECV, lambda event: None),
                                                  (evt.EVT_DIMSE_SENT, lambda event: None)]])
def test_with_handlers_bound_to_pdus_and_messages_every_pdu_and_response_takes_pynetdicoms_path(
    tuned_scp, scp_handler_threads: list[threading.Thread], tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received, associations = tuned_scp
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    split_calls = _count_calls(monkeypatch, "split_pdv_items")
    encode_calls = _count_calls(monkeypatch, "encode_c_store_response")
    files = write_series(tmp_path / "s", 3, size=128, seed=18)

    assert [status for status, _ in _store_all(port, files)] == [0x0000] * len(files)
    assert split_calls[0] == 0 and encode_calls[0] == 0
    assert len(received) == len(files)
    assert scp_handler_threads == [associations[0]] * len(files)  # served by the association thread


def test_c_store_responses_carry_the_handlers_status_and_the_instance_they_answer(
    tuned_scp, scp_statuses: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, _received, _threads = tuned_scp
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    encode_calls = _count_calls(monkeypatch, "encode_c_store_response")
    files = write_series(tmp_path / "s", 4, size=32, seed=19)
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]
    for uid, status in zip(uids, (0x0000, 0xA700, 0xC001, 0x0110)):
        scp_statuses[uid] = status

    sent_directly = _count_calls(monkeypatch, "encode_command_pdu")

    answers = _store_all(port, files)

    assert answers == [(0x0000, uids[0]), (0xA700, uids[1]), (0xC001, uids[2]), (0x0110, uids[3])]
    assert encode_calls[0] == len(files)
    assert sent_directly[0] == len(files)  # served on the DUL thread, sent by it at once


@pytest.mark.parametrize("scp_extra_handlers", [[(evt.EVT_PDU_SENT, lambda event: None)],
                                                 [(evt.EVT_DATA_SENT, lambda event: None)]])
def test_with_handlers_bound_to_sent_pdus_or_data_responses_go_through_the_dul_queue(
    tuned_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, _received, _threads = tuned_scp
    sent_directly = _count_calls(monkeypatch, "encode_command_pdu")
    files = write_series(tmp_path / "s", 3, size=32, seed=29)

    assert [status for status, _ in _store_all(port, files)] == [0x0000] * len(files)
    assert sent_directly[0] == 0


def test_pdv_items_are_split_as_ps3_8_lays_them_out() -> None:
    body = (b"\x00\x00\x00\x04" + b"\x01" + b"\x03ab"  # context 1, command, last fragment, 2 bytes
            + b"\x00\x00\x00\x03" + b"\x03" + b"\x02z")  # context 3, dataset, last fragment, 1 byte
    assert pynetdicom_tuning.split_pdv_items(body) == [[1, b"\x03ab"], [3, b"\x02z"]]
    assert pynetdicom_tuning.split_pdv_items(bytearray(body)) == [[1, b"\x03ab"], [3, b"\x02z"]]


@pytest.mark.parametrize("body", [
    b"",  # no item
    b"\x00\x00\x00",  # truncated item header
    b"\x00\x00\x00\x01\x01",  # item without a control header
    b"\x00\x00\x00\x09\x01\x03ab",  # item longer than the PDU
    b"\x00\x00\x00\x04\x01\x03ab\x00",  # a stray byte after the last item
])
def test_a_malformed_pdv_list_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        pynetdicom_tuning.split_pdv_items(body)


def test_read_exactly_collects_a_pdu_sent_in_pieces_and_stops_short_at_close() -> None:
    import socket

    near, far = socket.socketpair()
    try:
        near.settimeout(5)
        payload = bytes(range(256)) * 1024  # 256 KB
        sender = threading.Thread(target=lambda: [far.sendall(payload[i:i + 1000]) for i in range(0, len(payload), 1000)])
        sender.start()
        assert pynetdicom_tuning.read_exactly(near, len(payload)) == payload
        sender.join()
        far.sendall(b"abc")
        far.close()
        assert pynetdicom_tuning.read_exactly(near, 10) == bytearray(b"abc")  # the peer closed first
    finally:
        near.close()


def test_read_exactly_keeps_the_sockets_timeout() -> None:
    import socket

    near, far = socket.socketpair()
    try:
        near.settimeout(0.2)
        far.sendall(b"ab")
        with pytest.raises(TimeoutError):
            pynetdicom_tuning.read_exactly(near, 4)
    finally:
        near.close()
        far.close()



@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected sockets (``near`` is read by the code under test), closed afterwards."""
    near, far = socket.socketpair()
    with near, far:
        yield near, far


def _counting_readv(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace os.readv by a wrapper that records each call's descriptor."""
    calls: list[int] = []
    real_readv = os.readv

    def readv(fd: int, buffers: Any) -> int:
        calls.append(fd)
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", readv)
    return calls


def test_receive_into_reads_waiting_bytes_with_one_readv(
    socket_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    near, far = socket_pair
    near.settimeout(5)
    far.sendall(b"abcdef")
    time.sleep(0.05)
    calls = _counting_readv(monkeypatch)
    buffer = bytearray(10)
    assert pynetdicom_tuning.receive_into(near, memoryview(buffer)) == 6
    assert bytes(buffer[:6]) == b"abcdef"
    assert calls == [near.fileno()]


def test_receive_into_waits_for_late_bytes_and_keeps_the_sockets_timeout(
    socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    near, far = socket_pair
    near.settimeout(2)
    later = threading.Timer(0.2, far.sendall, args=(b"xyz",))
    later.start()
    buffer = bytearray(3)
    assert pynetdicom_tuning.receive_into(near, memoryview(buffer)) == 3  # nothing waited at first
    assert bytes(buffer) == b"xyz"
    later.join()
    near.settimeout(0.2)
    with pytest.raises(TimeoutError):
        pynetdicom_tuning.receive_into(near, memoryview(buffer))


def test_receive_into_returns_0_once_the_peer_closed(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = socket_pair
    near.settimeout(2)
    far.close()
    assert pynetdicom_tuning.receive_into(near, memoryview(bytearray(4))) == 0


def test_receive_into_leaves_a_socket_without_timeout_to_recv_into(
    socket_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    near, far = socket_pair
    near.settimeout(None)  # blocking: no poll() to save, and a readv could not time out
    far.sendall(b"ab")
    calls = _counting_readv(monkeypatch)
    buffer = bytearray(2)
    assert pynetdicom_tuning.receive_into(near, memoryview(buffer)) == 2
    assert bytes(buffer) == b"ab" and calls == []


def test_pdus_of_an_established_association_are_read_without_a_readiness_select(
    tuned_scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    port, received, _ = tuned_scp
    readiness_checks: list[str] = []  # the DUL's state at each select() with timeout 0
    real_select = select.select

    def counting_select(readable, writable, failed, timeout=None):  # type: ignore[no-untyped-def]
        if timeout == 0 and getattr(threading.current_thread(), pynetdicom_tuning._TUNED_DUL_ATTR, False):
            readiness_checks.append(threading.current_thread().state_machine.current_state)
        return real_select(readable, writable, failed, timeout)

    monkeypatch.setattr(select, "select", counting_select)
    files = write_series(tmp_path / "s", 4, size=128, seed=31)  # several P-DATA-TF PDUs each

    assert [status for status, _ in _store_all(port, files)] == [0x0000] * len(files)
    assert len(received) == len(files)
    # each header read straight away, or found not there yet; only the closing state (Sta13,
    # after the release) keeps pynetdicom's check before it closes the connection
    assert [state for state in readiness_checks if state != "Sta13"] == []


class _StandInAssociationSocket:
    """What :func:`pynetdicom_tuning._header_if_waiting` uses of pynetdicom's AssociationSocket."""

    def __init__(self, raw: socket.socket) -> None:
        self.socket, self._is_connected = raw, True


class _StandInDul:
    def __init__(self, raw: socket.socket) -> None:
        self.socket = _StandInAssociationSocket(raw)


def test_a_header_not_yet_sent_is_reported_absent_at_once(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    near, _ = socket_pair
    near.settimeout(5)
    started = time.monotonic()
    assert pynetdicom_tuning._header_if_waiting(_StandInDul(near)) is None
    assert time.monotonic() - started < 1  # not the socket's 5 s timeout


def test_a_header_begun_is_read_whole_even_when_its_bytes_arrive_apart(
    socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    near, far = socket_pair
    near.settimeout(5)
    far.sendall(b"\x04\x00")
    time.sleep(0.05)
    later = threading.Timer(0.2, far.sendall, args=(b"\x00\x00\x40\x00" + b"body",))
    later.start()
    assert pynetdicom_tuning._header_if_waiting(_StandInDul(near)) == b"\x04\x00\x00\x00\x40\x00"
    later.join()
    assert near.recv(4) == b"body"  # the PDU's body is left for its own read


def test_a_closed_connection_gives_no_header_for_the_association_to_end(
    socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    near, far = socket_pair
    near.settimeout(5)
    far.close()
    assert pynetdicom_tuning._header_if_waiting(_StandInDul(near)) == b""


@pytest.mark.parametrize("scp_store_delay_s", [1.5])
def test_a_store_slower_than_the_network_timeout_is_answered_not_aborted(
    tuned_scp, scp_handler_threads: list[threading.Thread], tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received, associations = tuned_scp
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = write_series(tmp_path / "s", 2, size=32, seed=20)

    assert [status for status, _ in _store_all(port, files)] == [0x0000, 0x0000]
    assert scp_handler_threads == [associations[0].dul] * 2  # the DUL thread was busy storing
    assert len(received) == 2


def _pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    return (2 + len(fragment)).to_bytes(4, "big") + bytes((context_id, control)) + fragment


def _dul_receiving(sock, message_context_id: int = 1, max_dataset: int | None = None):  # type: ignore[no-untyped-def]
    """The parts of a DUL that _receive_pdv_items reads: its socket and its message's context."""
    from types import SimpleNamespace

    from node import limits

    assoc = SimpleNamespace(dimse=SimpleNamespace(message=SimpleNamespace(context_id=message_context_id)))
    if max_dataset is not None:
        setattr(assoc, limits._TALLY_ATTR, limits._MessageTally(max_dataset))
    return SimpleNamespace(socket=SimpleNamespace(socket=sock), assoc=assoc)


def test_dataset_fragments_go_from_the_socket_into_the_assembly_and_dimse_gets_their_headers() -> None:
    import socket

    near, far = socket.socketpair()
    body = _pdv(1, 0x00, b"first part ") + _pdv(1, 0x02, b"and the last")
    far.sendall(body)
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: None)

    items = pynetdicom_tuning._receive_pdv_items(_dul_receiving(near), len(body), assembly)

    assert items == [[1, b"\x00"], [1, b"\x02"]]
    assert assembly.getvalue() == b"first part and the last"
    near.close(), far.close()


def test_command_fragments_other_contexts_and_bytes_beyond_the_dataset_limit_are_read_as_usual() -> None:
    import socket

    near, far = socket.socketpair()
    body = _pdv(1, 0x03, b"command") + _pdv(3, 0x00, b"other context") + _pdv(1, 0x00, b"12345") + _pdv(1, 0x02, b"67")
    far.sendall(body)
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: None)

    items = pynetdicom_tuning._receive_pdv_items(_dul_receiving(near, max_dataset=6), len(body), assembly)

    # "12345" fits the 6-byte limit and goes straight in; "67" would pass it: the guard's path refuses it
    assert items == [[1, b"\x03command"], [3, b"\x00other context"], [1, b"\x00"], [1, b"\x0267"]]
    assert assembly.getvalue() == b"12345"
    near.close(), far.close()


@pytest.mark.parametrize("body, declared", [
    ((100).to_bytes(4, "big") + b"\x01\x00abc", 9),  # an item longer than the PDU
    ((1).to_bytes(4, "big") + b"\x01", 5),  # an item without its control header
    (_pdv(1, 0x00, b"abc") + b"\x00\x00", 11),  # bytes left that cannot hold an item header
    (b"", 0),  # a P-DATA-TF without any item
])
def test_pdv_items_that_do_not_fill_the_pdu_exactly_are_an_invalid_pdu(body: bytes, declared: int) -> None:
    import socket

    near, far = socket.socketpair()
    far.sendall(body)
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: None)
    assert pynetdicom_tuning._receive_pdv_items(_dul_receiving(near), declared, assembly) == "Evt19"
    near.close(), far.close()


def test_a_connection_closed_inside_a_dataset_fragment_ends_the_association() -> None:
    import socket

    near, far = socket.socketpair()
    body = _pdv(1, 0x02, b"x" * 1000)
    far.sendall(body[:500])
    far.close()
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: None)
    assert pynetdicom_tuning._receive_pdv_items(_dul_receiving(near), len(body), assembly) == "Evt17"
    near.close()
