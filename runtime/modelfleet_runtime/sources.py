"""Resolve a model source URI to a verified local file.

`file:///p` or a plain path is used in place; `pvc://CLAIM/PATH` and
`configmap://NAME/KEY` are where the operator mounts them under the model root;
`http(s)://` is downloaded once into the cache folder. Whatever the source, a
given sha256 must match before the file is handed to onnxruntime.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import ModelLoadError

SCHEMES = ("file", "http", "https", "pvc", "configmap")
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "modelfleet"


def resolve_local(uri: str, model_root: str) -> Path | None:
    """The local path a non-download URI names, or None for http(s)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "" or (len(scheme) == 1 and uri[1:3] == ":\\"):
        return Path(uri)
    if scheme == "file":
        return Path(unquote(parts.path))
    if scheme in ("pvc", "configmap"):
        if not parts.netloc or not parts.path.strip("/"):
            raise ModelLoadError(f"{uri!r}: expected {scheme}://NAME/PATH")
        relative = Path(unquote(parts.path.lstrip("/")))
        if ".." in relative.parts:
            raise ModelLoadError(f"{uri!r}: '..' is not allowed in a {scheme} path")
        return Path(model_root) / scheme / parts.netloc / relative
    if scheme in ("http", "https"):
        return None
    raise ModelLoadError(f"{uri!r}: unsupported scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(uri: str, cache_dir: Path, timeout: float) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / (hashlib.sha256(uri.encode()).hexdigest()[:32] + ".onnx")
    if target.exists():
        return target
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(uri, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
        os.replace(tmp_name, target)
    except (urllib.error.URLError, OSError) as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise ModelLoadError(f"could not download {uri}: {exc}") from exc
    return target


def fetch_model(
    uri: str, *, sha256: str = "", model_root: str = "/mnt/models", cache_dir: str = "", timeout: float = 60.0
) -> Path:
    """Return a local path to the model named by `uri`, verified against `sha256` when given."""
    local = resolve_local(uri, model_root)
    if local is None:
        local = _download(uri, Path(cache_dir) if cache_dir else default_cache_dir(), timeout)
    if not local.is_file():
        raise ModelLoadError(f"model file {local} (from {uri}) does not exist")
    if sha256:
        actual = sha256_of(local)
        if actual != sha256.lower():
            raise ModelLoadError(f"sha256 mismatch for {uri}: expected {sha256.lower()}, got {actual}")
    return local
