"""Route matching rules, as pure functions (no network)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from node.config import parse_config
from node.routing import match_routes


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _routes(text: str):  # type: ignore[no-untyped-def]
    return parse_config(text + '\n[pipelines.other]\nkind = "bundle"\npath = "/nonexistent"\n').routes


def test_regex_must_match_the_whole_value_case_insensitively() -> None:
    routes = _routes('[[routes]]\nname = "r"\npipeline = "brain-extraction"\nwhen = { SeriesDescription = "t1.*" }')

    assert match_routes(routes, _header(SeriesDescription="T1 MPRAGE"))
    assert not match_routes(routes, _header(SeriesDescription="Ax T1"))


def test_first_matching_route_wins_unless_it_continues() -> None:
    text = (
        '[[routes]]\nname = "a"\npipeline = "brain-extraction"\nwhen = { Modality = "MR" }\n'
        '[[routes]]\nname = "b"\npipeline = "other"\nwhen = { Modality = "MR" }\n'
    )
    assert [m.route for m in match_routes(_routes(text), _header(Modality="MR"))] == ["a"]
    continued = text.replace('name = "a"\n', 'name = "a"\ncontinue = true\n')
    assert [m.route for m in match_routes(_routes(continued), _header(Modality="MR"))] == ["a", "b"]


def test_numeric_range_condition() -> None:
    routes = _routes(
        '[[routes]]\nname = "thin"\npipeline = "brain-extraction"\nwhen = { SliceThickness = { max = 1.5 } }'
    )

    assert match_routes(routes, _header(SliceThickness="1.0"))
    assert not match_routes(routes, _header(SliceThickness="3.0"))
    assert not match_routes(routes, _header(Modality="MR"))


def test_multi_valued_attribute_is_matched_as_dicom_encodes_it() -> None:
    routes = _routes('[[routes]]\nname = "o"\npipeline = "brain-extraction"\nwhen = { ImageType = "ORIGINAL\\\\\\\\PRIMARY.*" }')

    assert match_routes(routes, _header(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]))
    assert not match_routes(routes, _header(ImageType=["DERIVED", "SECONDARY"]))
