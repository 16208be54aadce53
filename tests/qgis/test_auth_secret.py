"""The API token lives only in QGIS's auth database: sent as `Authorization: Bearer …`, never logged,
never in a setting, a project file or an exception text."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scripts.scenes import generate_scene

# QGIS-facing: also run on QGIS 3.40 and the newest QGIS (scripts/test-qgis-versions)
pytestmark = pytest.mark.qgis_versions

TOKEN = "s3cr3t-T0KEN-for-floodmapper-tests"  # noqa: S105 (a test secret)


class _Recorder(BaseHTTPRequestHandler):
    """A proxy in front of vLLM that lists a model and then refuses the pooling request (401)."""

    seen: list[dict] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        _Recorder.seen.append({"path": self.path, "headers": dict(self.headers)})
        if self.path.startswith("/v1/models"):
            self._send(200, {"object": "list", "data": [{"id": "floodmapper-demo", "object": "model"}]})
        elif self.path.startswith("/version"):
            self._send(200, {"version": "0.32.0"})
        elif self.path.startswith("/health"):
            self._send(200, {})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        _Recorder.seen.append({"path": self.path, "headers": dict(self.headers)})
        self._send(401, {"error": {"message": "invalid token", "type": "Unauthorized", "code": 401}})


@pytest.fixture
def recorder():
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def token_authcfg(qgis_app):
    from qgis.core import QgsApplication, QgsAuthMethodConfig

    manager = QgsApplication.authManager()
    if not manager.masterPasswordIsSet():
        assert manager.setMasterPassword("floodmapper-test-master", True)
    config = QgsAuthMethodConfig("EsriToken")
    config.setName("floodmapper test token")
    config.setConfig("token", TOKEN)
    ok, config = manager.storeAuthenticationConfig(config)
    assert ok
    yield config.id()
    manager.removeAuthenticationConfig(config.id())


def test_token_sent_as_bearer_and_never_leaked(provider_loaded, recorder, token_authcfg, tmp_path):
    import processing
    from qgis.core import QgsApplication, QgsProcessingException, QgsProject, QgsSettings

    from floodmapper.plugin.toolbelt import settings as stored

    stored.set_value("authcfg", token_authcfg)
    logged: list[str] = []

    def collect(message, tag, level):
        logged.append(f"{tag}: {message}")

    QgsApplication.messageLog().messageReceived.connect(collect)
    src = tmp_path / "scene.tif"
    generate_scene(src, seed=4242, width=64, height=64)
    out = tmp_path / "flood.tif"
    try:
        with pytest.raises(QgsProcessingException) as err:
            processing.run("floodmapper:map_floods", {
                "INPUT": str(src), "BACKEND": 0, "SERVER_URL": recorder, "TRANSPORT": 1, "OUTPUT": str(out),
            })
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(collect)
        stored.set_value("authcfg", "")

    # sent, as a Bearer token, on every request
    assert _Recorder.seen, "no request reached the server"
    assert all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in _Recorder.seen)
    assert any(r["path"] == "/pooling" for r in _Recorder.seen)
    # the 401 is explained, without the secret
    text = str(err.value)
    assert "401" in text or "auth" in text.lower()
    assert TOKEN not in text
    assert logged, "the failure was not logged"
    assert not [line for line in logged if TOKEN in line]
    # no setting holds it: only the auth config id is stored
    settings = QgsSettings()
    assert not [k for k in settings.allKeys() if TOKEN in str(settings.value(k))]
    settings.sync()
    if Path(settings.fileName()).exists():
        assert TOKEN not in Path(settings.fileName()).read_text(errors="replace")
    # nor does a project file
    project_file = tmp_path / "project.qgs"
    QgsProject.instance().write(str(project_file))
    assert TOKEN not in project_file.read_text(errors="replace")
    assert not out.exists()
