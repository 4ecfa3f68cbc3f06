"""The ModelVersion CRD: generated from the spec models, valid for the API server, and strict."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from modelfleet_operator import spec as crd
from modelfleet_operator.spec import ModelVersionSpec, SpecError, parse_spec

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def _schema(crd_file: dict[str, Any]) -> dict[str, Any]:
    return crd_file["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _examples(repo: Path) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((repo / "examples").glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}#{index}", doc))
    return docs


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: a missing field with a default gets it,
    then defaults apply inside it."""
    if not isinstance(value, dict) or "properties" not in schema:
        if isinstance(value, list) and "items" in schema:
            return [apply_defaults(schema["items"], item) for item in value]
        return value
    out = dict(value)
    for name, sub in schema["properties"].items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


def test_crd_file_is_generated_from_the_spec_models(repo: Path) -> None:
    on_disk = (repo / "crds" / "modelversion.yaml").read_text()
    assert on_disk == crd.crd_yaml(), (
        "crds/modelversion.yaml is stale: run `modelfleet-operator crd > crds/modelversion.yaml`"
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_is_a_valid_apiextensions_v1_object(crd_file: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(crd_file, version, strict=True)


def test_crd_names_subresources_and_columns(crd_file: dict[str, Any]) -> None:
    spec = crd_file["spec"]
    assert crd_file["metadata"]["name"] == "modelversions.serving.modelfleet.dev"
    assert spec["group"] == "serving.modelfleet.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ModelVersion" and spec["names"]["plural"] == "modelversions"
    assert spec["names"]["shortNames"] == ["mv"] and spec["names"]["categories"] == ["modelfleet"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    # Both paths count replicas at a share of 100 (issue 10): an HPA on the ModelVersion compares like with like.
    assert version["subresources"]["scale"]["statusReplicasPath"] == ".status.fullShareReplicas"
    columns = [(c["name"].upper(), c["jsonPath"]) for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == [
        ("MODEL", ".spec.model"),
        ("VERSION", ".spec.version"),
        ("TRAFFIC", ".spec.traffic"),
        ("SERVING", ".status.servingTraffic"),
        ("READY", ".status.readyText"),
        ("PHASE", ".status.phase"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    # every printer column points at a field the schema declares
    status = _schema(crd_file)["properties"]["status"]["properties"]
    assert {"servingTraffic", "readyText", "phase", "selector", "replicas", "fullShareReplicas", "scaleDownAt"} <= set(
        status
    )


def test_every_field_has_a_description_so_kubectl_explain_documents_it(crd_file: dict[str, Any]) -> None:
    missing = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub or not sub["description"].strip():
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(_schema(crd_file), "")
    assert missing == []


def test_schema_is_structural_every_node_has_a_type(crd_file: dict[str, Any]) -> None:
    untyped = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            untyped.append(path)
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}.{key}")

    walk(_schema(crd_file), "root")
    assert untyped == []


def test_cel_rules_guard_immutable_identity_and_cross_field_rules(crd_file: dict[str, Any]) -> None:
    root = _schema(crd_file)
    spec = root["properties"]["spec"]["properties"]
    assert {"rule": "self == oldSelf", "message": "model is immutable"} in spec["model"]["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf", "message": "version is immutable"} in spec["version"]["x-kubernetes-validations"]
    rules = [r["rule"] for r in spec["autoscaling"]["x-kubernetes-validations"]]
    assert rules == ["self.minReplicas <= self.maxReplicas"]
    assert any(r["rule"] == "self.metadata.name != self.spec.model" for r in root["x-kubernetes-validations"])
    assert all(r["message"] for node in (root, spec["retraining"]) for r in node["x-kubernetes-validations"])


@pytest.mark.parametrize("source", ["minimal.yaml", "full.yaml", "canary.yaml"])
def test_the_documented_examples_exist(repo: Path, source: str) -> None:
    assert (repo / "examples" / source).is_file()


def test_every_example_validates_against_the_crd_schema(repo: Path, mv_validator: jsonschema.Validator) -> None:
    examples = _examples(repo)
    assert examples
    for where, doc in examples:
        errors = [e.message for e in mv_validator.iter_errors(doc)]
        assert errors == [], where
        parse_spec(doc["spec"])  # and the Python mirror agrees


def test_full_example_sets_every_spec_field(repo: Path) -> None:
    full = yaml.safe_load((repo / "examples" / "full.yaml").read_text())

    def unset(model: type, data: dict[str, Any], path: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            key = field.alias or name
            if key not in data:
                missing.append(f"{path}{key}")
                continue
            annotation = crd._unwrap_optional(field.annotation)
            if isinstance(annotation, type) and issubclass(annotation, crd._Spec):
                missing += unset(annotation, data[key], f"{path}{key}.")
        return missing

    assert unset(ModelVersionSpec, full["spec"], "spec.") == []


def test_server_side_defaults_equal_the_spec_models_defaults(repo: Path, crd_file: dict[str, Any]) -> None:
    """What the API server stores for the minimal example is what the pydantic model fills in."""
    minimal = yaml.safe_load((repo / "examples" / "minimal.yaml").read_text())
    spec_schema = _schema(crd_file)["properties"]["spec"]
    stored = apply_defaults(spec_schema, minimal["spec"])
    assert stored == parse_spec(minimal["spec"]).to_manifest()
    assert stored["batching"] == {"maxBatchSize": 32, "maxLatencyMs": 100, "maxQueue": 1024}
    assert stored["warmup"] == {"iterations": 10} and stored["traffic"] == 100 and stored["replicas"] == 1


def _mv(**spec: Any) -> dict[str, Any]:
    body = {"model": "fraud", "version": "1", "source": {"uri": "https://example.com/m.onnx"}}
    body.update(spec)
    return {"apiVersion": crd.API_VERSION, "kind": "ModelVersion", "metadata": {"name": "fraud-v1"}, "spec": body}


REJECTED = {
    "unknown spec field": {"replicaz": 2},
    "model not a DNS label": {"model": "Fraud_Model"},
    "model starting with a digit": {"model": "1fraud"},
    "version with a space": {"version": "1 beta"},
    "version too long": {"version": "v" * 64},
    "sha256 not hex": {"source": {"uri": "https://example.com/m.onnx", "sha256": "z" * 64}},
    "sha256 too short": {"source": {"uri": "https://example.com/m.onnx", "sha256": "ab12"}},
    "unknown uri scheme": {"source": {"uri": "s3://bucket/model.onnx"}},
    "pvc uri without a path": {"source": {"uri": "pvc://models"}},
    "configmap uri without a key": {"source": {"uri": "configmap://models/"}},
    "unknown source field": {"source": {"uri": "https://example.com/m.onnx", "checksum": "x"}},
    "traffic above 100": {"traffic": 150},
    "negative replicas": {"replicas": -1},
    "replicas as a string": {"replicas": "2"},
    "zero batch size": {"batching": {"maxBatchSize": 0}},
    "autoscaling without maxReplicas": {"autoscaling": {"minReplicas": 1}},
    "feature fields empty": {"features": {"redis": {"url": "redis://r:6379/0"}, "fields": []}},
    "feature field with a comma": {"features": {"redis": {"url": "redis://r:6379/0"}, "fields": ["a,b"]}},
    "feature store not redis": {"features": {"redis": {"url": "http://r:6379"}, "fields": ["a"]}},
    "password ref without key": {
        "features": {"redis": {"url": "redis://r:6379/0", "passwordSecretRef": {"name": "s"}}, "fields": ["a"]}
    },
    "retraining without claim": {"retraining": {"minSamples": 10}},
    "error rate as percent": {"rollout": {"maxErrorRate": 5}},
    "resource quantity not a quantity": {"resources": {"requests": {"cpu": "lots"}}},
    "unknown phase": {},  # filled below: a status the schema refuses
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_schema_and_spec_model_reject_invalid_specs(case: str, mv_validator: jsonschema.Validator) -> None:
    doc = _mv(**REJECTED[case])
    if case == "unknown phase":
        doc["status"] = {"phase": "Running"}
        assert list(mv_validator.iter_errors(doc))
        with pytest.raises(ValueError, match="Input should be 'Pending'"):
            crd.ModelVersionStatus.model_validate(doc["status"])
        return
    assert list(mv_validator.iter_errors(doc)), f"the CRD schema accepted: {case}"
    with pytest.raises(SpecError):
        parse_spec(doc["spec"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed maxReplicas"),
        ({"retraining": {"feedbackClaim": "fb", "command": ["python", "-c", "print()"]}}, "command needs image"),
    ],
)
def test_cel_rules_are_mirrored_by_the_spec_model(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(_mv(**spec)["spec"])


def test_spec_error_names_the_field_that_is_wrong() -> None:
    with pytest.raises(SpecError, match=r"spec\.batching\.maxBatchSize"):
        parse_spec(_mv(batching={"maxBatchSize": 0})["spec"])


@pytest.mark.parametrize(
    "uri",
    [
        "https://models.example.com/a/b.onnx",
        "http://10.0.0.1:8000/model.onnx",
        "pvc://models/fraud/2/model.onnx",
        "configmap://tiny-model/model.onnx",
        "file:///opt/models/demo.onnx",
    ],
)
def test_every_supported_source_scheme_is_accepted(uri: str, mv_validator: jsonschema.Validator) -> None:
    doc = _mv(source={"uri": uri})
    assert list(mv_validator.iter_errors(doc)) == []
    assert parse_spec(doc["spec"]).source.uri == uri
