"""Reload (SIGHUP / `radnode reload`): new routes and peers apply to what comes next, open
associations are not dropped, and an invalid file is refused while the old configuration stays."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom import dcmread
from pynetdicom import AE

from tests.support.dcmtk import echoscu, storescu
from tests.support.series import write_series

CT_ROUTE = '\n[[routes]]\nname = "ct"\npipeline = "brain-extraction"\nwhen = { Modality = "CT" }\n'


def _series_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _completed(node, files: list[Path]) -> dict:  # type: ignore[no-untyped-def]
    uid = _series_uid(files)
    return node.wait_for(lambda: (s := node.series_status(uid)) and s["state"] == "complete" and s,
                         what="completion")


def _reload_took_effect(node, count: int) -> None:  # type: ignore[no-untyped-def]
    node.wait_for(lambda: node.log().count("configuration reloaded") >= count, what="the reload")


def test_route_added_by_reload_applies_to_the_next_study(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    before = write_series(tmp_path / "before", 2, seed=1)
    storescu(node.port, before)
    assert _completed(node, before)["jobs"] == []

    node.config_path.write_text(node.config_text + CT_ROUTE)
    result = node.cli("reload")
    _reload_took_effect(node, 1)
    after = write_series(tmp_path / "after", 2, seed=2)
    storescu(node.port, after)

    assert "asked the node" in result.stdout
    assert [job["route"] for job in _completed(node, after)["jobs"]] == ["ct"]


def test_invalid_config_is_refused_and_the_running_one_stays(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode(extra=CT_ROUTE)
    node.config_path.write_text(node.config_text.replace('name = "ct"', 'nmae = "ct"'))

    refused = node.cli("reload", check=False)
    node.process.send_signal(1)  # a SIGHUP that bypasses the command's own check
    node.wait_for(lambda: "reload refused" in node.log(), what="the refusal in the log")
    files = write_series(tmp_path / "s", 2, seed=3)
    storescu(node.port, files)
    node.config_path.write_text(node.config_text)  # only so that `radnode status` can read it; not reloaded

    assert refused.returncode == 2 and "routes[0].nmae" in refused.stderr
    assert [job["route"] for job in _completed(node, files)["jobs"]] == ["ct"]
    assert echoscu(node.port).returncode == 0


def test_reloaded_peers_apply_to_new_associations_without_dropping_an_open_one(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    files = write_series(tmp_path / "s", 2, seed=4)
    ae = AE(ae_title="OLDPEER")
    ae.add_requested_context(dcmread(files[0], stop_before_pixels=True).SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RADNODE")
    assert assoc.is_established
    try:
        first = assoc.send_c_store(dcmread(files[0]))
        node.config_path.write_text(node.config_text + '\n[[peers]]\nae_title = "NEWPEER"\n')
        node.cli("reload")
        _reload_took_effect(node, 2)  # the supervisor and the receiver
        second = assoc.send_c_store(dcmread(files[1]))
    finally:
        assoc.release()

    assert int(first.Status) == 0 and int(second.Status) == 0
    assert echoscu(node.port, calling="OLDPEER").returncode != 0
    assert echoscu(node.port, calling="NEWPEER").returncode == 0
