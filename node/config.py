"""config.toml parsed once into typed, validated objects (pydantic 2).

Every table forbids unknown keys, so a typo is an error that names its key path instead of a
silently ignored setting. Relative paths are resolved against the folder of the config file.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.settings import BrainExtractionSettings, PipelineSettings

_AE_TITLE = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # PS3.5 6.2: 16 chars of the default repertoire, no backslash


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one ``(key path, reason)`` per error."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {path}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    if not re.match(_AE_TITLE, value) or not value.strip():
        raise ValueError("an AE title is 1-16 printable characters, no backslash, not all spaces")
    return value.strip()


AETitle = Annotated[str, Field(min_length=1, max_length=16)]


class TLSSettings(_Strict):
    """``[node.tls]``: DICOM TLS (PS3.15 B.1, BCP 195: TLS 1.2+) on ``port``, beside the plain port."""

    port: int = Field(ge=1, le=65535)
    certificate: Path = Field(description="PEM server certificate (chain)")
    private_key: Path = Field(description="PEM private key of the certificate")
    client_ca: Path | None = Field(None, description="set: clients must present a certificate signed by this CA")


class NodeSettings(_Strict):
    """``[node]``: the Storage SCP itself (PS3.4 Annex B) and where it keeps its data."""

    ae_title: AETitle = "RADNODE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    data_dir: Path = Path("radnode-data")
    database_url: str = Field("", description="empty: SQLite file in data_dir")
    max_associations: int = Field(10, ge=1, le=1000)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(30.0, gt=0)
    network_timeout_s: float = Field(60.0, gt=0)
    min_free_disk_mb: int = Field(
        500, ge=0, description="below this free space in data_dir, C-STORE answers 0xA700 (out of resources)"
    )
    receivers: int = Field(1, ge=1, le=16, description="receiver processes sharing the port; new associations go to the least busy (node/listener.py)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_pdu_kb: int = Field(4096, ge=64, le=1048576, description="advertised Maximum Length; longer PDUs end the association")
    max_dataset_mb: int = Field(1024, ge=1, description="a larger C-STORE dataset answers 0xA701 (node/limits.py)")
    max_element_mb: int = Field(1024, ge=1, description="a longer declared element length answers 0xC004")
    max_inflated_mb: int = Field(1024, ge=1, description="a deflated dataset inflating beyond this answers 0xC005")
    tls: TLSSettings | None = None

    _ae = field_validator("ae_title")(_check_ae_title)

    @model_validator(mode="after")
    def _tls_port_differs(self) -> "NodeSettings":
        if self.tls is not None and self.tls.port == self.port:
            raise ValueError("node.tls.port: must differ from node.port (plain and TLS listen side by side)")
        return self


class CompletionSettings(_Strict):
    """``[completion]``: when a series counts as complete (all seconds)."""

    grace_s: float = Field(1.0, ge=0, description="after the sending association is released")
    quiet_s: float = Field(60.0, gt=0, description="with no new instance, whatever the association does")
    check_interval_s: float = Field(0.25, gt=0, description="how often completion is evaluated")


class WorkerSettings(_Strict):
    """``[workers]``: processes that run pipelines, separate from the receiver."""

    count: int = Field(1, ge=0, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(1, ge=1, le=256)
    lease_s: float = Field(600.0, gt=0, description="a job held longer by a silent worker is reclaimed")
    max_attempts: int = Field(3, ge=1, le=100)
    poll_interval_s: float = Field(0.2, gt=0)


class DeliverySettings(_Strict):
    """``[delivery]``: sending results on, with exponential backoff between failed tries (seconds)."""

    first_retry_s: float = Field(5.0, gt=0)
    max_retry_s: float = Field(300.0, gt=0)
    give_up_after_s: float = Field(86400.0, gt=0, description="then the delivery is dead (radnode retry revives it)")
    check_interval_s: float = Field(0.25, gt=0)
    lease_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(30.0, gt=0, description="ACSE, DIMSE and network timeout towards destinations")


class PeerSettings(_Strict):
    """``[[peers]]``: an AE allowed to associate; ``host`` (optional) pins its address."""

    ae_title: AETitle
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535, description="where results go back for send_to = 'sender'")

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("host")
    @classmethod
    def _host_is_address_or_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9.-]{1,253}$", value):
                raise ValueError("host must be an IP address or a host name") from None
        return value


class DestinationSettings(_Strict):
    """``[[destinations]]``: a Storage SCP (usually the PACS) that results are sent to."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    max_associations: int = Field(2, ge=1, le=64)
    tls: bool = Field(False, description="DICOM TLS (PS3.15 B.1) towards this destination")
    tls_ca: Path | None = Field(None, description="CA file that signed the destination's certificate; empty: system CAs")
    tls_certificate: Path | None = Field(None, description="our client certificate, when the destination asks for one")
    tls_private_key: Path | None = None
    tls_verify_hostname: bool = True

    _ae = field_validator("ae_title")(_check_ae_title)


class NumericRange(_Strict):
    """A closed numeric interval for a route condition; either end may be open (None)."""

    min: float | None = None
    max: float | None = None


class RouteSettings(_Strict):
    """``[[routes]]``: ordered; the first matching route wins unless it sets ``continue = true``.

    ``when`` maps a DICOM keyword of the series to a regular expression (full match, case-
    insensitive) or to a ``{min, max}`` range for numeric attributes.
    """

    name: str = Field(min_length=1)
    pipeline: str = Field(min_length=1)
    when: dict[str, str | NumericRange] = Field(default_factory=dict)
    send_to: list[str] = Field(default_factory=list)
    continue_: bool = Field(False, alias="continue")
    rerun_on_late: bool = Field(False, description="re-run when a late instance reopens a completed series")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("when")
    @classmethod
    def _keywords_and_patterns(cls, value: dict[str, str | NumericRange]) -> dict[str, str | NumericRange]:
        from pydicom.datadict import tag_for_keyword

        for keyword, condition in value.items():
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{keyword!r} is not a DICOM keyword (e.g. Modality, SeriesDescription)")
            if isinstance(condition, str):
                try:
                    re.compile(condition)
                except re.error as exc:
                    raise ValueError(f"{keyword}: invalid regular expression: {exc}") from None
        return value


class WebSettings(_Strict):
    """``[web]``: status page, JSON API and /metrics (node/web.py), in a process of its own.

    Every route but ``/healthz`` needs the token (``Authorization: Bearer <token>``, or the cookie
    that ``/login`` sets). ``token`` empty: the environment variable ``RADNODE_WEB_TOKEN`` is used;
    with neither, the web process answers 503 on every route but ``/healthz``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    token: str = Field("", description="empty: $RADNODE_WEB_TOKEN; keep it out of version control")
    refresh_s: int = Field(10, ge=1, le=3600, description="the status page reloads itself this often")


class RetentionSettings(_Strict):
    """``[retention]``: deleting spool and outbox files of studies that are fully processed and delivered.

    Never touched: a study with a series still receiving, a job not finished (queued, running,
    failed) or a delivery not done."""

    max_age_days: float = Field(30.0, ge=0, description="0: never by age; age counts from the last activity")
    disk_watermark_percent: float = Field(
        90.0, gt=0, le=100, description="above this much disk use in data_dir, the oldest finished studies go first"
    )
    check_interval_s: float = Field(300.0, gt=0)


class Config(_Strict):
    """The whole config.toml."""

    node: NodeSettings = NodeSettings()
    completion: CompletionSettings = CompletionSettings()
    workers: WorkerSettings = WorkerSettings()
    delivery: DeliverySettings = DeliverySettings()
    web: WebSettings = WebSettings()
    retention: RetentionSettings = RetentionSettings()
    peers: list[PeerSettings] = Field(default_factory=list)
    destinations: list[DestinationSettings] = Field(default_factory=list)
    routes: list[RouteSettings] = Field(default_factory=list)
    pipelines: dict[str, PipelineSettings] = Field(
        default_factory=lambda: {"brain-extraction": BrainExtractionSettings()}
    )

    @field_validator("pipelines")
    @classmethod
    def _builtin_always_available(cls, value: dict[str, PipelineSettings]) -> dict[str, PipelineSettings]:
        return {"brain-extraction": BrainExtractionSettings(), **value}

    @model_validator(mode="after")
    def _references_resolve(self) -> "Config":
        names = [d.name for d in self.destinations]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise ValueError(f"destinations: the name {name!r} is used twice")
        for index, route in enumerate(self.routes):
            if route.pipeline not in self.pipelines:
                raise ValueError(
                    f"routes[{index}].pipeline: {route.pipeline!r} is not a configured pipeline "
                    f"(known: {', '.join(sorted(self.pipelines)) or 'none'})"
                )
            for target in route.send_to:
                if target != "sender" and target not in names:
                    raise ValueError(
                        f"routes[{index}].send_to: {target!r} is neither 'sender' nor a destination name "
                        f"(known: {', '.join(names) or 'none'})"
                    )
        return self

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL: ``[node] database_url``, or an SQLite file in data_dir when empty."""
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{(self.node.data_dir / 'radnode.sqlite3').as_posix()}"


def _location(loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic error location into a TOML key path such as ``routes[0].when``."""
    if len(loc) > 2 and loc[0] == "pipelines":
        loc = loc[:2] + loc[3:]  # drop the discriminator tag ("bundle") that pydantic inserts
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _resolve_paths(config: Config, base: Path) -> Config:
    data_dir = config.node.data_dir if config.node.data_dir.is_absolute() else base / config.node.data_dir
    pipelines = {}
    for name, settings in config.pipelines.items():
        path = getattr(settings, "path", None)
        if path is not None and not path.is_absolute():
            settings = settings.model_copy(update={"path": (base / path).resolve()})
        pipelines[name] = settings
    node_update: dict[str, object] = {"data_dir": data_dir.resolve()}
    if config.node.tls is not None:
        node_update["tls"] = _resolve_files(config.node.tls, base)
    return config.model_copy(
        update={"node": config.node.model_copy(update=node_update), "pipelines": pipelines,
                "destinations": [_resolve_files(d, base) for d in config.destinations]}
    )


def _resolve_files(settings: _Strict, base: Path) -> _Strict:
    """Resolve the relative Path fields of a table (TLS files) against the config's folder."""
    update = {name: (base / value).resolve() for name, value in settings if isinstance(value, Path)
              and not value.is_absolute()}
    return settings.model_copy(update=update) if update else settings


def _missing_files(config: Config) -> list[tuple[str, str]]:
    """Key paths of TLS files that cannot be read (checked after paths are resolved)."""
    tables: list[tuple[str, _Strict]] = [(f"destinations[{i}]", d) for i, d in enumerate(config.destinations)]
    if config.node.tls is not None:
        tables.insert(0, ("node.tls", config.node.tls))
    return [(f"{prefix}.{name}", f"file not found: {value}") for prefix, table in tables for name, value in table
            if isinstance(value, Path) and not value.is_file()]


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Parse TOML text into a Config; raise ConfigError naming every offending key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("(syntax)", str(exc))]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = _location(error["loc"])
            reason = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                reason = "unknown key (check its spelling against config.toml)"
            elif path == "(top level)" and ": " in reason:
                path, reason = reason.split(": ", 1)  # cross-reference checks name their own key
            problems.append((path, reason))
        raise ConfigError(source, problems) from None
    config = _resolve_paths(config, base_dir or Path.cwd())
    missing = _missing_files(config)
    if missing:
        raise ConfigError(source, missing)
    return config


def load_config(path: Path) -> Config:
    """Read and validate a config file; relative paths in it are relative to its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"cannot read: {exc.strerror}")]) from None
    return parse_config(text, source=str(path), base_dir=path.resolve().parent)
