"""What a ModelVersion may reach and use (issue 11): URI schemes and hosts, sha256, the trainer's code,
Secret references, the feature store's host, and the NetworkPolicy that admits only known namespaces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from modelfleet_operator.config import ConfigError, OperatorConfig, load_config
from modelfleet_operator.core import policy
from modelfleet_operator.core.manifests import build_children, build_deployment, version_spec
from modelfleet_operator.core.model_objects import ModelObjects, build_model_objects
from modelfleet_operator.core.render import render_manifests
from modelfleet_operator.core.snapshot import ModelSnapshot, versions_of

MakeMV = Callable[..., dict[str, Any]]
CONFIG = OperatorConfig()
REDIS = {"redis": {"url": "redis://store.ml.svc:6379/0", "passwordSecretRef": {"name": "store", "key": "pw"}}}
FEATURES = {**REDIS, "fields": ["age"]}


def _pod(mv: dict[str, Any], config: OperatorConfig = CONFIG) -> dict[str, Any]:
    return build_deployment(mv, config)["spec"]["template"]["spec"]


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}


# --- model sources ---------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["http://models.example.com/m.onnx", "file:///opt/demo.onnx"])
def test_http_and_file_sources_are_refused_by_default_naming_the_setting(make_mv: MakeMV, uri: str) -> None:
    with pytest.raises(policy.UriSchemeNotAllowed, match="allowed-uri-schemes") as caught:
        build_children(make_mv(source={"uri": uri}), CONFIG)
    assert caught.value.reason == "UriSchemeNotAllowed"
    allowed = OperatorConfig(allowed_uri_schemes=("https", "http", "file"))
    assert build_children(make_mv(source={"uri": uri}), allowed)


def test_a_model_host_outside_the_allowlist_is_refused(make_mv: MakeMV) -> None:
    config = OperatorConfig(allowed_model_hosts=("models.example.com", "*.store.internal"))
    for ok in ("https://models.example.com/m.onnx", "https://a.b.store.internal/m.onnx", "pvc://claim/m.onnx"):
        assert build_children(make_mv(source={"uri": ok}), config)
    for bad in ("https://169.254.169.254/latest", "https://models.example.com.evil.io/m", "https://store.internal/m"):
        with pytest.raises(policy.ModelHostNotAllowed, match="allowed-model-hosts") as caught:
            build_children(make_mv(source={"uri": bad}), config)
        assert caught.value.reason == "ModelHostNotAllowed"


def test_require_sha256_refuses_a_source_without_one(make_mv: MakeMV) -> None:
    config = OperatorConfig(require_sha256=True)
    with pytest.raises(policy.Sha256Required, match="require-sha256"):
        build_children(make_mv(source={"uri": "https://models.example.com/m.onnx"}), config)
    source = {"uri": "https://models.example.com/m.onnx", "sha256": "ab" * 32}
    assert build_children(make_mv(source=source), config)


def test_the_runtime_gets_the_download_rules_and_a_cache_sized_for_the_largest_model(make_mv: MakeMV) -> None:
    config = OperatorConfig(
        allowed_uri_schemes=("https", "pvc"),
        max_model_bytes=512 * 1024 * 1024,
        download_timeout_seconds=90,
        download_allowed_networks=("10.20.0.0/16",),
    )
    pod = _pod(make_mv(), config)
    env = _env(pod)
    assert env["MODELFLEET_ALLOWED_URI_SCHEMES"] == "https,pvc"
    assert env["MODELFLEET_MAX_MODEL_BYTES"] == str(512 * 1024 * 1024)
    assert env["MODELFLEET_DOWNLOAD_TIMEOUT_SECONDS"] == "90"
    assert env["MODELFLEET_DOWNLOAD_ALLOWED_NETWORKS"] == "10.20.0.0/16"
    [cache] = [v for v in pod["volumes"] if v["name"] == "cache"]
    assert cache["emptyDir"] == {"sizeLimit": "576Mi"}  # the model and 64 MiB of slack


# --- the trainer ---------------------------------------------------------------------------


def test_a_trainer_command_needs_an_image_of_the_trainer_allowlist(make_mv: MakeMV) -> None:
    retraining = {"feedbackClaim": "fb", "image": "ghcr.io/modelfleet/runtime:0.1.0", "command": ["sh", "-c", "x"]}
    mv = make_mv(retraining=retraining)
    with pytest.raises(policy.TrainerNotAllowed, match="allowed-trainer-images"):
        build_children(mv, CONFIG)
    config = OperatorConfig(allowed_trainer_images=("ghcr.io/modelfleet/runtime",))
    assert build_children(mv, config)


# --- Secrets and the feature store ---------------------------------------------------------------


def _snapshot(mv: dict[str, Any], consumable: frozenset[str]) -> ModelSnapshot:
    return ModelSnapshot(namespace="ml", model="fraud", versions=[mv], consumable_secrets=consumable)


@pytest.mark.parametrize(
    ("spec", "where", "secret"),
    [
        ({"features": FEATURES}, "spec.features.redis.passwordSecretRef", "store"),
        ({"retraining": {"feedbackClaim": "fb", "tokenSecretRef": {"name": "fb-token"}}}, "tokenSecretRef", "fb-token"),
        ({"predictToken": {"name": "predict"}}, "spec.predictToken", "predict"),
    ],
)
def test_a_secret_without_the_opt_in_label_cannot_be_referenced(
    make_mv: MakeMV, spec: dict[str, Any], where: str, secret: str
) -> None:
    mv = make_mv(**spec)
    [version] = versions_of(_snapshot(mv, frozenset({"other"})), CONFIG)
    assert isinstance(version.failure, policy.SecretNotConsumable) and not version.takes_part
    assert version.failure.reason == "SecretNotConsumable"
    message = str(version.failure)
    assert where in message and repr(secret) in message and "serving.modelfleet.dev/consumable=true" in message
    [version] = versions_of(_snapshot(mv, frozenset({secret})), CONFIG)
    assert version.failure is None and version.takes_part
    # with the check turned off (an admission policy decides instead) any Secret may be named
    [version] = versions_of(_snapshot(mv, frozenset()), OperatorConfig(consumable_secret_label=""))
    assert version.failure is None


def test_the_operators_own_feedback_token_secret_needs_no_label(make_mv: MakeMV) -> None:
    mv = make_mv(retraining={"feedbackClaim": "fb"})
    [version] = versions_of(_snapshot(mv, frozenset()), CONFIG)
    assert version.failure is None


def test_the_feature_store_must_be_an_allowed_host_when_the_allowlist_is_set(make_mv: MakeMV) -> None:
    mv = make_mv(features=FEATURES)
    assert build_children(mv, OperatorConfig(allowed_redis_hosts=("*.ml.svc",)))
    with pytest.raises(policy.RedisHostNotAllowed, match="allowed-redis-hosts") as caught:
        build_children(mv, OperatorConfig(allowed_redis_hosts=("redis.infra.svc",)))
    assert "'store.ml.svc'" in str(caught.value)


def test_the_predict_token_is_mounted_as_a_file_the_runtime_reads(make_mv: MakeMV) -> None:
    pod = _pod(make_mv(predictToken={"name": "predict", "key": "t"}))
    assert _env(pod)["MODELFLEET_PREDICT_TOKEN_FILE"] == "/var/run/secrets/modelfleet/predict/token"
    [volume] = [v for v in pod["volumes"] if v["name"] == "predict-token"]
    assert volume["secret"] == {"secretName": "predict", "items": [{"key": "t", "path": "token"}], "defaultMode": 0o440}
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "predict-token"]
    assert mount == {"name": "predict-token", "mountPath": "/var/run/secrets/modelfleet/predict", "readOnly": True}
    default_key = version_spec(make_mv(predictToken={"name": "predict"})).predict_token
    assert default_key is not None and default_key.key == "token"
    assert "MODELFLEET_PREDICT_TOKEN_FILE" not in _env(_pod(make_mv()))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"consumable-secret-label": "no-value"}, "consumable-secret-label must be KEY=VALUE"),
        ({"allowed-model-hosts": "http://x"}, "allowed-model-hosts"),
        ({"max-model-bytes": "10"}, "max-model-bytes must be at least"),
        ({"network-policy-namespaces": "Bad_NS"}, "network-policy-namespaces"),
        ({"network-policy": "maybe"}, "network-policy: expected true or false"),
    ],
)
def test_bad_security_settings_are_refused_naming_the_key(settings: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(settings, {})


# --- the NetworkPolicy ---------------------------------------------------------------------------


def _policy(mv: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    objects = ModelObjects("fraud", "ml", [mv], [mv], {"fraud-v1": 100}, {"fraud-v1": "1"}, config)
    [found] = [o for o in build_model_objects(objects) if o["kind"] == "NetworkPolicy"]
    return found


def _admitted(network_policy: dict[str, Any]) -> list[str]:
    [rule] = network_policy["spec"]["ingress"]
    [peer] = rule["from"]
    [expression] = peer["namespaceSelector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("kubernetes.io/metadata.name", "In")
    return list(expression["values"])


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_each_model_gets_a_network_policy_admitting_only_known_namespaces(make_mv: MakeMV, version: str) -> None:
    mv = make_mv()
    config = OperatorConfig(operator_namespace="modelfleet", network_policy_namespaces=("monitoring",))
    found = _policy(mv, config)
    kubernetes_validate.validate(found, version, strict=True)
    assert found["metadata"]["name"] == "fraud" and found["metadata"]["namespace"] == "ml"
    assert found["metadata"]["ownerReferences"][0]["name"] == "fraud-v1"
    spec = found["spec"]
    # every runtime pod of the model (not the trainer pods, which carry no model label)
    assert spec["podSelector"] == {"matchLabels": {"serving.modelfleet.dev/model": "fraud"}}
    assert spec["policyTypes"] == ["Ingress"]  # ingress not listed below is denied
    assert _admitted(found) == ["ml", "modelfleet", "monitoring"]
    # The runtime's own ports, by name: HTTP and the Open Inference Protocol's gRPC.
    assert spec["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "http"}, {"protocol": "TCP", "port": "grpc"}]
    gateway = OperatorConfig(routing="gateway", gateway="gateway-system/public", operator_namespace="modelfleet")
    assert _admitted(_policy(mv, gateway)) == ["gateway-system", "ml", "modelfleet"]
    same = OperatorConfig(routing="gateway", gateway="public")  # the Gateway in each model's namespace
    assert _admitted(_policy(mv, same)) == ["ml"]


def test_network_policy_false_builds_none_and_render_shows_it_otherwise(make_mv: MakeMV) -> None:
    mv = make_mv()
    assert "NetworkPolicy" in [o["kind"] for o in render_manifests([mv], CONFIG)]
    assert "NetworkPolicy" not in [o["kind"] for o in render_manifests([mv], OperatorConfig(network_policy=False))]
