"""node/cstore_request.py: a C-STORE-RQ read directly from its command set gives the primitive
pynetdicom's own conversion gives (PS3.7 9.3.1.1, Implicit VR Little Endian), and anything it does
not read is left to pynetdicom."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from node.cstore_request import command_field_and_data_set_type, command_values, store_request_primitive

CT = "1.2.840.10008.5.1.4.1.1.2"
ATTRIBUTES = ("MessageID", "Priority", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
              "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")


def _request(message_id: int = 1, priority: int = 0, sop_instance: str = "1.2.826.0.1.3680043.8.498.1",
             move_originator: tuple[str, int] | None = None) -> C_STORE:
    request = C_STORE()
    request.MessageID = message_id
    request.Priority = priority
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = sop_instance
    if move_originator is not None:
        request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID = move_originator
    request.DataSet = BytesIO(b"\x08\x00\x16\x00\x02\x00\x00\x00AB")
    return request


def _received(request: C_STORE | C_ECHO, command_set: bytes | None = None) -> DIMSEMessage:
    """The message pynetdicom's DIMSE provider assembles from the P-DATA that ``request`` is sent
    as, its command set replaced by ``command_set`` when given."""
    outgoing = C_STORE_RQ() if isinstance(request, C_STORE) else C_ECHO_RQ()
    outgoing.primitive_to_message(request)
    received = DIMSEMessage()
    for p_data in outgoing.encode_msg(3, 0):
        if command_set is not None and p_data.presentation_data_value_list[0][1][0] & 1:
            p_data = P_DATA()
            p_data.presentation_data_value_list = [[3, b"\x03" + command_set]]
        done = received.decode_msg(p_data)
    assert done
    return received


def _command_set(*elements: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HHL", 0x0000, element, len(value)) + value for element, value in elements)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


@pytest.mark.parametrize("request_primitive", [
    _request(),
    _request(message_id=65535, priority=2, sop_instance="1.2.826.0.1.3680043.8.498.12"),  # even-length UID
    _request(message_id=0, priority=1, move_originator=("PACS_MOVE", 41)),  # a C-MOVE's sub-operation
], ids=["plain", "even-uid-high-priority", "move-originator"])
def test_the_primitive_is_the_one_pynetdicom_converts(request_primitive: C_STORE) -> None:
    expected = _received(request_primitive).message_to_primitive()
    direct = store_request_primitive(_received(request_primitive))

    assert isinstance(direct, C_STORE)
    for name in ATTRIBUTES:
        assert getattr(direct, name) == getattr(expected, name), name
        assert type(getattr(direct, name)) is type(getattr(expected, name)), name
    assert direct.DataSet.getvalue() == expected.DataSet.getvalue() == request_primitive.DataSet.getvalue()
    assert direct._context_id == expected._context_id == 3


def test_padding_is_stripped_as_pydicom_strips_it() -> None:
    command_set = _command_set((0x0002, CT.encode() + b"\x00"), (0x0100, b"\x01\x00"), (0x0110, b"\x05\x00"),
                               (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1.2.3.4 "),
                               (0x1030, b" MOVER  "), (0x1031, b"\x09\x00"))
    assert command_values(command_set) == {
        "AffectedSOPClassUID": CT, "MessageID": 5, "Priority": 0, "AffectedSOPInstanceUID": "1.2.3.4",
        "MoveOriginatorApplicationEntityTitle": "MOVER", "MoveOriginatorMessageID": 9}
    expected = _received(_request(), command_set).message_to_primitive()
    direct = store_request_primitive(_received(_request(), command_set))
    assert direct is not None
    assert [getattr(direct, name) for name in ATTRIBUTES] == [getattr(expected, name) for name in ATTRIBUTES]


@pytest.mark.parametrize("extra", [
    (0x0900, b"\x00\x00"),  # Status: not an element of a request
    (0x1000, b"1.2.3\\1.2.4"),  # a second SOP Instance UID: pynetdicom warns and keeps the first
    (0x0110, b"\x01\x00\x02\x00"),  # Message ID of 4 bytes
    (0x1000, b""),  # empty
], ids=["foreign-element", "multi-valued", "odd-size", "empty"])
def test_a_command_set_it_does_not_read_is_left_to_pynetdicom(extra: tuple[int, bytes]) -> None:
    command_set = _command_set((0x0002, CT.encode() + b"\x00"), (0x0100, b"\x01\x00"), (0x0110, b"\x05\x00"),
                               (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), extra)
    assert command_values(command_set) is None
    assert store_request_primitive(_received(_request(), command_set)) is None


def test_a_truncated_element_or_another_group_is_not_read() -> None:
    whole = _command_set((0x0110, b"\x05\x00"))
    assert command_values(whole[:-1]) is None
    assert command_values(whole[:-6]) is None
    assert command_values(struct.pack("<HHL", 0x0008, 0x0016, 2) + b"AB") is None


def test_a_message_other_than_a_c_store_request_is_left_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 4
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    assert store_request_primitive(_received(echo)) is None


def test_a_uid_too_long_is_refused_as_pynetdicom_refuses_it() -> None:
    command_set = _command_set((0x0002, CT.encode() + b"\x00"), (0x0100, b"\x01\x00"), (0x0110, b"\x05\x00"),
                               (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1." * 35))
    with pytest.raises(ValueError):
        _received(_request(), command_set).message_to_primitive()
    with pytest.raises(ValueError):
        store_request_primitive(_received(_request(), command_set))


def test_a_non_conformant_uid_is_kept_as_pynetdicom_keeps_it() -> None:
    """The receiver's handler refuses it with 0xC002 (node/receiver.py), whichever path read it."""
    command_set = _command_set((0x0002, CT.encode() + b"\x00"), (0x0100, b"\x01\x00"), (0x0110, b"\x05\x00"),
                               (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1.2.x.4\x00"))
    expected = _received(_request(), command_set).message_to_primitive()
    direct = store_request_primitive(_received(_request(), command_set))
    assert direct is not None
    assert direct.AffectedSOPInstanceUID == expected.AffectedSOPInstanceUID == "1.2.x.4"


@pytest.mark.parametrize("request_primitive", [_request(), _request(move_originator=("PACS_MOVE", 41))],
                         ids=["plain", "move-originator"])
def test_command_field_and_data_set_type_are_the_values_pydicom_decodes(request_primitive: C_STORE) -> None:
    received = _received(request_primitive)
    encoded = received.encoded_command_set.getvalue()
    assert command_field_and_data_set_type(encoded) == (
        received.command_set.CommandField, received.command_set.CommandDataSetType)


def test_command_field_and_data_set_type_of_a_request_without_data_set() -> None:
    echo = C_ECHO()
    echo.MessageID = 5
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    encoded = _received(echo).encoded_command_set.getvalue()
    assert command_field_and_data_set_type(encoded) == (0x0030, 0x0101)


@pytest.mark.parametrize("command_set", [
    _command_set((0x0100, b"\x01\x00")),  # no Command Data Set Type
    _command_set((0x0100, b"\x01\x00\x00\x00"), (0x0800, b"\x01\x00")),  # a 4-byte Command Field
    _command_set((0x0100, b"\x01\x00"), (0x0800, b"\x01\x00"))[:-1],  # truncated value
    b"\x00\x00\x00\x01",  # truncated element header
], ids=["missing", "wrong-length", "truncated-value", "truncated-header"])
def test_command_field_and_data_set_type_are_not_read_from_a_malformed_command_set(command_set: bytes) -> None:
    assert command_field_and_data_set_type(command_set) is None
