"""The C-STORE-RSP command set, encoded directly (PS3.7 9.3.1.2, Table 9.3-2; PS3.7 6.3.1).

A command set is always Implicit VR Little Endian: each element is its tag (group, element as two
little-endian uint16), a uint32 value length, then the value; UI values are padded to an even
length with one NUL (PS3.5 6.2, 9.1). A successful or refused C-STORE answers with at most seven
elements, so building them by hand costs a few microseconds where pynetdicom's generic path
(a pydicom Dataset per response, encoded twice for the group length) costs a few hundred.

:func:`encode_c_store_response` produces byte for byte what pynetdicom 3.0 encodes for the same
response without Offending Element or Error Comment (tests/node/test_cstore_response.py compares
the two); responses that carry either keep pynetdicom's path.
"""

from __future__ import annotations

import struct

C_STORE_RSP_COMMAND_FIELD = 0x8001
NO_DATASET = 0x0101  # CommandDataSetType: no dataset follows the command (PS3.7 E.1)


def _element(element: int, value: bytes) -> bytes:
    """One group-0000 element: tag, 4-byte length, value (Implicit VR Little Endian)."""
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _ui(uid: str) -> bytes:
    encoded = uid.encode("ascii")
    return encoded + b"\x00" if len(encoded) % 2 else encoded


def encode_c_store_response(message_id_being_responded_to: int, status: int,
                            sop_class_uid: str | None, sop_instance_uid: str | None) -> bytes:
    """The encoded command set of a C-STORE-RSP; UIDs that are None are left out (they are
    conditional in Table 9.3-2). Raises ValueError for a value that cannot be encoded."""
    if not 0 <= message_id_being_responded_to <= 0xFFFF or not 0 <= status <= 0xFFFF:
        raise ValueError("Message ID and Status are unsigned 16-bit values")
    body = b"".join((
        _element(0x0002, _ui(sop_class_uid)) if sop_class_uid is not None else b"",
        _element(0x0100, struct.pack("<H", C_STORE_RSP_COMMAND_FIELD)),
        _element(0x0120, struct.pack("<H", message_id_being_responded_to)),
        _element(0x0800, struct.pack("<H", NO_DATASET)),
        _element(0x0900, struct.pack("<H", status)),
        _element(0x1000, _ui(sop_instance_uid)) if sop_instance_uid is not None else b"",
    ))
    return _element(0x0000, struct.pack("<L", len(body))) + body


def encode_command_pdu(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU carrying a whole ``command`` set as one PDV (PS3.8 9.3.5, Tables 9-22 and
    9-23; message control header 0x03: command, last fragment, PS3.8 E.2), as pynetdicom 3.0
    encodes ``P_DATA_TF`` for it."""
    item = struct.pack(">LBB", 2 + len(command), context_id, 0x03) + command
    return struct.pack(">BBL", 0x04, 0x00, len(item)) + item
