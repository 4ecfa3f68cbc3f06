"""The runtime's error types, each carrying the HTTP status it maps to.

The FastAPI module maps every `RuntimeProblem` to a JSON answer
`{"error": message}` with `status` (and `Retry-After` when set) in one place.
"""

from __future__ import annotations


class RuntimeProblem(Exception):
    """Base of every error a client may see; `message` says what was wrong."""

    status: int = 500
    retry_after: int | None = None
    # Set for a refusal under load that a retry may get served (backpressure): such answers are
    # counted apart from errors (metrics.py, modelfleet_requests_rejected_total{reason}).
    rejected: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RuntimeProblem):
    """The request's structure is wrong: malformed JSON, missing key, wrong shape or count."""

    status = 400


class Unauthorized(RuntimeProblem):
    status = 401


class NotFound(RuntimeProblem):
    """Unknown model name, model version or entity."""

    status = 404


class Conflict(RuntimeProblem):
    """The request repeats something that may happen once (a second label for one request_id)."""

    status = 409


class PayloadTooLarge(RuntimeProblem):
    status = 413


class ClientGone(RuntimeProblem):
    """The client closed the connection before its request was read whole: nginx's 499.

    Nobody receives the answer; the status is for the metrics, where it must not count
    as a server error (a canary's error budget counts 5xx).
    """

    status = 499


class InvalidValue(RuntimeProblem):
    """The structure is right but a value is not usable: non-numeric, NaN, infinite."""

    status = 422


class Unavailable(RuntimeProblem):
    """The server cannot answer now (not ready, draining, queue full, store down)."""

    status = 503

    def __init__(self, message: str, retry_after: int | None = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(Unavailable):
    rejected = "queue_full"


class InsufficientStorage(RuntimeProblem):
    """The feedback volume's quota (or its filesystem) has no room for what was sent; nothing was stored."""

    status = 507


class InferenceFailed(RuntimeProblem):
    """onnxruntime raised while running a batch that passed validation."""

    status = 500


class ModelLoadError(Exception):
    """The model could not be fetched, verified, loaded or warmed up (never ready)."""
