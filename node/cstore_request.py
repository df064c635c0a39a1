"""A received C-STORE-RQ command set turned into pynetdicom's C_STORE primitive directly
(PS3.7 9.3.1.1, Table 9.3-1; PS3.7 6.3.1).

A command set is always Implicit VR Little Endian: each element is its tag (group, element as two
little-endian uint16), a uint32 value length, then the value. pynetdicom 3.0 converts a received
command set to its primitive through pydicom (each element's value converted, its keyword and VM
looked up, then tried on the primitive with ``hasattr``): about 0.3 ms per request on this
project's VMs, paid once per received instance. Reading the few raw values of a C-STORE-RQ from
the encoded command set costs about a quarter of that; the values still go through the
primitive's own setters, so they are validated exactly as before.

:func:`store_request_primitive` gives the primitive pynetdicom's ``message_to_primitive`` gives
for a C-STORE-RQ whose command set holds only the elements of Table 9.3-1, each single-valued
(tests/node/test_cstore_request.py compares the two); for any other message, element or encoding
it returns None and the caller keeps pynetdicom's path.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

_ELEMENT_HEADER = struct.Struct("<HHL")  # group, element, value length

# The elements of Table 9.3-1 by VR, each with the C_STORE attribute it sets; the last three
# (group length, command field, data set type) are read by pynetdicom's decoder and are not
# attributes of the primitive.
_UNSIGNED_SHORT = {0x0110: "MessageID", 0x0700: "Priority", 0x1031: "MoveOriginatorMessageID"}
_UNIQUE_IDENTIFIER = {0x0002: "AffectedSOPClassUID", 0x1000: "AffectedSOPInstanceUID"}
_APPLICATION_ENTITY = {0x1030: "MoveOriginatorApplicationEntityTitle"}
_NOT_ON_THE_PRIMITIVE = frozenset({0x0000, 0x0100, 0x0800})


def _command_elements(encoded: bytes | memoryview) -> list[tuple[int, int, memoryview]] | None:
    """The (group, element, value) of each element of an encoded command set, in order; None when
    an element's header or value is truncated."""
    data = memoryview(encoded)
    elements: list[tuple[int, int, memoryview]] = []
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += 8
        if offset + length > end:
            return None
        elements.append((group, element, data[offset : offset + length]))
        offset += length
    return elements


def command_values(encoded: bytes | memoryview) -> dict[str, Any] | None:
    """The C_STORE attribute values of an encoded C-STORE-RQ command set, as pydicom would
    convert them (US: int; UI: text without trailing NULs and spaces; AE: text without leading and
    trailing whitespace); None when it holds anything else: an element outside Table 9.3-1, a
    group other than 0000, an empty, multi-valued or odd-sized value, or a truncated element."""
    elements = _command_elements(encoded)
    if elements is None:
        return None
    values: dict[str, Any] = {}
    for group, element, view in elements:
        if group != 0x0000 or len(view) == 0:
            return None
        if element in _NOT_ON_THE_PRIMITIVE:
            continue
        value = bytes(view)
        if element in _UNSIGNED_SHORT and len(value) == 2:
            values[_UNSIGNED_SHORT[element]] = int.from_bytes(value, "little")
            continue
        if b"\\" in value:  # more than one value: pynetdicom would warn and keep the first
            return None
        if element in _UNIQUE_IDENTIFIER:
            values[_UNIQUE_IDENTIFIER[element]] = value.decode("latin-1").rstrip("\0 ")
        elif element in _APPLICATION_ENTITY:
            values[_APPLICATION_ENTITY[element]] = value.decode("latin-1").strip()
        else:
            return None
    return values


_COMMAND_FIELD, _COMMAND_DATA_SET_TYPE = 0x0100, 0x0800
C_STORE_RQ_FIELD = 0x0001  # Command Field of a C-STORE-RQ (PS3.7 Table 9.3-1)
NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows (PS3.7 Table E.1-1)


def command_field_and_data_set_type(encoded: bytes | memoryview) -> tuple[int, int] | None:
    """The Command Field and Command Data Set Type of an encoded command set: the two values
    pynetdicom's decoder reads to type a message and to know whether a data set follows; None
    when either is missing or not a 2-byte value, or an element is truncated."""
    elements = _command_elements(encoded)
    if elements is None:
        return None
    found = {element: view for group, element, view in elements
             if group == 0x0000 and element in (_COMMAND_FIELD, _COMMAND_DATA_SET_TYPE)}
    if len(found) != 2 or any(len(view) != 2 for view in found.values()):
        return None
    return (int.from_bytes(found[_COMMAND_FIELD], "little"),
            int.from_bytes(found[_COMMAND_DATA_SET_TYPE], "little"))


def store_request_primitive(message: Any) -> C_STORE | None:
    """The C_STORE primitive of a completely received C-STORE-RQ ``message`` (a pynetdicom
    DIMSEMessage), or None when :func:`command_values` cannot read its command set or the message
    is not a C-STORE-RQ. Raises ValueError, as pynetdicom does, for a value the primitive refuses
    (a malformed UID, a Priority outside 0-2)."""
    if type(message) is not C_STORE_RQ:
        return None
    values = command_values(message.encoded_command_set.getvalue())
    if values is None:
        return None
    primitive = C_STORE()
    for name, value in values.items():
        setattr(primitive, name, value)
    if isinstance(message.data_set, BytesIO):
        primitive.DataSet = message.data_set
    else:  # a ReceivedFileBuffer (node/received_file.py); the setter would take a BytesIO only
        primitive._dataset = message.data_set
    primitive._context_id = message.context_id
    primitive._dataset_path = message._data_set_path
    primitive._dataset_file = message._data_set_file
    return primitive
