"""Deciding that series are complete and queueing the jobs their routes choose.

Runs as a periodic check (APScheduler) in the supervising process. The state lives in the
database, so a restart or a second receiver never loses or doubles a completion.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import Engine

from node.config import Config
from node.routing import match_routes
from storage.completion import DueSeries, NewJob, complete_series, find_due_series

log = logging.getLogger("radnode.completion")


class CompletionChecker:
    def __init__(self, config: Config, engine: Engine) -> None:
        self._config = config
        self._engine = engine

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration (routes apply to series completed from now on)."""
        self._config = config

    def check(self, now: float | None = None) -> int:
        """Complete every due series; return how many were completed by this call."""
        now = time.time() if now is None else now
        settings = self._config.completion
        completed = 0
        for series in find_due_series(self._engine, now, settings.grace_s, settings.quiet_s):
            try:
                completed += self._complete(series, now)
            except Exception:
                log.exception("completing series %s failed; will try again", series.series_instance_uid)
        return completed

    def _complete(self, series: DueSeries, now: float) -> int:
        header = dcmread(
            Path(self._config.node.data_dir) / series.sample_path, stop_before_pixels=True, force=True
        )
        late = series.generation > 0
        matches = match_routes(self._config.routes, header, late=late)
        jobs = [NewJob(pipeline=m.pipeline, route=m.route, send_to=m.send_to) for m in matches]
        if matches:
            note = "queued: " + ", ".join(f"{m.pipeline} (route {m.route})" for m in matches)
        elif late:
            note = "late instances: no route asks for a re-run"
        else:
            note = "no route matched"
        if not complete_series(self._engine, series, jobs, note, now):
            return 0
        log.info(
            "series %s complete (%d instances, generation %d): %s",
            series.series_instance_uid,
            series.instance_count,
            series.generation,
            note,
        )
        return 1
