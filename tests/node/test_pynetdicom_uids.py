"""node/pynetdicom_uids.py: pynetdicom's UID setter gives the same UIDs, errors and warnings, and
checks a conformant UID only once."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import UID
from pynetdicom import dimse_primitives, presentation, utils
from pynetdicom.dimse_primitives import C_STORE

from node import pynetdicom_uids

CONFORMANT = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def test_a_conformant_uid_is_the_uid_pynetdicom_makes_and_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pynetdicom_uids.conformant_uid.cache_clear()
    checks: list[object] = []
    original = pynetdicom_uids._config.VALIDATORS["UI"]

    def counted(value):  # type: ignore[no-untyped-def]
        checks.append(value)
        return original(value)

    monkeypatch.setitem(pynetdicom_uids._config.VALIDATORS, "UI", counted)
    first = pynetdicom_uids.set_uid(CONFORMANT, "AffectedSOPInstanceUID")
    again = pynetdicom_uids.set_uid(UID(CONFORMANT), "AffectedSOPInstanceUID")

    assert first == utils.set_uid(CONFORMANT, "AffectedSOPInstanceUID") and isinstance(first, UID)
    assert again is first
    assert len(checks) == 2  # once for the memo, once for pynetdicom's own call above


@pytest.mark.parametrize("value", ["1.2.03.4", "1.2.3.", "1.2.x.4"])
def test_a_non_conformant_uid_still_gets_pynetdicoms_warning(value: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pynetdicom"), pytest.warns(UserWarning, match="for VR UI"):
        result = pynetdicom_uids.set_uid(value, "AffectedSOPInstanceUID")  # pydicom's warning too
    assert result == value
    assert "Non-conformant 'AffectedSOPInstanceUID'" in caplog.text


@pytest.mark.parametrize("value", ["1." + "2" * 70, "2" * 65])
def test_an_invalid_uid_is_still_refused_with_pynetdicoms_error(value: str) -> None:
    with pytest.raises(ValueError, match="Invalid 'AffectedSOPInstanceUID' value"), \
            pytest.warns(UserWarning, match="maximum length of 64 allowed for VR UI"):
        pynetdicom_uids.set_uid(value, "AffectedSOPInstanceUID")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # pydicom's, for both calls
@pytest.mark.parametrize("value", [None, "", b"", b"1.2.3", b"1.2.03", "1.2.3\x00"])
def test_other_values_give_what_pynetdicom_gives(value: object) -> None:
    assert pynetdicom_uids.set_uid(value, "AffectedSOPClassUID") == utils.set_uid(value, "AffectedSOPClassUID")


def test_a_conformant_uid_in_ascii_bytes_is_remembered_like_its_text() -> None:
    pynetdicom_uids.conformant_uid.cache_clear()
    from_bytes = pynetdicom_uids.set_uid(CONFORMANT.encode("ascii"), "abstract_syntax")
    assert from_bytes == CONFORMANT and from_bytes is pynetdicom_uids.set_uid(CONFORMANT, "abstract_syntax")


def test_once_installed_primitives_and_presentation_contexts_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (dimse_primitives, presentation, pynetdicom_uids.pdu_items, pynetdicom_uids.pdu_primitives):
        monkeypatch.setattr(module, "set_uid", utils.set_uid)  # restored after the test
    monkeypatch.setattr(presentation.PresentationContext, "add_transfer_syntax",
                        pynetdicom_uids._original_add_transfer_syntax)
    pynetdicom_uids.install()
    pynetdicom_uids.conformant_uid.cache_clear()

    request = C_STORE()
    request.AffectedSOPInstanceUID = CONFORMANT
    response = C_STORE()
    response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID

    assert pynetdicom_uids.is_installed()
    assert response.AffectedSOPInstanceUID is request.AffectedSOPInstanceUID
    assert pynetdicom_uids.conformant_uid.cache_info().hits >= 1



def _contexts_given(*syntaxes: object) -> tuple[presentation.PresentationContext, presentation.PresentationContext]:
    """A context given ``syntaxes`` by pynetdicom's own method, and one given them by the memo."""
    theirs, ours = presentation.PresentationContext(), presentation.PresentationContext()
    for syntax in syntaxes:
        pynetdicom_uids._original_add_transfer_syntax(theirs, syntax)
        pynetdicom_uids.add_transfer_syntax(ours, syntax)
    return theirs, ours


def test_transfer_syntaxes_are_added_as_pynetdicom_adds_them_and_checked_once() -> None:
    pynetdicom_uids.quiet_transfer_syntax.cache_clear()
    explicit, implicit, private = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.826.0.1.3680043.8.498.1"
    theirs, ours = _contexts_given(explicit, UID(implicit), explicit.encode("ascii"), private, explicit)

    assert ours.transfer_syntax == theirs.transfer_syntax == [explicit, implicit, private]
    assert all(isinstance(syntax, UID) for syntax in ours.transfer_syntax)
    assert pynetdicom_uids.quiet_transfer_syntax.cache_info().hits == 2  # the bytes and the repeated explicit


def test_a_uid_that_is_no_transfer_syntax_still_gets_pynetdicoms_warning(caplog: pytest.LogCaptureFixture) -> None:
    ct_image_storage = "1.2.840.10008.5.1.4.1.1.2"
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        theirs, ours = _contexts_given(ct_image_storage)
    assert ours.transfer_syntax == theirs.transfer_syntax == [ct_image_storage]
    assert caplog.text.count("that is not a transfer syntax") == 2  # pynetdicom's, and again through the memo


def test_an_invalid_transfer_syntax_is_still_refused_with_pynetdicoms_error() -> None:
    context = presentation.PresentationContext()
    with pytest.raises(ValueError, match="'transfer_syntax' contains an invalid UID"), \
            pytest.warns(UserWarning, match="maximum length of 64 allowed for VR UI"):
        pynetdicom_uids.add_transfer_syntax(context, "1." + "2" * 70)
    assert context.transfer_syntax == []
