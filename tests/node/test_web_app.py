"""The web application in-process on a real (SQLite) database: no token configured means 503, never
open data; secrets are masked in /api/config; hostile strings are escaped on the page; retry works."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from node.audit import AuditLog, read_audit
from node.config import parse_config
from node.web import OPEN_ROUTES, create_app, masked_config
from storage.database import create_database_engine, migrate
from storage.models import Delivery, Job, Series, Study

TOKEN = "unit-token-31415"
HOSTILE = "<script>alert('x')</script>"


def _app(tmp_path: Path, token: str = TOKEN, extra: str = ""):  # type: ignore[no-untyped-def]
    config = parse_config(f'[node]\ndata_dir = "{tmp_path.as_posix()}"\n[web]\ntoken = "{token}"\n{extra}',
                          base_dir=tmp_path)
    engine = create_database_engine(config.database_url)
    migrate(engine)
    return config, engine, TestClient(create_app(config, engine, token, AuditLog(tmp_path)))


def _hostile_rows(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    now = time.time()
    with Session(engine) as session:
        study = Study(study_instance_uid="1.2.3.4", first_received_at=now)
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_instance_uid="1.2.3.4.5", modality="<u>", state="complete",
                        first_received_at=now, last_instance_at=now, routing_note=HOSTILE, instance_count=1)
        session.add(series)
        session.flush()
        job = Job(series_id=series.id, pipeline="brain-extraction", route="r", state="failed", attempts=3,
                  last_error=HOSTILE, created_at=now)
        session.add(job)
        session.flush()
        delivery = Delivery(job_id=job.id, destination="pacs", ae_title="PACS", host="127.0.0.1", port=104,
                            state="dead", attempts=9, last_error=HOSTILE, created_at=now)
        session.add(delivery)
        session.commit()
        return job.id, delivery.id


def test_without_a_configured_token_the_api_refuses_to_serve(tmp_path: Path) -> None:
    _config, _engine, client = _app(tmp_path, token="")
    assert client.get("/healthz").status_code == 200
    for route in ("/api/studies", "/metrics", "/api/config"):
        response = client.get(route, headers={"Authorization": "Bearer anything"})
        assert response.status_code == 503
        assert "RADNODE_WEB_TOKEN" in response.json()["detail"]
    assert client.get("/").status_code == 503


def test_every_registered_route_but_the_open_ones_answers_401_without_the_token(tmp_path: Path) -> None:
    _config, _engine, client = _app(tmp_path)
    routes = [(method, route.path.replace("{job_id}", "1").replace("{delivery_id}", "1"))
              for route in client.app.routes if isinstance(route, APIRoute) and route.path not in OPEN_ROUTES
              for method in route.methods]
    assert len(routes) >= 10
    answers = {f"{method} {path}": client.request(method, path).status_code for method, path in routes}
    assert answers == {key: 401 for key in answers}


def test_api_config_masks_the_token_and_the_database_password(tmp_path: Path) -> None:
    _config, _engine, client = _app(tmp_path)
    config_with_pg = parse_config(
        f'[node]\ndata_dir = "{tmp_path.as_posix()}"\ndatabase_url = "postgresql://radnode:s3cretpw@db/radnode"\n'
        f'[web]\ntoken = "{TOKEN}"\n', base_dir=tmp_path)
    served = client.get("/api/config", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert served["web"]["token"] == "***" and TOKEN not in str(served)
    masked = masked_config(config_with_pg)
    assert "s3cretpw" not in str(masked)
    assert masked["node"]["database_url"] == "postgresql://radnode:***@db/radnode"


def test_the_status_page_escapes_every_string_and_lists_failed_items(tmp_path: Path) -> None:
    _config, engine, client = _app(tmp_path)
    job_id, delivery_id = _hostile_rows(engine)
    page = client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200
    assert HOSTILE not in page.text and "<u>" not in page.text and "&lt;u&gt;" in page.text
    assert "&lt;script&gt;" in page.text
    assert f"/api/jobs/{job_id}/retry" in page.text and f"/api/deliveries/{delivery_id}/retry" in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # no script allowed at all
    assert '<meta http-equiv="refresh"' in page.text


def test_login_sets_a_cookie_that_the_retry_buttons_use(tmp_path: Path) -> None:
    _config, engine, client = _app(tmp_path)
    job_id, delivery_id = _hostile_rows(engine)
    assert client.post("/login", data={"token": "wrong"}, follow_redirects=False).status_code == 401
    login = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert login.status_code == 303 and "samesite=strict" in login.headers["set-cookie"].lower()
    retried = client.post(f"/api/jobs/{job_id}/retry", headers={"Content-Type": "application/x-www-form-urlencoded"},
                          follow_redirects=False)  # what the page's form sends
    assert retried.status_code == 303
    assert client.get("/api/jobs?state=queued").json()["total"] == 1
    foreign = client.post("/api/deliveries/retry", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert client.get("/api/deliveries?state=dead").json()["items"][0]["id"] == delivery_id
    assert [r["action"] for r in read_audit(tmp_path)] == ["retry-jobs"]


@pytest.mark.parametrize("route", ["/api/jobs?state=bogus", "/api/studies?limit=0", "/api/deliveries?offset=-1"])
def test_bad_filters_are_refused_with_422(tmp_path: Path, route: str) -> None:
    _config, _engine, client = _app(tmp_path)
    assert client.get(route, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 422
