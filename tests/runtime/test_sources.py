"""Model sources within limits: downloads, mounted paths and the readiness answer (issue 11, findings 7 and 8)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet_runtime.errors import ModelLoadError
from modelfleet_runtime.settings import Settings
from modelfleet_runtime.sources import SourcePolicy, fetch_model, redirect_target, resolve_local
from tests.support.live_server import live_server
from tests.support.onnx_models import build_mlp

LOOPBACK = ("127.0.0.0/8",)
CAP = 64 * 1024


class ModelOrigin(http.server.ThreadingHTTPServer):
    """A model server on 127.0.0.1 with the behaviours a download must survive, one per path."""

    daemon_threads = True

    def __init__(self, model: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _OriginHandler)
        self.model = model
        self.stopping = threading.Event()
        self.requests: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    server: ModelOrigin

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        port = self.server.server_address[1]
        routes = {
            "/model.onnx": self._model,
            "/same-host": lambda: self._redirect("/model.onnx"),
            "/other-host": lambda: self._redirect(f"http://127.0.0.2:{port}/model.onnx"),
            "/declared-too-big": lambda: self._body(b"x" * (CAP + 1)),
            "/streamed-too-big": self._endless_chunks,
            "/drip": self._drip,
        }
        routes.get(self.path.partition("?")[0], lambda: self.send_error(404))()

    def _model(self) -> None:
        self._body(self.server.model)

    def _body(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _endless_chunks(self) -> None:
        """No Content-Length: only counting the bytes as they arrive can stop it."""
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"y" * 8192
        with contextlib.suppress(OSError):
            while not self.server.stopping.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def _drip(self) -> None:
        """A byte at a time, each well within any per-read timeout, for as long as the client listens."""
        self.send_response(200)
        self.send_header("Content-Length", str(CAP))
        self.end_headers()
        with contextlib.suppress(OSError):
            # The pace of the drip is the behaviour under test, not a synchronisation.
            while not self.server.stopping.wait(0.05):
                self.wfile.write(b"z")
                self.wfile.flush()


@pytest.fixture
def origin(mlp_path: Path) -> Iterator[ModelOrigin]:
    server = ModelOrigin(mlp_path.read_bytes())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def download_settings(uri: str, cache: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model": uri,
        "cache_dir": str(cache),
        "allowed_uri_schemes": ("http", "https"),
        "download_allowed_networks": LOOPBACK,
        "max_model_bytes": CAP,
        "warmup_iterations": 1,
    } | overrides
    return Settings(**values)


async def readiness(settings: Settings) -> tuple[int, str]:
    async with live_server(settings) as live:
        answer = await live.client.get("/v2/health/ready")
    return answer.status_code, answer.json()["reason"]


async def test_a_download_that_stays_on_its_host_serves(origin: ModelOrigin, tmp_path: Path) -> None:
    status, _ = await readiness(download_settings(f"{origin.base}/same-host", tmp_path / "cache"))
    assert status == 200
    assert origin.requests == ["/same-host", "/model.onnx"]


@pytest.mark.parametrize(
    ("path", "overrides", "reason"),
    [
        ("/other-host", {}, "it redirects to another host (127.0.0.2)"),
        ("/declared-too-big", {}, f"is {CAP + 1} bytes; the limit is {CAP} (max-model-bytes)"),
        ("/streamed-too-big", {}, f"larger than the limit of {CAP} bytes (max-model-bytes)"),
        ("/drip", {"download_timeout_seconds": 1.0}, "did not finish within 1s (download-timeout-seconds)"),
        ("/model.onnx", {"download_allowed_networks": ()}, "resolves to 127.0.0.1, a loopback address"),
        ("/model.onnx", {"allowed_uri_schemes": ("https", "file")}, "http model sources are not allowed here"),
    ],
)
async def test_a_download_beyond_its_limits_leaves_the_server_not_ready_with_the_reason(
    origin: ModelOrigin, tmp_path: Path, path: str, overrides: dict[str, Any], reason: str
) -> None:
    cache = tmp_path / "cache"
    status, said = await readiness(download_settings(f"{origin.base}{path}", cache, **overrides))
    assert status == 503
    assert reason in said
    # Nothing partial stays behind for a restart to pick up.
    assert not cache.exists() or list(cache.iterdir()) == []


async def test_the_reason_never_shows_a_query_string_or_credentials(origin: ModelOrigin, tmp_path: Path) -> None:
    uri = f"http://user:secret@127.0.0.1:{origin.server_address[1]}/other-host?X-Amz-Signature=s3cr3t"
    _, said = await readiness(download_settings(uri, tmp_path / "cache"))
    assert "redirects to another host" in said
    assert "secret" not in said and "s3cr3t" not in said


def test_a_redirect_never_downgrades_to_http_nor_leaves_for_another_scheme() -> None:
    policy = SourcePolicy(schemes=("http", "https"))
    with pytest.raises(ModelLoadError, match="from https to http"):
        redirect_target("https://models.example/m.onnx", "http://models.example/m.onnx", policy)
    with pytest.raises(ModelLoadError, match="redirects to a ftp:// URL"):
        redirect_target("https://models.example/m.onnx", "ftp://models.example/m.onnx", policy)
    with pytest.raises(ModelLoadError, match="redirects to a file:// URL"):
        redirect_target("https://models.example/m.onnx", "file:///etc/passwd", policy)
    assert redirect_target("http://models.example/a", "https://models.example/b", policy) == "https://models.example/b"


def test_link_local_and_private_destinations_are_refused_unless_their_network_is_allowed(tmp_path: Path) -> None:
    policy = SourcePolicy(schemes=("http",), timeout=30)
    for host, kind in [("169.254.169.254", "link-local"), ("10.1.2.3", "private"), ("[::1]", "loopback")]:
        with pytest.raises(ModelLoadError, match=f"a {kind} address"):
            fetch_model(f"http://{host}/latest/meta-data", cache_dir=str(tmp_path), policy=policy)


def test_http_sources_are_downloaded_once_and_verified(origin: ModelOrigin, tmp_path: Path) -> None:
    digest = hashlib.sha256(origin.model).hexdigest()
    policy = SourcePolicy.of(("http",), LOOPBACK, max_bytes=CAP, timeout=30)
    cache = str(tmp_path / "cache")
    local = fetch_model(f"{origin.base}/model.onnx", sha256=digest, cache_dir=cache, policy=policy)
    assert local.read_bytes() == origin.model
    with pytest.raises(ModelLoadError, match=r"could not download .*HTTP 404"):
        fetch_model(f"{origin.base}/missing.onnx", cache_dir=cache, policy=policy)
    origin.shutdown()
    # The cached copy serves a restart even when the origin is gone.
    assert fetch_model(f"{origin.base}/model.onnx", sha256=digest, cache_dir=cache, policy=policy) == local


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://claim/%2Fetc%2Fpasswd",
        "pvc://claim/models%2f..%2f..%2fetc/passwd",
        "pvc://claim/..%5C..%5Cetc/passwd",
        "pvc://claim/../etc/passwd",
        "configmap://fraud/%2e%2e/%2e%2e/etc/passwd",
        "pvc://../etc/passwd",
        "pvc://claim/link-out",
    ],
)
def test_mounted_paths_never_leave_their_mount(tmp_path: Path, uri: str) -> None:
    root = tmp_path / "root"
    (root / "pvc" / "claim").mkdir(parents=True)
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"not the volume's")
    os.symlink(outside, root / "pvc" / "claim" / "link-out")
    with pytest.raises(ModelLoadError, match=r"not allowed|outside its|not a Kubernetes object name"):
        resolve_local(uri, str(root))


def test_a_configmap_key_resolves_through_the_mounts_own_symlinks(tmp_path: Path) -> None:
    # The kubelet mounts a ConfigMap as KEY -> ..data/KEY, ..data -> ..<timestamp>/
    mount = tmp_path / "root" / "configmap" / "fraud"
    (mount / "..2026_01_01_00_00_00.1").mkdir(parents=True)
    build_mlp(mount / "..2026_01_01_00_00_00.1" / "model.onnx")
    os.symlink("..2026_01_01_00_00_00.1", mount / "..data")
    os.symlink("..data/model.onnx", mount / "model.onnx")
    resolved = resolve_local("configmap://fraud/model.onnx", str(tmp_path / "root"))
    assert resolved == (mount / "..2026_01_01_00_00_00.1" / "model.onnx").resolve()
