"""Fixtures of the operator's pure-core tests: the CRD as a JSON schema, ModelVersion factories."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.paths import CRDS, REPO, SCHEMAS

# A pinned copy inside the repository (tests/schemas/README.md says where it comes from).
GATEWAY_API_VERSION = "v1.6.1"
GATEWAY_SCHEMAS = SCHEMAS / f"gateway-api-{GATEWAY_API_VERSION}"


def openapi_to_jsonschema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as a JSON schema that rejects unknown fields, as the API server
    prunes or rejects them (x-kubernetes-* extensions and CEL rules are dropped)."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = openapi_to_jsonschema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [openapi_to_jsonschema(sub) for sub in value]
        else:
            out[key] = value
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def crd_validator(crd: dict[str, Any], version: str | None = None) -> jsonschema.Validator:
    versions = crd["spec"]["versions"]
    chosen = next(v for v in versions if version is None or v["name"] == version)
    schema = openapi_to_jsonschema(chosen["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def crd_file() -> dict[str, Any]:
    return yaml.safe_load((CRDS / "modelversion.yaml").read_text())


@pytest.fixture(scope="session")
def mv_validator(crd_file: dict[str, Any]) -> jsonschema.Validator:
    return crd_validator(crd_file)


@pytest.fixture(scope="session")
def httproute_validator() -> jsonschema.Validator:
    crd = yaml.safe_load((GATEWAY_SCHEMAS / "gateway.networking.k8s.io_httproutes.yaml").read_text())
    bundle = crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
    assert bundle == GATEWAY_API_VERSION, f"{GATEWAY_SCHEMAS} holds Gateway API {bundle}, not {GATEWAY_API_VERSION}"
    return crd_validator(crd, "v1")


@pytest.fixture(scope="session")
def grpcroute_validator() -> jsonschema.Validator:
    crd = yaml.safe_load((GATEWAY_SCHEMAS / "gateway.networking.k8s.io_grpcroutes.yaml").read_text())
    bundle = crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
    assert bundle == GATEWAY_API_VERSION, f"{GATEWAY_SCHEMAS} holds Gateway API {bundle}, not {GATEWAY_API_VERSION}"
    return crd_validator(crd, "v1")


MINIMAL_SPEC: dict[str, Any] = {
    "model": "fraud",
    "version": "1",
    "source": {"uri": "https://models.example.com/fraud/1/model.onnx"},
}


@pytest.fixture
def make_mv() -> Callable[..., dict[str, Any]]:
    """make_mv(name="fraud-v1", uid="...", **spec_overrides) -> a ModelVersion object."""

    def make(name: str = "fraud-v1", namespace: str = "ml", uid: str | None = "uid-1", **spec: Any) -> dict[str, Any]:
        body = copy.deepcopy(MINIMAL_SPEC)
        body.update(spec)
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid:
            metadata["uid"] = uid
        return {
            "apiVersion": "serving.modelfleet.dev/v1alpha1",
            "kind": "ModelVersion",
            "metadata": metadata,
            "spec": body,
        }

    return make
