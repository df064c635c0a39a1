"""config.toml validation: every mistake names its key; the shipped config is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[2]


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_shipped_config_is_valid() -> None:
    result = _check(REPO / "config.toml")

    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_misspelled_key_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text((REPO / "config.toml").read_text().replace("ae_title = \"RADNODE\"", "ae_tittle = \"RADNODE\""))

    result = _check(config)

    assert result.returncode != 0
    assert "node.ae_tittle" in result.stderr
    assert "unknown key" in result.stderr


def test_serve_refuses_to_start_with_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[node]\nport = 70000\n")

    result = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert "node.port" in result.stderr


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[routes]]\nname = "r"\npipeline = "nope"', "routes[0].pipeline"),
        ('[[routes]]\nname = "r"\npipeline = "brain-extraction"\nsend_to = ["pacs"]', "routes[0].send_to"),
        ('[[routes]]\nname = "r"\npipeline = "brain-extraction"\nwhen = { Modalty = "MR" }', "routes[0].when"),
        ('[[routes]]\nname = "r"\npipeline = "brain-extraction"\nwhen = { Modality = "(" }', "routes[0].when"),
        ('[pipelines.x]\nkind = "bundle"\npaht = "m"', "pipelines.x.paht"),
        ('[[peers]]\nae_title = "A\\\\B"', "peers[0].ae_title"),
        ('[[destinations]]\nname = "p"\nae_title = "PACS"\nhost = "h"\nport = 104\n'
         '[[destinations]]\nname = "p"\nae_title = "PACS2"\nhost = "h"\nport = 105', "destinations"),
    ],
)
def test_invalid_value_is_reported_with_its_key_path(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text)

    assert any(path.startswith(key) for path, _reason in error.value.problems), error.value.problems


def test_builtin_brain_extraction_pipeline_is_always_available() -> None:
    config = parse_config('[pipelines.mine]\nkind = "bundle"\npath = "models/mine"\n', base_dir=Path("/srv"))

    assert set(config.pipelines) == {"brain-extraction", "mine"}
    assert config.pipelines["mine"].path == Path("/srv/models/mine")


def test_empty_database_url_means_sqlite_in_data_dir() -> None:
    config = parse_config('[node]\ndata_dir = "d"\n', base_dir=Path("/srv"))

    assert config.database_url == "sqlite:////srv/d/radnode.sqlite3"
