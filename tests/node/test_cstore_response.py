"""node/cstore_response.py: a C-STORE-RSP command set encoded by hand is byte for byte the one
pynetdicom encodes for the same response (PS3.7 9.3.1.2, Implicit VR Little Endian)."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from node.cstore_response import encode_c_store_response


def _pynetdicom_encoding(message_id: int, status: int, sop_class: str | None, sop_instance: str | None) -> bytes:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.Status = status
    if sop_class is not None:
        response.AffectedSOPClassUID = sop_class
    if sop_instance is not None:
        response.AffectedSOPInstanceUID = sop_instance
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    fragments = list(message.encode_msg(1, 0))
    assert len(fragments) == 1
    (context_id, data), = fragments[0].presentation_data_value_list
    assert data[0] == 0x03  # command, last fragment
    return data[1:]


@pytest.mark.parametrize(
    ("message_id", "status", "sop_class", "sop_instance"),
    [
        (1, 0x0000, "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1"),  # odd-length UIDs: NUL pad
        (65535, 0xC001, "1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.8.498.12"),  # even-length UID
        (7, 0xA700, "1.2.840.10008.5.1.4.1.1.128", "1.2.3"),
        (0, 0x0110, None, None),  # conditional UIDs left out
    ],
)
def test_the_encoding_is_the_one_pynetdicom_produces(message_id: int, status: int, sop_class: str | None,
                                                     sop_instance: str | None) -> None:
    assert encode_c_store_response(message_id, status, sop_class, sop_instance) == _pynetdicom_encoding(
        message_id, status, sop_class, sop_instance)


def test_the_group_length_counts_the_bytes_after_it() -> None:
    encoded = encode_c_store_response(3, 0x0000, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    assert encoded[:8] == b"\x00\x00\x00\x00\x04\x00\x00\x00"  # (0000,0000), length 4
    assert int.from_bytes(encoded[8:12], "little") == len(encoded) - 12


def test_values_outside_sixteen_bits_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_c_store_response(70000, 0x0000, None, None)
    with pytest.raises(ValueError):
        encode_c_store_response(1, -1, None, None)


@pytest.mark.parametrize("context_id", [1, 127, 255])
def test_a_command_pdu_is_the_p_data_tf_pynetdicom_encodes(context_id: int) -> None:
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    from node.cstore_response import encode_command_pdu

    command = encode_c_store_response(7, 0x0000, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, b"\x03" + command))
    assert encode_command_pdu(context_id, command) == P_DATA_TF(primitive).encode()
