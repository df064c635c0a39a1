"""UID validation before a UID is allowed to become part of a file path (PS3.5 Section 9.1)."""

from __future__ import annotations

import re

# Components of digits separated by '.', no leading zero in a multi-digit component, <= 64 chars.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


class InvalidUID(ValueError):
    """A UID is missing or not of the form PS3.5 9.1 requires."""


def validate_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a str when it is a valid UID; raise InvalidUID naming the attribute.

    Only digits and dots can pass, so a valid UID can never escape the spool folder.
    """
    if value is None or value == "":
        raise InvalidUID(f"{keyword} is missing")
    text = str(value).rstrip("\x00 ")  # UI values may be padded with NUL (PS3.5 6.2)
    if len(text) > 64:
        raise InvalidUID(f"{keyword} is longer than 64 characters ({len(text)})")
    if not _UID.match(text):
        raise InvalidUID(f"{keyword} is not a valid UID (digits and dots only, PS3.5 9.1)")
    return text
