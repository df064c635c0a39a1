"""A PACS and a viewer on loopback for tests/viewer: Orthanc with its DICOMweb plugin, and OHIF's
prebuilt ``dist/`` served by a small HTTP server that also proxies ``/dicom-web/`` to Orthanc.

One origin for the viewer and DICOMweb: Orthanc 1.10 sends no CORS headers, and the DICOMweb plugin
builds BulkDataURIs from the request's Host header, which the proxy passes through, so every URL
the viewer follows stays on this server.
"""

from __future__ import annotations

import contextlib
import http.client
import posixpath
import shutil
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.network import free_port
from tests.support.orthanc import Orthanc, dicomweb_plugin, orthanc_binary
from tests.support.orthanc import running_orthanc as shared_orthanc

HERE = Path(__file__).resolve().parent
SETUP_HINT = "run tests/viewer/setup_viewer.sh (scripts/bootstrap.sh calls it)"
CHROMIUM = Path("/usr/bin/chromium")
OHIF_DIST = HERE / "node_modules" / "@ohif" / "app" / "dist"
PLAYWRIGHT_CORE = HERE / "node_modules" / "playwright-core" / "package.json"


def missing_prerequisites() -> list[str]:
    """What setup_viewer.sh installs and is not there; empty when the harness can run."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if orthanc_binary() is None:
        missing.append("Orthanc (Debian package orthanc)")
    if dicomweb_plugin() is None:
        missing.append("the Orthanc DICOMweb plugin (Debian package orthanc-dicomweb)")
    if shutil.which("node") is None:
        missing.append("node")
    if not (OHIF_DIST / "index.html").is_file():
        missing.append(f"{OHIF_DIST} (npm package @ohif/app)")
    if not PLAYWRIGHT_CORE.is_file():
        missing.append("tests/viewer/node_modules/playwright-core (npm package playwright-core)")
    return missing


@contextlib.contextmanager
def running_orthanc(work_dir: Path) -> Iterator[Orthanc]:
    """Orthanc with only its HTTP API (DICOMweb on) on loopback: the test uploads through REST."""
    with shared_orthanc(work_dir, aet="VIEWERTEST", dicom_port=0, dicomweb=True) as orthanc:
        plugins = orthanc.get_json("/plugins")
        if "dicom-web" not in plugins:
            raise RuntimeError(f"Orthanc runs without its DICOMweb plugin: {plugins}")
        yield orthanc


# --------------------------------------------------------------------------------------------------
# OHIF
# --------------------------------------------------------------------------------------------------


def app_config_js(origin: str) -> str:
    """OHIF's runtime configuration: one DICOMweb data source on this origin, no study list, no
    investigational-use dialog (it would cover the viewport)."""
    root = f"{origin}/dicom-web"
    return f"""/** radnode tests/viewer: OHIF over Orthanc's DICOMweb plugin, same origin. */
window.config = {{
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {{}},
  showStudyList: false,
  investigationalUseDialog: {{ option: 'never' }},
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {{
        friendlyName: 'Orthanc (radnode viewer test)',
        name: 'orthanc',
        wadoUriRoot: '{root}',
        qidoRoot: '{root}',
        wadoRoot: '{root}',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {{ enabled: true }},
      }},
    }},
  ],
}};
"""


_MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate"}


@dataclass
class ViewerServer:
    url: str
    errors: list[str]


@contextlib.contextmanager
def serving_ohif(dist: Path, orthanc_port: int) -> Iterator[ViewerServer]:
    """Serve OHIF's ``dist/`` (with our ``app-config.js``, SPA fallback to ``index.html``) and proxy
    ``/dicom-web/`` to Orthanc, on one loopback port, from a daemon thread."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    config_bytes = app_config_js(origin).encode()
    dist = dist.resolve()
    errors: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet; failures are collected in `errors`
            pass

        def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _proxy(self) -> None:
            headers = {"Host": self.headers.get("Host", f"127.0.0.1:{port}")}
            for name in ("Accept", "Range", "If-None-Match"):
                if self.headers.get(name):
                    headers[name] = self.headers[name]
            body = None
            if self.command in ("POST", "PUT"):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers["Content-Type"] = self.headers.get("Content-Type", "application/octet-stream")
            connection = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=120)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                if response.status >= 400:
                    errors.append(f"{self.command} {self.path} -> {response.status}")
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            finally:
                connection.close()

        def _static(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == "/app-config.js":
                self._send(200, config_bytes, _MIME[".js"])
                return
            relative = posixpath.normpath(urllib.parse.unquote(path)).lstrip("/")
            target = (dist / relative).resolve() if relative not in ("", ".") else dist / "index.html"
            if not target.is_relative_to(dist) or not target.is_file():
                target = dist / "index.html"  # client-side routes (/viewer?...) are OHIF's
            self._send(200, target.read_bytes(), _MIME.get(target.suffix, "application/octet-stream"))

        def do_GET(self) -> None:
            try:
                if self.path.startswith("/dicom-web/"):
                    self._proxy()
                else:
                    self._static()
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as exc:  # noqa: BLE001 - reported by the test, never swallowed silently
                errors.append(f"{self.command} {self.path}: {exc!r}")
                raise

        do_HEAD = do_GET

        def do_POST(self) -> None:
            if self.path.startswith("/dicom-web/"):
                self._proxy()
            else:
                self._send(405, b"", "text/plain")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ohif-http", daemon=True)
    thread.start()
    try:
        yield ViewerServer(origin, errors)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
