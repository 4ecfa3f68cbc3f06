"""HTTP content codings: gzip/deflate request bodies in, gzip/deflate answers out when asked.

A compressed body is inflated against the same limit as a plain one: inflating stops
one byte past `limit`, so a small body that expands without end (a zip bomb) is a
413, never a process out of memory. "deflate" is the zlib format (RFC 9110); a raw
deflate stream, which some clients send under that name, is accepted too.
"""

from __future__ import annotations

import asyncio
import zlib

from .errors import InvalidInput, PayloadTooLarge

# Bodies from this size on are (de)compressed on a worker thread, off the event loop.
_OFF_LOOP_BYTES = 64 * 1024
# Answers below this size go uncompressed whatever the client accepts: most clients accept gzip by
# default, and for small answers the CPU on both ends costs more than the bytes saved on the wire.
COMPRESS_MIN_BYTES = 32 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _inflate(body: bytes, coding: str, limit: int) -> bytes:
    problem = ""
    for wbits in (_WBITS[coding], -zlib.MAX_WBITS) if coding == "deflate" else (_WBITS[coding],):
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            problem = str(exc)
            continue
        if len(plain) > limit:
            raise PayloadTooLarge(f"the request body inflates beyond the limit of {limit} bytes")
        if not inflater.eof:
            raise InvalidInput(f"the {coding} request body is truncated")
        if inflater.unused_data:
            raise InvalidInput(f"{len(inflater.unused_data)} bytes follow the end of the {coding} request body")
        return plain
    raise InvalidInput(f"the request body is not valid {coding} data ({problem}) although Content-Encoding says so")


async def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """`body` without its Content-Encoding (identity, gzip, x-gzip or deflate), at most `limit` bytes."""
    if content_encoding is None:
        return body
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding == "x-gzip":
        coding = "gzip"
    if coding not in _WBITS:
        raise InvalidInput(f"Content-Encoding {content_encoding!r} is not supported; send gzip, deflate or identity")
    if len(body) >= _OFF_LOOP_BYTES:
        return await asyncio.to_thread(_inflate, body, coding, limit)
    return _inflate(body, coding, limit)


def accepted_coding(accept_encoding: str | None) -> str | None:
    """gzip or deflate when the Accept-Encoding header accepts it (gzip first), else None (identity)."""
    if not accept_encoding:
        return None
    accepted: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        accepted[coding.strip().lower()] = quality
    for coding in ("gzip", "deflate"):
        if accepted.get(coding, accepted.get("*", 0.0)) > 0:
            return coding
    return None


def _deflate(body: bytes, coding: str) -> bytes:
    # Level 1: most of the saving of higher levels on numeric tensors, at a fraction of the time.
    compressor = zlib.compressobj(1, zlib.DEFLATED, _WBITS[coding])
    return compressor.compress(body) + compressor.flush()


async def encode_body(body: bytes, coding: str) -> bytes:
    if len(body) >= _OFF_LOOP_BYTES:
        return await asyncio.to_thread(_deflate, body, coding)
    return _deflate(body, coding)
