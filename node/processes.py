"""Whether a process of this host still exists (for leases and per-process metric folders)."""

from __future__ import annotations

import os
from pathlib import Path


def process_exists(pid: int) -> bool:
    """True while ``pid`` is a process of this host that has not exited (a zombie has exited)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return False
    else:
        return text[text.rindex(")") + 2:][:1] != "Z"  # the state letter follows "(command) "
    try:  # no /proc: ask the kernel (a zombie then counts as alive; its lease expires as before)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
