"""A progress bar for long loops (evaluation cases, training epochs): tqdm when it is installed,
else a plain one-line bar on stderr. Both write to stderr so that stdout stays machine-readable."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class SimpleBar:
    """A minimal tqdm stand-in: ``for x in SimpleBar(items, total, desc)`` plus ``set_postfix_str``."""

    def __init__(self, iterable: Iterable[T], total: int | None, desc: str, stream=None) -> None:
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.stream = stream or sys.stderr
        self.postfix = ""
        self.count = 0
        self.start = time.perf_counter()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        self._draw()

    def _draw(self, end: str = "\r") -> None:
        elapsed = time.perf_counter() - self.start
        if self.total:
            filled = int(30 * self.count / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {self.count}/{self.total}"
        else:
            bar = f"{self.count}"
        extra = f" {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {bar} {elapsed:6.1f}s{extra}{end}")
        self.stream.flush()

    def __iter__(self) -> Iterator[T]:
        self._draw()
        for item in self.iterable:
            yield item
            self.count += 1
            self._draw()
        self._draw(end="\n")

    def close(self) -> None:  # tqdm compatibility
        pass


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True):
    """Wrap ``iterable`` in a progress bar (tqdm if importable, else :class:`SimpleBar`).

    The returned object is iterable and has ``set_postfix_str(text)``. With ``enabled=False`` a
    silent wrapper with the same interface is returned (for tests and non-interactive use).
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not enabled:
        return _Silent(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return SimpleBar(iterable, total, desc)
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)


class _Silent:
    def __init__(self, iterable: Iterable[T]) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable)

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
