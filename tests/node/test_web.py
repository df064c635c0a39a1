"""The web process of a real `radnode serve`: token on every route but /healthz, the study just sent
in /api/studies and on the status page (headless Chromium), /metrics counting exactly what was sent."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.support.dcmtk import storescu
from tests.support.network import free_port
from tests.support.node_process import RadnodeProcess, start_node
from tests.support.series import write_series

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "web"
TOKEN = "test-token-7f3a9c"
SENT = 7

GET_ROUTES = ("/", "/metrics", "/api/studies", "/api/jobs", "/api/deliveries", "/api/config",
              "/api/jobs?state=failed", "/api/deliveries?state=dead&limit=5")
POST_ROUTES = ("/api/jobs/retry", "/api/jobs/1/retry", "/api/deliveries/retry", "/api/deliveries/1/retry")


@dataclass
class WebNode:
    node: RadnodeProcess
    url: str
    study_uid: str


def wait_for_web(node: RadnodeProcess, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the web process did not answer /healthz in {timeout} s\n{node.log()[-3000:]}")


@pytest.fixture(scope="module")
def web_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    workdir = tmp_path_factory.mktemp("web")
    web_port = free_port()
    node = start_node(workdir / "node", extra=f'[web]\nport = {web_port}\ntoken = "{TOKEN}"\nrefresh_s = 30\n')
    try:
        url = f"http://127.0.0.1:{web_port}"
        wait_for_web(node, url)
        files = write_series(workdir / "series", SENT, modality="CT", description="WEB <b>TEST</b>",
                             patient_name="Webpatient^Gamma", patient_id="PID-WEB-0042")
        outcome = storescu(node.port, files)
        assert len(outcome.acknowledged) == SENT, outcome.output
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        yield WebNode(node, url, study_uid)
    finally:
        node.kill9()


def test_without_the_token_every_route_but_healthz_answers_401(web_node: WebNode) -> None:
    answers = {}
    for route in GET_ROUTES:
        answers[f"GET {route}"] = httpx.get(web_node.url + route).status_code
        answers[f"GET {route} (wrong token)"] = httpx.get(
            web_node.url + route, headers={"Authorization": "Bearer not-the-token"}).status_code
    for route in POST_ROUTES:
        answers[f"POST {route}"] = httpx.post(web_node.url + route).status_code
    assert answers == {key: 401 for key in answers}
    assert httpx.get(web_node.url + "/healthz").status_code == 200


def test_api_studies_lists_the_study_just_sent(web_node: WebNode) -> None:
    response = httpx.get(f"{web_node.url}/api/studies?limit=10",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    studies = {s["study_instance_uid"]: s for s in response.json()["items"]}
    assert web_node.study_uid in studies
    assert studies[web_node.study_uid]["instance_count"] == SENT


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics:\n{text}"
    return float(match.group(1))


def test_metrics_count_exactly_the_instances_sent(web_node: WebNode) -> None:
    response = httpx.get(f"{web_node.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    text = response.text
    assert _sample(text, "radnode_instances_received_total") == SENT
    assert _sample(text, "radnode_cstore_duration_seconds_count") == SENT
    assert _sample(text, "radnode_associations_total", '{outcome="released"}') == 1
    names = set(re.findall(r"^(radnode_\w+?)(?:_total|_count|_sum|_bucket)?[{ ]", text, re.MULTILINE))
    assert {"radnode_received_bytes", "radnode_jobs", "radnode_deliveries", "radnode_queue_oldest_age_seconds",
            "radnode_disk_free_bytes"} <= names
    assert all(n.startswith("radnode_") for n in re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_headless_chromium_loads_the_status_page_and_finds_the_study(web_node: WebNode) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    login = f"{web_node.url}/login?token={TOKEN}"  # sets the cookie, then redirects to the page
    dom = _chromium("--dump-dom", login)
    assert dom.returncode == 0, dom.stderr
    assert web_node.study_uid in dom.stdout
    assert "<b>TEST</b>" not in dom.stdout  # DICOM strings are escaped (the description is not shown at all)
    screenshot = ARTIFACTS / "status.png"
    screenshot.unlink(missing_ok=True)
    shot = _chromium("--window-size=1400,900", f"--screenshot={screenshot}", login)
    assert shot.returncode == 0, shot.stderr
    assert screenshot.stat().st_size > 10_000
