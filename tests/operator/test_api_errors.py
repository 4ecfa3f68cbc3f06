"""How an API server's refusal reaches the operator: status, message and Retry-After whatever its case."""

from __future__ import annotations

import pytest
from urllib3 import HTTPHeaderDict

from modelfleet_operator.shell.kube import _api_error


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "3"}, {"retry-after": "3"}, HTTPHeaderDict({"RETRY-AFTER": "3"})],
    ids=["canonical", "lower-case (HTTP/2)", "urllib3 headers"],
)
def test_retry_after_is_read_whatever_the_header_case(headers: object) -> None:
    error = _api_error(429, '{"kind": "Status", "message": "too many requests"}', headers)
    assert (error.status, error.retry_after, error.message) == (429, 3.0, "too many requests")


def test_no_headers_and_a_body_that_is_not_json_still_give_a_clear_error() -> None:
    error = _api_error(500, "upstream connect error", None)
    assert (error.status, error.retry_after, error.message) == (500, None, "upstream connect error")
