"""Running ``radnode serve`` as a real subprocess on a loopback port, as an admin would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.network import free_port

RADNODE = [sys.executable, "-m", "node.cli"]


def base_config(port: int, data_dir: Path, *, extra: str = "", ae_title: str = "RADNODE",
                grace_s: float = 0.5, quiet_s: float = 60.0, workers: int = 0,
                database_url: str = "", min_free_disk_mb: int = 1, receivers: int = 1) -> str:
    """A config.toml text for tests: small timeouts, no workers unless asked (or given in ``extra``)."""
    workers_table = f"[workers]\ncount = {workers}\ntorch_threads = 1\nlease_s = 30\npoll_interval_s = 0.1\n"
    web_table = "[web]\nenabled = false\n"  # tests that want the web process give their own [web] (free port)
    return f"""
[node]
ae_title = "{ae_title}"
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir.as_posix()}"
database_url = "{database_url}"
min_free_disk_mb = {min_free_disk_mb}
receivers = {receivers}
log_level = "DEBUG"

[completion]
grace_s = {grace_s}
quiet_s = {quiet_s}
check_interval_s = 0.2

{"" if "[workers]" in extra else workers_table}
{"" if "[web]" in extra else web_table}
{extra}
"""


def model_worker_table(*, torch_threads: int, lease_s: float) -> str:
    """``[workers]`` for tests that run a real model: one worker, fast polling."""
    return f"[workers]\ncount = 1\ntorch_threads = {torch_threads}\nlease_s = {lease_s}\npoll_interval_s = 0.1\n"


def delivery_table(**settings: float) -> str:
    """``[delivery]`` with the given settings (e.g. short retries); others keep their defaults."""
    return "[delivery]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())


def destination_table(name: str, ae_title: str, port: int) -> str:
    """One ``[[destinations]]`` entry on loopback."""
    return f'[[destinations]]\nname = "{name}"\nae_title = "{ae_title}"\nhost = "127.0.0.1"\nport = {port}\n'


def route_table(name: str, when: str, send_to: list[str], pipeline: str = "brain-extraction") -> str:
    """One ``[[routes]]`` entry; ``when`` is the TOML inline table of conditions."""
    targets = ", ".join(f'"{target}"' for target in send_to)
    return f'[[routes]]\nname = "{name}"\npipeline = "{pipeline}"\nwhen = {when}\nsend_to = [{targets}]\n'


def _listening(port: int) -> bool:
    """True when something accepts connections on the loopback ``port`` (test ports come from the
    ephemeral range: a socket that connected to itself, TCP simultaneous open, does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0 and sock.getsockname() != sock.getpeername()


def _group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that have not exited (zombies have)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


@dataclass
class RadnodeProcess:
    """A ``radnode serve`` subprocess in its own process group (so kill -9 takes all of it)."""

    workdir: Path
    config_text: str
    port: int
    role: str = "all"
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.toml"
        self.config_path.write_text(self.config_text)
        self.log_path = self.workdir / "serve.log"
        self.data_dir = self.workdir / "data"

    def start(self, timeout: float = 60.0) -> "RadnodeProcess":
        # Ready means: this start logged that it listens (or that its worker is ready) -- the log
        # keeps earlier starts' lines -- and, for a receiver, the port accepts a connection.
        marker = "worker 0 ready" if self.role == "worker" else "radnode.receiver: listening on"
        earlier = self.log().count(marker)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*RADNODE, "serve", "--config", str(self.config_path), "--role", self.role],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"radnode serve exited with {self.process.returncode}:\n{self.log()}")
            if self.log().count(marker) > earlier and (self.role == "worker" or _listening(self.port)):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"radnode serve ({self.role}) was not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait; return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise
        return int(self.process.returncode)

    def kill9(self) -> None:
        """kill -9 of the whole process tree, as a power cut or OOM kill would; returns once every
        process of the group has exited (one blocked in fsync takes a moment, and until then its
        listening socket still accepts connections)."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run another radnode command against this node's config."""
        result = subprocess.run([*RADNODE, *args, "--config", str(self.config_path)],
                                capture_output=True, text=True, cwd=self.workdir, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"radnode {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def series_status(self, series_uid: str) -> dict | None:
        for study in self.status()["studies"]:
            for series in study["series"]:
                if series["series_instance_uid"] == series_uid:
                    return series
        return None

    def wait_for(self, predicate, timeout: float = 30.0, interval: float = 0.3, what: str = "condition"):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n--- node log ---\n{self.log()[-4000:]}")

    def spool_files(self) -> list[Path]:
        return sorted((self.data_dir / "spool").glob("*/*/*.dcm"))

    def spool_leftovers(self) -> list[Path]:
        """Anything in the spool that is not a complete instance file."""
        root = self.data_dir / "spool"
        return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".dcm"))


def start_node(workdir: Path, **config_options) -> RadnodeProcess:  # type: ignore[no-untyped-def]
    port = free_port()
    extra = config_options.pop("extra", "")
    text = base_config(port, workdir / "data", extra=extra, **config_options)
    return RadnodeProcess(workdir=workdir, config_text=text, port=port).start()
