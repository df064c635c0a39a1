"""pynetdicom's UID setter with its checks remembered for conformant UIDs (part of
node/pynetdicom_tuning.py).

Why
  pynetdicom 3.0 checks every UID a primitive, presentation context or PDU item is given
  (``pynetdicom.utils.set_uid``): pydicom's ``UID()`` matches the value against the UI regex,
  the configured validator (``_config.VALIDATORS["UI"]``) builds a second ``UID`` and checks it,
  and ``UID.is_valid`` matches another regex. Each C-STORE sets its SOP Class and Instance UIDs
  twice (request and response primitives), and each association from storescu negotiates about
  120 presentation contexts. py-spy (``--gil``) of the receivers during a four-association ingest:
  UID checks in regex matching and ``UID`` construction were about a tenth of the time they held
  the GIL; for 60 one-image associations, ``A_ASSOCIATE_RQ.to_primitive`` and the negotiation,
  mostly UID checks, were close to half.

What
  :func:`set_uid` is ``set_uid`` as pynetdicom's modules see it. A non-empty ``str`` or ``UID``
  value, or ASCII ``bytes`` (as PDU items carry them), that is conformant (PS3.5 9.1: at most 64
  characters, digits in components without leading zeros, separated by dots) is answered from a
  bounded LRU cache of the ``UID`` made and checked for it the first time; a conformant UID
  passes every one of pynetdicom's checks without a warning, so only repeated work is skipped. Anything else (None, bytes, empty, a
  non-conformant or invalid value) goes through pynetdicom's own ``set_uid``, with its errors and
  warnings as before. The cache holds :data:`CACHED_UIDS` values; a C-STORE's instance UID is
  checked once and found again for its response.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydicom import config
from pydicom.uid import UID
from pynetdicom import _config, dimse_primitives, pdu_items, pdu_primitives, presentation, utils

CACHED_UIDS = 4096
_CONFORMANT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # PS3.5 9.1
_PATCHED_MODULES = (dimse_primitives, pdu_items, pdu_primitives, presentation)
_original_set_uid = utils.set_uid
_original_add_transfer_syntax = presentation.PresentationContext.add_transfer_syntax


@lru_cache(maxsize=CACHED_UIDS)
def conformant_uid(value: str) -> UID | None:
    """The ``UID`` pynetdicom's ``set_uid`` returns for ``value`` when ``value`` is conformant and
    passes the configured validator; None otherwise (nothing is logged either way)."""
    if len(value) > 64 or _CONFORMANT.fullmatch(value) is None:
        return None
    uid = UID(value, validation_mode=config.IGNORE)  # pydicom's own check of UI values: the two lines above
    if not uid.is_valid or not _config.VALIDATORS["UI"](uid)[0]:
        return None
    return uid


def _uid_text(value: Any) -> str:
    """``value`` as the plain text the memos are keyed by: a ``str`` or ``UID`` as ``str`` (the
    cache would take a UID for another key), ASCII ``bytes`` decoded (what pynetdicom's
    decode_bytes gives, without its fallbacks); "" for anything else."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes) and value.isascii():
        return value.decode("ascii")
    return ""


def set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True,
            validate: bool = True) -> UID | None:
    """``pynetdicom.utils.set_uid`` (same arguments, same result), remembered for conformant UIDs."""
    text = _uid_text(value)
    if text:
        uid = conformant_uid(text)
        if uid is not None:
            return uid
    return _original_set_uid(value, name, allow_empty, allow_none, validate)


@lru_cache(maxsize=CACHED_UIDS)
def quiet_transfer_syntax(value: str) -> UID | None:
    """The ``UID`` that ``PresentationContext.add_transfer_syntax`` appends for ``value`` without
    an error or a warning: a conformant UID (:func:`conformant_uid`) that is a transfer syntax
    pydicom knows or a private one; None otherwise."""
    uid = conformant_uid(value)
    if uid is None or not (uid.is_private or uid.is_transfer_syntax):
        return None
    return uid


def add_transfer_syntax(self: presentation.PresentationContext, syntax: Any) -> None:
    """``PresentationContext.add_transfer_syntax`` (same result), remembered for the transfer
    syntaxes of :func:`quiet_transfer_syntax`; anything else goes through pynetdicom's own method,
    with its errors and warnings. A storescu association proposes about 120 contexts of three
    transfer syntaxes each, and pynetdicom checks each syntax again (a ``UID``, pynetdicom's
    validator, two regex matches, a dictionary lookup) when it decodes the A-ASSOCIATE-RQ and
    when it builds the accepted contexts: py-spy (``--gil``) of 40 one-image associations found
    a quarter of the receiver's time there."""
    text = _uid_text(syntax)
    uid = quiet_transfer_syntax(text) if text else None
    if uid is None:
        _original_add_transfer_syntax(self, syntax)
    elif uid not in self._transfer_syntax:
        self._transfer_syntax.append(uid)


def install() -> None:
    """Make pynetdicom's primitives, presentation contexts and PDU items use :func:`set_uid`, and
    its presentation contexts :func:`add_transfer_syntax`."""
    for module in _PATCHED_MODULES:
        module.set_uid = set_uid  # type: ignore[attr-defined]
    presentation.PresentationContext.add_transfer_syntax = add_transfer_syntax  # type: ignore[method-assign]


def is_installed() -> bool:
    return (all(module.set_uid is set_uid for module in _PATCHED_MODULES)  # type: ignore[attr-defined]
            and presentation.PresentationContext.add_transfer_syntax is add_transfer_syntax)
