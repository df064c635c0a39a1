"""Route matching: ordered ``[[routes]]`` against the attributes of a completed series.

A condition is a regular expression that must match the whole attribute value (case-insensitive;
multi-valued attributes such as ImageType are joined with a backslash, as DICOM encodes them),
or a numeric ``{min, max}`` range. The first matching route wins unless it sets ``continue``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.config import NumericRange, RouteSettings


@dataclass(frozen=True)
class RouteMatch:
    route: str
    pipeline: str
    send_to: tuple[str, ...]


def _as_text(value: object) -> str:
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _condition_holds(header: Dataset, keyword: str, condition: str | NumericRange) -> bool:
    value = header.get(keyword)
    if isinstance(condition, NumericRange):
        try:
            number = float(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)  # type: ignore[index,arg-type]
        except (TypeError, ValueError, IndexError):
            return False
        return (condition.min is None or number >= condition.min) and (
            condition.max is None or number <= condition.max
        )
    return re.fullmatch(condition, _as_text(value).strip(), flags=re.IGNORECASE) is not None


def route_matches(route: RouteSettings, header: Dataset) -> bool:
    return all(_condition_holds(header, keyword, cond) for keyword, cond in route.when.items())


def match_routes(routes: list[RouteSettings], header: Dataset, *, late: bool = False) -> list[RouteMatch]:
    """Routes that apply to a series, in order; ``late`` (a reopened series) keeps only those with
    ``rerun_on_late``. Each pipeline appears at most once."""
    matches: list[RouteMatch] = []
    for route in routes:
        if not route_matches(route, header):
            continue
        if not late or route.rerun_on_late:
            if all(m.pipeline != route.pipeline for m in matches):
                matches.append(RouteMatch(route.name, route.pipeline, tuple(route.send_to)))
        if not route.continue_:
            break
    return matches
