"""The admin's window on the node: status page, JSON API and /metrics (FastAPI, run by uvicorn).

Runs in a process of its own (spawned by the supervisor for ``--role all`` and ``receiver``) and
only reads the database, except for the retry endpoints, which re-queue failed jobs and dead
deliveries exactly as ``radnode retry`` does.

Access (``[web]`` in config.toml):

- ``GET /healthz`` is open (200 when the database answers, 503 otherwise) for load balancers.
- Everything else needs the token of ``[web] token`` or, when that is empty, of the environment
  variable ``RADNODE_WEB_TOKEN``: as ``Authorization: Bearer <token>`` (API clients, Prometheus'
  ``authorization`` setting) or as the ``radnode_token`` cookie that ``/login`` sets for a browser
  (``POST /login`` with a form field ``token``, or ``GET /login?token=...`` for a bookmark or a
  headless browser). Without it: 401. With no token configured at all: 503 and a message that
  says so -- the node never serves its data unauthenticated.
- The cookie is HttpOnly and SameSite=Strict, and a POST authorised by the cookie must come from
  the page's own origin, so another site cannot press the retry buttons.

The page is plain server-rendered HTML (no script, no external asset), reloads itself every
``[web] refresh_s`` seconds, and escapes every value it shows (DICOM strings, error texts).
"""

from __future__ import annotations

import hmac
import html
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from node import metrics
from node.audit import AuditLog
from node.config import Config, WebSettings
from node.stop_signal import StopSignal
from storage.deliveries import DeliveryQueue, retry_failed_jobs
from storage.status import list_deliveries, list_jobs, list_studies, queue_counts

log = logging.getLogger("radnode.web")

TOKEN_ENV = "RADNODE_WEB_TOKEN"
COOKIE = "radnode_token"
MASK = "***"
_SECRET_WORDS = ("token", "password", "secret", "passphrase")

JobState = Literal["queued", "running", "succeeded", "failed", "refused"]
DeliveryState = Literal["pending", "sending", "done", "dead"]

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def resolve_token(settings: WebSettings) -> str:
    """``[web] token``, else ``$RADNODE_WEB_TOKEN``, else "" (then the API refuses to serve)."""
    return settings.token or os.environ.get(TOKEN_ENV, "")


def masked_config(config: Config) -> dict[str, Any]:
    """The running config as JSON, with tokens, passwords and the database password replaced by ***."""

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: MASK if v and any(w in k.lower() for w in _SECRET_WORDS) else mask(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value

    data = mask(config.model_dump(mode="json", by_alias=True))
    url = config.node.database_url
    if url:
        try:
            parsed = make_url(url)
            data["node"]["database_url"] = parsed.render_as_string(hide_password=True)  # password -> ***
        except Exception:
            data["node"]["database_url"] = MASK  # unparsable: show nothing rather than a secret
    return data


# -- HTML ------------------------------------------------------------------------------------------

def _e(value: object) -> str:
    """Escape anything for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: float | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))


def _states(counts: dict[str, int]) -> str:
    return ", ".join(f"{_e(state)} {count}" for state, count in sorted(counts.items())) or "-"


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#1d1d1f;max-width:1400px}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #ddd;
vertical-align:top}th{background:#f3f3f5}td.uid{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.bad{color:#b00020}.ok{color:#1b7f3b}.muted{color:#666}.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:12em}form{display:inline;margin:0}
button{font:inherit;padding:.1em .6em}
"""


def _page(title: str, body: str, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>")


def _login_form(message: str) -> str:
    return _page("radnode: sign in", f"""<h1>radnode</h1><p class="bad">{_e(message)}</p>
<form method="post" action="/login"><label>Token <input type="password" name="token" autocomplete="off"
autofocus></label> <button type="submit">Sign in</button></form>
<p class="muted">The token is <code>[web] token</code> in config.toml or the environment variable
<code>{TOKEN_ENV}</code> of <code>radnode serve</code>.</p>""")


def _none(columns: int) -> str:
    return f'<tr><td colspan="{columns}" class="muted">none yet</td></tr>'


def _retry_button(action: str, label: str = "Retry") -> str:
    return f'<form method="post" action="{_e(action)}"><button type="submit">{_e(label)}</button></form>'


def render_status_page(config: Config, engine: Engine, offset: int = 0, limit: int = 50) -> str:
    counts = queue_counts(engine, time.time())
    studies = list_studies(engine, limit=limit, offset=offset)
    failed = list_jobs(engine, state="failed", limit=100)
    dead = list_deliveries(engine, state="dead", limit=100)
    jobs = list_jobs(engine, limit=20)
    deliveries = list_deliveries(engine, limit=20)
    disk = shutil.disk_usage(config.node.data_dir)
    parts = [f"<h1>radnode {_e(config.node.ae_title)}</h1>"
             f'<p class="muted">{_e(config.node.host)}:{config.node.port} &middot; page generated '
             f"{_when(time.time())} UTC &middot; reloads every {config.web.refresh_s} s</p>"]
    parts.append('<div class="cards">'
                 f'<div class="card"><b>Studies</b><br>{studies.total}</div>'
                 f'<div class="card"><b>Jobs</b><br>{_states({k: v for k, v in counts.jobs.items() if v})}</div>'
                 f'<div class="card"><b>Deliveries</b><br>'
                 f'{_states({k: v for k, v in counts.deliveries.items() if v})}</div>'
                 f'<div class="card"><b>Oldest waiting</b><br>job {counts.oldest_queued_job_s:.0f} s, '
                 f'delivery {counts.oldest_pending_delivery_s:.0f} s</div>'
                 f'<div class="card"><b>Free disk</b><br>{disk.free / 2**30:.1f} GiB of {disk.total / 2**30:.1f}'
                 f' GiB</div></div>')

    parts.append("<h2>Needs attention</h2>")
    if not failed.items and not dead.items:
        parts.append('<p class="ok">No failed jobs and no dead deliveries.</p>')
    else:
        rows = [f'<tr><td>job {j["id"]}</td><td class="uid">{_e(j["series_instance_uid"])}</td>'
                f'<td>{_e(j["pipeline"])}</td><td class="bad">{_e(j["last_error"])}</td>'
                f'<td>{_retry_button("/api/jobs/%d/retry" % j["id"])}</td></tr>' for j in failed.items]
        rows += [f'<tr><td>delivery {d["id"]}</td><td class="uid">{_e(d["study_instance_uid"])}</td>'
                 f'<td>to {_e(d["destination"])} ({_e(d["ae_title"])}@{_e(d["host"])}:{_e(d["port"])})</td>'
                 f'<td class="bad">{_e(d["last_error"])}</td>'
                 f'<td>{_retry_button("/api/deliveries/%d/retry" % d["id"])}</td></tr>' for d in dead.items]
        parts.append("<table><tr><th>Item</th><th>UID</th><th>What</th><th>Reason</th><th></th></tr>"
                     + "".join(rows) + "</table><p>"
                     + _retry_button("/api/jobs/retry", "Retry all failed jobs") + " "
                     + _retry_button("/api/deliveries/retry", "Retry all dead deliveries") + "</p>")

    parts.append(f"<h2>Studies ({studies.offset + 1 if studies.items else 0}-"
                 f"{studies.offset + len(studies.items)} of {studies.total})</h2>")
    rows = []
    for study in studies.items:
        series = study["series"]
        modalities = ", ".join(sorted({str(s["modality"]) for s in series}))  # type: ignore[union-attr]
        notes = "; ".join(str(s["routing_note"]) for s in series if s["routing_note"])  # type: ignore[union-attr]
        rows.append(
            f'<tr><td class="uid">{_e(study["study_instance_uid"])}</td><td>{_e(study["state"])}</td>'
            f"<td>{_e(modalities)}</td><td>{len(series)}</td><td>{_e(study['instance_count'])}</td>"  # type: ignore[arg-type]
            f"<td>{_when(study['first_received_at'])}</td><td>{_states(study['jobs'])}</td>"  # type: ignore[arg-type]
            f"<td>{_states(study['deliveries'])}</td><td>{_e(notes)}</td>"  # type: ignore[arg-type]
            f"<td>{_when(study['purged_at']) if study['purged_at'] else ''}</td></tr>")  # type: ignore[arg-type]
    parts.append("<table><tr><th>Study Instance UID</th><th>State</th><th>Modality</th><th>Series</th>"
                 "<th>Instances</th><th>First received (UTC)</th><th>Jobs</th><th>Deliveries</th>"
                 "<th>Routing</th><th>Files purged</th></tr>" + ("".join(rows) or _none(10)) + "</table>")
    links = []
    if offset > 0:
        links.append(f'<a href="/?offset={max(0, offset - limit)}">newer</a>')
    if offset + limit < studies.total:
        links.append(f'<a href="/?offset={offset + limit}">older</a>')
    if links:
        parts.append("<p>" + " &middot; ".join(links) + "</p>")

    parts.append("<h2>Recent jobs</h2><table><tr><th>Id</th><th>Series Instance UID</th><th>Pipeline</th>"
                 "<th>State</th><th>Attempts</th><th>Seconds</th><th>Finished (UTC)</th><th>Last error</th></tr>")
    for j in jobs.items:
        seconds = (j["timings"] or {}).get("total")  # type: ignore[union-attr]
        parts.append(f'<tr><td>{j["id"]}</td><td class="uid">{_e(j["series_instance_uid"])}</td>'
                     f'<td>{_e(j["pipeline"])}</td><td>{_e(j["state"])}</td><td>{j["attempts"]}</td>'
                     f'<td>{"" if seconds is None else f"{seconds:.1f}"}</td><td>{_when(j["finished_at"])}</td>'  # type: ignore[arg-type]
                     f'<td class="bad">{_e(j["last_error"] or "")}</td></tr>')
    parts.append(("" if jobs.items else _none(8)) + "</table>")
    parts.append("<h2>Recent deliveries</h2><table><tr><th>Id</th><th>Job</th><th>Destination</th><th>State</th>"
                 "<th>Attempts</th><th>Delivered (UTC)</th><th>Last error</th></tr>")
    for d in deliveries.items:
        parts.append(f'<tr><td>{d["id"]}</td><td>{d["job_id"]}</td><td>{_e(d["destination"])} '
                     f'({_e(d["ae_title"])})</td><td>{_e(d["state"])}</td><td>{d["attempts"]}</td>'
                     f'<td>{_when(d["delivered_at"])}</td><td class="bad">{_e(d["last_error"] or "")}</td></tr>')
    parts.append(("" if deliveries.items else _none(7)) + '</table><p class="muted">JSON: <a href="/api/studies">/api/studies</a>, '
                 '<a href="/api/jobs">/api/jobs</a>, <a href="/api/deliveries">/api/deliveries</a>, '
                 '<a href="/api/config">/api/config</a>, <a href="/metrics">/metrics</a> &middot; '
                 '<form method="post" action="/logout"><button type="submit">Sign out</button></form></p>')
    return _page(f"radnode {config.node.ae_title}", "".join(parts), refresh_s=config.web.refresh_s)


# -- the application -------------------------------------------------------------------------------

def create_app(config: Config, engine: Engine, token: str, audit: AuditLog | None = None) -> FastAPI:
    """The FastAPI application; ``token`` "" makes every route but /healthz answer 503."""
    app = FastAPI(title="radnode", docs_url=None, redoc_url=None, openapi_url=None)

    def supplied_token(request: Request) -> tuple[str | None, bool]:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), False
        cookie = request.cookies.get(COOKIE)
        return (cookie, True) if cookie else (None, False)

    def valid(candidate: str | None) -> bool:
        return bool(token) and candidate is not None and hmac.compare_digest(candidate.encode(), token.encode())

    def authorised(request: Request) -> None:
        if not token:
            raise HTTPException(503, f"the web API is disabled because no token is configured: set [web] token "
                                     f"in config.toml or the environment variable {TOKEN_ENV}")
        candidate, by_cookie = supplied_token(request)
        if not valid(candidate):
            raise HTTPException(401, "a valid token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        if by_cookie and request.method == "POST":
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                raise HTTPException(403, "cross-origin request refused")

    def admin_action(request: Request, action: str, count: int, ids: list[int] | None) -> None:
        client = request.client.host if request.client else ""
        log.info("web: %s re-queued %d (ids %s) for %s", action, count, ids or "all", client)
        if audit is not None:
            audit.record("admin", action=action, ids=ids or "all", count=count, address=client, via="web")

    def answer(request: Request, payload: dict[str, Any]) -> Response:
        """JSON for API clients; back to the page for the page's own forms."""
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return RedirectResponse("/", status_code=303)
        return JSONResponse(payload)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[..., Any]) -> Response:
        response: Response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "database unavailable", "error": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    def _login_response(candidate: str | None) -> Response:
        if not token:
            return HTMLResponse(_login_form(f"The status page is disabled: no token is configured ([web] token "
                                            f"or {TOKEN_ENV})."), status_code=503)
        if not valid(candidate):
            return HTMLResponse(_login_form("Wrong token." if candidate else "Sign in with the node's web token."),
                                status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/login")
    def login_get(token_: str | None = Query(None, alias="token")) -> Response:
        return _login_response(token_)

    @app.post("/login")
    async def login_post(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        return _login_response((form.get("token") or [None])[0])

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse)
    def status_page(request: Request, offset: int = Query(0, ge=0)) -> Response:
        try:
            authorised(request)
        except HTTPException as exc:
            if exc.status_code == 503:
                return HTMLResponse(_login_form(str(exc.detail)), status_code=503)
            return HTMLResponse(_login_form("Sign in with the node's web token."), status_code=exc.status_code)
        return HTMLResponse(render_status_page(config, engine, offset=offset))

    # Endpoints that touch the database are plain ``def``: FastAPI runs them in its thread pool, so a
    # slow query never blocks the event loop.
    guarded = [Depends(authorised)]

    @app.get("/api/studies", dependencies=guarded)
    def studies(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, object]:
        return list_studies(engine, limit=limit, offset=offset).as_dict()

    @app.get("/api/jobs", dependencies=guarded)
    def jobs(state: JobState | None = None, pipeline: str | None = None,
             limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, object]:
        return list_jobs(engine, state=state, pipeline=pipeline, limit=limit, offset=offset).as_dict()

    @app.get("/api/deliveries", dependencies=guarded)
    def deliveries(state: DeliveryState | None = None, destination: str | None = None,
                   limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, object]:
        return list_deliveries(engine, state=state, destination=destination, limit=limit, offset=offset).as_dict()

    @app.post("/api/jobs/retry", dependencies=guarded)
    def retry_jobs(request: Request) -> Response:
        count = retry_failed_jobs(engine, time.time())
        admin_action(request, "retry-jobs", count, None)
        return answer(request, {"requeued": count})

    @app.post("/api/jobs/{job_id}/retry", dependencies=guarded)
    def retry_job(job_id: int, request: Request) -> Response:
        count = retry_failed_jobs(engine, time.time(), [job_id])
        admin_action(request, "retry-jobs", count, [job_id])
        return answer(request, {"requeued": count})

    @app.post("/api/deliveries/retry", dependencies=guarded)
    def retry_deliveries(request: Request) -> Response:
        count = DeliveryQueue(engine, config.delivery.give_up_after_s).retry(time.time())
        admin_action(request, "retry-deliveries", count, None)
        return answer(request, {"requeued": count})

    @app.post("/api/deliveries/{delivery_id}/retry", dependencies=guarded)
    def retry_delivery(delivery_id: int, request: Request) -> Response:
        count = DeliveryQueue(engine, config.delivery.give_up_after_s).retry(time.time(), [delivery_id])
        admin_action(request, "retry-deliveries", count, [delivery_id])
        return answer(request, {"requeued": count})

    @app.get("/api/config", dependencies=guarded)
    def running_config() -> dict[str, Any]:
        return masked_config(config)

    @app.get("/metrics", dependencies=guarded)
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render(engine, config.node.data_dir)
        return Response(body, media_type=content_type)

    return app


OPEN_ROUTES = frozenset({"/healthz", "/login", "/logout"})  # everything else needs the token


def _cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (e.g. "Address already in use"), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def run_web(config: Config, stop: StopSignal) -> None:
    """Entry point of the web process (multiprocessing, spawn): uvicorn until ``stop`` is set."""
    import uvicorn

    from node.logs import configure_logging
    from storage.database import create_database_engine

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.node.log_level, config.node.data_dir)
    parent = os.getppid()
    token = resolve_token(config.web)
    if not token:
        log.error("no web token configured ([web] token or %s): the status page, API and /metrics answer 503 "
                  "until one is set; /healthz stays open", TOKEN_ENV)
    problem = _cannot_listen(config.web.host, config.web.port)
    if problem:  # stay up without serving: a restart loop would only repeat the same error
        log.error("web: cannot listen on %s:%d (%s); the status page, API and /metrics are off until radnode "
                  "restarts with a free [web] port", config.web.host, config.web.port, problem)
        while not stop.wait(0.5):
            if os.getppid() != parent:
                os._exit(1)
        return
    engine = create_database_engine(config.database_url)
    app = create_app(config, engine, token, AuditLog(config.node.data_dir))
    # access_log off: request lines would carry query strings (GET /login?token=...) into the logs
    server = uvicorn.Server(uvicorn.Config(app, host=config.web.host, port=config.web.port, log_config=None,
                                           access_log=False, lifespan="off", server_header=False))

    # uvicorn serves from a thread: it then installs no signal handlers, and the supervisor alone
    # decides (through ``stop``) when this process ends, as for receivers and workers.
    thread = threading.Thread(target=server.run, name="radnode-web", daemon=True)
    thread.start()
    log.info("web status page and API on http://%s:%d/ (pid %d)", config.web.host, config.web.port, os.getpid())
    while not stop.wait(0.5):
        if os.getppid() != parent:
            log.error("supervisor is gone; web process exits")
            os._exit(1)
        if not thread.is_alive():
            log.error("the web server stopped unexpectedly; the supervisor restarts this process")
            engine.dispose()
            raise SystemExit(1)
    server.should_exit = True
    thread.join(timeout=10)
    engine.dispose()
    log.info("web process stopped")
