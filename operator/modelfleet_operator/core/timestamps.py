"""Timestamps as the Kubernetes API writes them (RFC 3339, UTC, whole seconds) and read back."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: datetime) -> str:
    """A status timestamp (UTC, seconds); naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the API (`...Z` or an offset) as an aware datetime; None if absent or bad."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text))  # takes a trailing Z since Python 3.11
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


__all__ = ["parse_time", "rfc3339"]
