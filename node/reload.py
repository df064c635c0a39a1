"""Reloading config.toml in a running node (SIGHUP or ``radnode reload``).

Peers, routes, destinations, delivery settings and pipelines change in place, without dropping open
associations: each process keeps its configuration in a ``ConfigHolder`` and reads
``holder.current`` when it needs it. An invalid file is refused and the old configuration stays.
Keys that need a restart (the listening address, data folder, database, process counts) are kept at
their running values, and the log says so.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from node.config import Config, ConfigError, load_config

log = logging.getLogger("radnode.reload")

PID_FILE = "radnode.pid"
CONFIG_FILE_ENV = "RADNODE_RUNNING_CONFIG"  # set by the supervisor for the processes it spawns


def config_file_of_supervisor() -> Path | None:
    """The config file the supervisor was started with (children re-read it on SIGHUP)."""
    value = os.environ.get(CONFIG_FILE_ENV)
    return Path(value) if value else None


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Keys whose new value only takes effect after a restart."""
    changed = [f"node.{key}" for key in ("ae_title", "host", "port", "data_dir", "database_url", "receivers",
                                         "max_associations") if getattr(old.node, key) != getattr(new.node, key)]
    if old.workers != new.workers:
        changed.append("workers")
    return changed


def merge_for_reload(old: Config, new: Config) -> Config:
    """``new`` with the restart-only keys kept at their running values."""
    return new.model_copy(update={"node": old.node, "workers": old.workers})


class ConfigHolder:
    """The configuration a process runs with; ``reload()`` swaps it whole, or not at all."""

    def __init__(self, config: Config, path: Path | None) -> None:
        self._config = config
        self.path = path
        self._lock = threading.Lock()
        self._pending = threading.Event()

    @property
    def current(self) -> Config:
        return self._config

    def request_reload(self) -> None:
        """Signal-safe: note that a reload was asked for; ``apply_pending`` performs it."""
        self._pending.set()

    def apply_pending(self) -> bool:
        """Reload if one was requested; True when a new configuration took effect."""
        if not self._pending.is_set():
            return False
        self._pending.clear()
        return self.reload()

    def reload(self) -> bool:
        if self.path is None:
            log.error("reload refused: this process was not started from a config file")
            return False
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays:\n%s", exc)
            return False
        with self._lock:
            old = self._config
            for key in restart_only_changes(old, new):
                log.warning("reload: %s changed; it takes effect after a restart", key)
            self._config = merge_for_reload(old, new)
        log.info("configuration reloaded from %s: %d peers, %d destinations, %d routes, pipelines %s",
                 self.path, len(new.peers), len(new.destinations), len(new.routes), ", ".join(sorted(new.pipelines)))
        return True


def install_sighup(holder: ConfigHolder) -> None:
    """Make SIGHUP request a reload of ``holder`` (applied by the process's own loop)."""
    signal.signal(signal.SIGHUP, lambda _signum, _frame: holder.request_reload())


def write_pid_file(data_dir: Path) -> Path:
    path = data_dir / PID_FILE
    path.write_text(f"{os.getpid()}\n")
    return path


def signal_running_node(data_dir: Path) -> int:
    """Send SIGHUP to the node whose supervisor wrote ``data_dir/radnode.pid``; return its pid."""
    path = data_dir / PID_FILE
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        raise ProcessLookupError(f"no running node found: {path} is missing or unreadable") from None
    os.kill(pid, signal.SIGHUP)
    return pid
