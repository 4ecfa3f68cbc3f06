"""Resolve a model source URI to a verified local file, within the limits of a `SourcePolicy`.

`file:///p` or a plain path is used in place; `pvc://CLAIM/PATH` and
`configmap://NAME/KEY` are where the operator mounts them under the model root,
and the resolved path (symlinks included) must stay under that mount;
`http(s)://` is downloaded once into the cache folder. Whatever the source, a
given sha256 must match before the file is handed to onnxruntime.

A download (DESIGN.md section 9) goes only to a scheme the policy allows, never
follows a redirect to another host or from https to http, connects only to
public addresses unless the policy allows a network (every address the name
resolves to is checked, and the connection goes to the checked address, so a
second DNS answer cannot swap it), stops at `max_bytes` (declared or streamed)
and at one deadline for the whole transfer. A partial file never stays behind.
Messages never show a URL's query string or credentials (presigned URLs carry
secrets there), and never the hash of a file that did not match.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import httpcore

from .errors import ModelLoadError

log = logging.getLogger("modelfleet.sources")

SCHEMES = ("file", "http", "https", "pvc", "configmap")
DEFAULT_SCHEMES = ("https", "pvc", "configmap", "file")
DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_TIMEOUT_SECONDS = 600.0
MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Kubernetes object names (DNS-1123 subdomains): what a claim or ConfigMap can be called.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# Percent-encoded separators (and NUL) turn one path segment into several, or cut it short.
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SourcePolicy:
    """Where a model may come from and how much a download may take."""

    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    # Destinations that are not public (loopback, link-local, private) which downloads may still reach.
    allowed_networks: tuple[Network, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def of(
        cls, schemes: Sequence[str], allowed_networks: Iterable[str], max_bytes: int, timeout: float
    ) -> SourcePolicy:
        """The policy of the runtime's settings; ValueError names a value that is not usable."""
        unknown = sorted(set(schemes) - set(SCHEMES))
        if unknown:
            raise ValueError(f"allowed-uri-schemes: unknown scheme(s) {', '.join(unknown)}; use {', '.join(SCHEMES)}")
        networks = []
        for entry in allowed_networks:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"download-allowed-networks: {entry!r} is not an address or a CIDR") from None
        if max_bytes < 1:
            raise ValueError(f"max-model-bytes must be at least 1, got {max_bytes}")
        if timeout <= 0:
            raise ValueError(f"download-timeout-seconds must be positive, got {timeout}")
        return cls(tuple(schemes), tuple(networks), max_bytes, timeout)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "modelfleet"


def shown(uri: str) -> str:
    """`uri` without credentials, query or fragment: what messages may show of it."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https"):
        return uri
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def scheme_of(uri: str) -> str:
    """The URI's scheme, `file` for a plain path (also a Windows one)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "" or (len(scheme) == 1 and uri[1:3] == ":\\"):
        return "file"
    return scheme


def resolve_local(uri: str, model_root: str) -> Path | None:
    """The local path a non-download URI names, or None for http(s)."""
    scheme = scheme_of(uri)
    if scheme == "file":
        return Path(unquote(urlsplit(uri).path)) if urlsplit(uri).scheme.lower() == "file" else Path(uri)
    if scheme in ("pvc", "configmap"):
        return _under_mount(uri, scheme, model_root)
    if scheme in ("http", "https"):
        return None
    raise ModelLoadError(f"{uri!r}: unsupported scheme {scheme!r}; use one of {', '.join(SCHEMES)}")


def _under_mount(uri: str, scheme: str, model_root: str) -> Path:
    """The real path of a pvc:// or configmap:// URI, which must lie under its mount."""
    parts = urlsplit(uri)
    if not parts.netloc or not parts.path.strip("/"):
        raise ModelLoadError(f"{uri!r}: expected {scheme}://NAME/PATH")
    if not _OBJECT_NAME.match(parts.netloc):
        raise ModelLoadError(f"{uri!r}: {parts.netloc!r} is not a Kubernetes object name")
    if _ENCODED_SEPARATOR.search(parts.path) or parts.query or parts.fragment:
        raise ModelLoadError(f"{uri!r}: encoded separators (%2F, %5C, %00), '?' and '#' are not allowed in a path")
    relative = Path(unquote(parts.path.lstrip("/")))
    if ".." in relative.parts:
        raise ModelLoadError(f"{uri!r}: '..' is not allowed in a {scheme} path")
    mount = os.path.realpath(Path(model_root) / scheme / parts.netloc)
    resolved = os.path.realpath(Path(mount) / relative)
    if os.path.commonpath([mount, resolved]) != mount or resolved == mount:
        # A symlink on the volume points elsewhere: the file is not the volume's to serve.
        raise ModelLoadError(f"{uri!r} resolves outside its {scheme} mount")
    return Path(resolved)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_model(
    uri: str,
    *,
    sha256: str = "",
    model_root: str = "/mnt/models",
    cache_dir: str = "",
    policy: SourcePolicy | None = None,
) -> Path:
    """Return a local path to the model named by `uri`, verified against `sha256` when given."""
    policy = policy or SourcePolicy()
    scheme = scheme_of(uri)
    if scheme in SCHEMES and scheme not in policy.schemes:
        raise ModelLoadError(
            f"{scheme} model sources are not allowed here (allowed: {', '.join(policy.schemes)}); "
            "an administrator can allow more with allowed-uri-schemes"
        )
    local = resolve_local(uri, model_root)
    if local is None:
        local = _download_once(uri, Path(cache_dir) if cache_dir else default_cache_dir(), policy)
    if not local.is_file():
        raise ModelLoadError(f"model file {local} (from {shown(uri)}) does not exist")
    if sha256:
        actual = sha256_of(local)
        if actual != sha256.lower():
            # The readiness answer is unauthenticated: the real hash of a file goes to the log only.
            log.error("sha256 of %s is %s; the source names %s", local, actual, sha256.lower())
            raise ModelLoadError(f"sha256 mismatch for {shown(uri)}")
    return local


def _download_once(uri: str, cache_dir: Path, policy: SourcePolicy) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / (hashlib.sha256(uri.encode()).hexdigest()[:32] + ".onnx")
    if target.exists():
        return target
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            # Its own event loop on the loading thread: one deadline covers resolving, connecting,
            # redirects and every read, and cancels whatever is waiting when it passes.
            asyncio.run(_download(uri, out, policy))
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target


async def _download(uri: str, out: BinaryIO, policy: SourcePolicy) -> None:
    try:
        async with (
            asyncio.timeout(policy.timeout),
            httpcore.AsyncConnectionPool(
                ssl_context=_ssl_context(), network_backend=_CheckedBackend(policy.allowed_networks)
            ) as pool,
        ):
            url = uri
            for _ in range(MAX_REDIRECTS + 1):
                async with pool.stream("GET", url, headers=[(b"Accept-Encoding", b"identity")]) as response:
                    if response.status not in _REDIRECTS:
                        await _save(uri, response, out, policy.max_bytes)
                        return
                    url = redirect_target(url, _header(response, b"location"), policy)
            raise ModelLoadError(f"could not download {shown(uri)}: more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        raise ModelLoadError(
            f"could not download {shown(uri)}: it did not finish within {policy.timeout:g}s (download-timeout-seconds)"
        ) from None
    except DestinationRefused as exc:
        raise ModelLoadError(f"could not download {shown(uri)}: {exc}") from None
    except (
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.TimeoutException,
        httpcore.UnsupportedProtocol,
        OSError,
    ) as exc:
        raise ModelLoadError(f"could not download {shown(uri)}: {type(exc).__name__}: {exc}") from None


async def _save(uri: str, response: httpcore.Response, out: BinaryIO, max_bytes: int) -> None:
    if response.status != 200:
        raise ModelLoadError(f"could not download {shown(uri)}: the server answered HTTP {response.status}")
    encoding = _header(response, b"content-encoding")
    if encoding not in ("", "identity"):
        raise ModelLoadError(f"could not download {shown(uri)}: the server sent it {encoding}-encoded")
    declared = _header(response, b"content-length")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ModelLoadError(
            f"could not download {shown(uri)}: it is {int(declared)} bytes; the limit is {max_bytes} (max-model-bytes)"
        )
    size = 0
    async for chunk in response.aiter_stream():
        size += len(chunk)
        if size > max_bytes:
            raise ModelLoadError(
                f"could not download {shown(uri)}: it is larger than the limit of {max_bytes} bytes (max-model-bytes)"
            )
        out.write(chunk)


def redirect_target(current: str, location: str, policy: SourcePolicy) -> str:
    """Where a redirect from `current` leads, if it stays on the same host and does not downgrade."""
    if not location:
        raise ModelLoadError(f"could not download {shown(current)}: a redirect without a Location")
    target = urljoin(current, location)
    was, new = urlsplit(current), urlsplit(target)
    scheme = new.scheme.lower()
    if scheme not in ("http", "https") or scheme not in policy.schemes:
        raise ModelLoadError(f"could not download {shown(current)}: it redirects to a {scheme}:// URL")
    if was.scheme.lower() == "https" and scheme == "http":
        raise ModelLoadError(f"could not download {shown(current)}: it redirects from https to http")
    if (new.hostname or "").lower() != (was.hostname or "").lower():
        raise ModelLoadError(
            f"could not download {shown(current)}: it redirects to another host ({new.hostname}); "
            "name the final URL in the source"
        )
    return target


def _header(response: httpcore.Response, name: bytes) -> str:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""


def _ssl_context() -> ssl.SSLContext:
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return httpcore.default_ssl_context()


class DestinationRefused(Exception):
    """A download would connect to an address the policy does not allow."""


def destination_allowed(address: Address, allowed: Sequence[Network]) -> bool:
    """Public addresses, and the others only inside an allowed network."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address.version == network.version and address in network for network in allowed):
        return True
    return address.is_global and not address.is_multicast


def _kind(address: Address) -> str:
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    return "not a public address"


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves a host once, checks every address, and connects to a checked one."""

    def __init__(self, allowed: Sequence[Network]) -> None:
        self._allowed = tuple(allowed)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DestinationRefused(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        for address in addresses:
            if not destination_allowed(address, self._allowed):
                raise DestinationRefused(
                    f"{host} resolves to {address}, {_kind(address)}; an administrator can allow its network "
                    "with download-allowed-networks"
                )
        last: Exception = DestinationRefused(f"{host} resolves to no address")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise last

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
