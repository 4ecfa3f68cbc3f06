"""The OpenAPI document is the server's real contract: bodies documented, errors as sent,
and schemathesis finds no 5xx and no answer outside the document (real uvicorn on 127.0.0.1).

The server runs on a thread of its own: schemathesis drives it with a blocking client.
The checks are the ones that hold for any request: a request valid by the schema may
still be refused (an input the model does not have), so positive_data_acceptance is not one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.specs.openapi.schemas  # at collection, not lazily mid-suite (see CHECKS)
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from modelfleet_runtime.app import create_app
from modelfleet_runtime.settings import Settings
from tests.support.polling import wait_until
from tests.support.protocol_models import build_mixed
from tests.support.runtime_process import listening_socket

# schemathesis.specs.openapi.schemas is imported above, at collection: schemathesis imports it lazily
# inside from_url, and parsed mid-suite it once met CPython 3.11's "AST constructor recursion depth
# mismatch" when the garbage collector ran a finalizer during the parse.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Data outside the schema: still never a 5xx, and still only the documented status codes.
NEGATIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


def _serve(settings_: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    listener = listening_socket()
    config = uvicorn.Config(create_app(settings_), log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def ready() -> bool:
        assert thread.is_alive(), "the server thread ended"
        return server.started and httpx.get(f"{url}/v2/health/ready").status_code == 200

    wait_until(ready, 60, message="the server ready")
    return server, thread, url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = build_mixed(tmp_path_factory.mktemp("openapi") / "mixed.onnx")
    server, thread, url = _serve(
        Settings(model=str(path), name="m", model_version="1", warmup_iterations=1, grpc_port=0)
    )
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def document(served: str) -> dict[str, Any]:
    return httpx.get(f"{served}/openapi.json").json()


@pytest.fixture(scope="module")
def api_schema(served: str) -> Any:
    return schemathesis.openapi.from_url(f"{served}/openapi.json")


def _cases() -> list[Any]:
    """Every operation with valid data; those with a body with invalid data too (the others have nothing to break)."""
    # The same app's document, made in-process at collection; the tests read the live server's.
    document = create_app(Settings(demo=True, grpc_port=0)).openapi()
    cases = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if "requestBody" in operation else [])
            cases += [pytest.param(method.upper(), path, m, id=f"{m.value}-{method.upper()}-{path}") for m in modes]
    return cases


@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_generated_requests_get_no_5xx_and_only_documented_answers(
    api_schema: Any, served: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    # Aim at the served model and version: another name is a 404, tested elsewhere.
    fixed = {k: v for k, v in {"name": "m", "version": "1"}.items() if "{" + k + "}" in path}
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

    @given(case=strategy)
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(case: Any) -> None:
        case.call_and_validate(base_url=served, checks=CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS)

    call()


def test_the_document_names_the_error_body_the_server_sends(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Error"]["required"] == ["error"]
    errors = {
        code: response["content"]["application/json"]["schema"]["$ref"]
        for operations in document["paths"].values()
        for operation in operations.values()
        for code, response in operation["responses"].items()
        if code.startswith(("4", "5")) and "content" in response
    }
    assert errors and set(errors.values()) == {"#/components/schemas/Error"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", "PredictRequest"),
        ("/v1/models/{name}:predict", "V1PredictRequest"),
        ("/v2/models/{name}/infer", "InferenceRequest"),
        ("/v2/models/{name}/versions/{version}/infer", "InferenceRequest"),
    ],
)
def test_the_inference_endpoints_document_their_request_and_answer(
    document: dict[str, Any], path: str, body: str
) -> None:
    operation = document["paths"][path]["post"]
    content = operation["requestBody"]["content"]
    assert content["application/json"]["schema"]["$ref"] == f"#/components/schemas/{body}"
    assert body in document["components"]["schemas"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert answer.removeprefix("#/components/schemas/") in document["components"]["schemas"]
    assert {"400", "404", "422", "503"} <= set(operation["responses"])
