"""The retention job: runs storage.retention's purge on the ``[retention]`` policy, logs and audits it.

Scheduled by the supervisor every ``[retention] check_interval_s`` (roles ``all`` and ``receiver``)
and run once by ``radnode purge --older-than DAYS``.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine

from node.audit import AuditLog
from node.config import Config
from storage.retention import PurgedStudy, purge

log = logging.getLogger("radnode.retention")

DAY_S = 86400.0


def run_purge(config: Config, engine: Engine, *, older_than_days: float | None, watermark_percent: float | None,
              dry_run: bool = False, via: str = "schedule") -> list[PurgedStudy]:
    """Purge finished studies older than ``older_than_days`` (None: not by age) and, above
    ``watermark_percent`` disk use (None: no watermark), the oldest finished ones; audit each."""
    older_than_s = None if older_than_days is None else older_than_days * DAY_S
    purged = purge(engine, config.node.data_dir, time.time(), older_than_s=older_than_s,
                   watermark_percent=watermark_percent, dry_run=dry_run)
    if dry_run:
        return purged
    audit = AuditLog(config.node.data_dir)
    for study in purged:
        audit.record("retention", study_instance_uid=study.study_instance_uid, files=study.files,
                     bytes=study.bytes, reason=study.reason, last_activity=round(study.last_activity, 3), via=via)
    if purged:
        log.info("retention: deleted the files of %d finished studies (%d files, %.1f MB)", len(purged),
                 sum(s.files for s in purged), sum(s.bytes for s in purged) / 1e6)
    return purged


class RetentionJob:
    """The periodic purge with the configured policy; never raises into the scheduler."""

    def __init__(self, config: Config, engine: Engine) -> None:
        self._config = config
        self._engine = engine

    def run(self) -> None:
        settings = self._config.retention
        try:
            run_purge(self._config, self._engine,
                      older_than_days=settings.max_age_days if settings.max_age_days > 0 else None,
                      watermark_percent=settings.disk_watermark_percent)
        except Exception:
            log.exception("retention run failed; it will be tried again in %.0f s", settings.check_interval_s)
