"""The chart's security values (issue 11): images pinned by digest, the operator's security settings,
the operator's own NetworkPolicy, and the admission policy on Secret references."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet_operator import cli
from modelfleet_operator.config import load_config
from tests.chart.chart_render import VALUE_SETS, env_of, find, operator_container, run_helm, write_values
from tests.support.paths import CHART

DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_every_image_is_pinned_by_digest_when_one_is_given(render) -> None:
    objects = render({"image": {"digest": DIGEST, "tag": "ignored"}, "runtimeImage": {"digest": DIGEST}})
    container = operator_container(objects)
    assert container["image"] == f"ghcr.io/modelfleet/operator@{DIGEST}"
    runtime = env_of(container)["MODELFLEET_OPERATOR_RUNTIME_IMAGE"]
    assert runtime == f"ghcr.io/modelfleet/runtime@{DIGEST}"
    # and the operator accepts that reference, allowing its own repository by default
    config = load_config({}, {"MODELFLEET_OPERATOR_RUNTIME_IMAGE": runtime})
    assert config.allowed_images == ("ghcr.io/modelfleet/runtime",)


@pytest.mark.parametrize(
    "values",
    [
        {"image": {"tag": DIGEST}},  # renders repo:sha256:..., an invalid reference
        {"runtimeImage": {"tag": DIGEST}},
        {"image": {"digest": "0123abcd"}},
        {"runtimeImage": {"digest": "sha256:XYZ"}},
        {"secretReferences": {"consumableLabel": "no-value"}},
        {"modelDownloads": {"allowedHosts": ["https://models.example.com"]}},
        {"modelDownloads": {"maxBytes": 10}},
        {"networkPolicy": {"namespaces": ["Not_A_Namespace"]}},
    ],
)
def test_schema_refuses_bad_security_values(helm: str, tmp_path: Path, values: dict) -> None:
    proc = run_helm(helm, "template", "modelfleet", str(CHART), "--values", str(write_values(tmp_path, values)))
    assert proc.returncode != 0, f"helm template accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


def test_security_settings_reach_the_operator(render) -> None:
    values = {
        "allowedTrainerImages": ["registry.example.com/ml/trainer"],
        "modelDownloads": {
            "allowedHosts": ["models.example.com", "*.store.internal"],
            "requireSha256": True,
            "maxBytes": 1073741824,
            "timeoutSeconds": 120,
            "allowedNetworks": ["10.20.0.0/16"],
        },
        "secretReferences": {"consumableLabel": "example.com/modelfleet=yes"},
        "featureStore": {"allowedHosts": ["redis.ml.svc"]},
        "networkPolicy": {"models": False, "namespaces": ["monitoring"]},
    }
    container = operator_container(render(values))
    env = {k: v for k, v in env_of(container).items() if k.startswith("MODELFLEET_OPERATOR_") and v is not None}
    options = {k: v for k, v in vars(cli._parser().parse_args(container["args"])).items() if k != "command"}
    config = load_config(options, env)
    assert config.allowed_trainer_images == ("registry.example.com/ml/trainer",)
    assert config.allowed_model_hosts == ("models.example.com", "*.store.internal")
    assert config.require_sha256 is True and config.max_model_bytes == 1073741824
    assert config.download_timeout_seconds == 120 and config.download_allowed_networks == ("10.20.0.0/16",)
    assert config.consumable_secret_label == "example.com/modelfleet=yes"
    assert config.allowed_redis_hosts == ("redis.ml.svc",)
    assert config.network_policy is False and config.network_policy_namespaces == ("monitoring",)
    # the operator's namespace comes from its pod, for the models' NetworkPolicies
    [namespace] = [e for e in container["env"] if e["name"] == "MODELFLEET_OPERATOR_OPERATOR_NAMESPACE"]
    assert namespace["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_defaults_are_the_operators_secure_defaults(render) -> None:
    container = operator_container(render(VALUE_SETS["default"]))
    env = {k: v for k, v in env_of(container).items() if k.startswith("MODELFLEET_OPERATOR_") and v is not None}
    config = load_config({}, env)
    assert config.allowed_uri_schemes == ("https", "pvc", "configmap")
    assert config.allowed_trainer_images == () and config.require_sha256 is False
    assert config.max_model_bytes == 4 * 1024**3
    assert config.consumable_secret_label == "serving.modelfleet.dev/consumable=true"
    assert config.network_policy is True


def test_the_operator_pod_takes_only_the_metrics_scrape(render) -> None:
    objects = render(VALUE_SETS["default"])
    [policy] = find(objects, "NetworkPolicy")
    [deployment] = find(objects, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert rule["from"] == [{"namespaceSelector": {}}]
    # no metrics port: nothing may connect
    [closed] = find(render({"metricsPort": 0}), "NetworkPolicy")
    assert closed["spec"]["ingress"] == []
    assert not find(render({"networkPolicy": {"operator": False}}), "NetworkPolicy")


def test_the_admission_policy_checks_the_requesters_right_to_each_named_secret(render) -> None:
    objects = render(VALUE_SETS["default"])
    [policy] = find(objects, "ValidatingAdmissionPolicy")
    [binding] = find(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        ["serving.modelfleet.dev"],
        ["modelversions"],
        ["CREATE", "UPDATE"],
    )
    [exempt] = spec["matchConditions"]
    assert "system:serviceaccount:modelfleet:modelfleet" in exempt["expression"]
    refused = next(v for v in spec["variables"] if v["name"] == "refused")["expression"]
    assert "authorizer.group('').resource('secrets')" in refused and "check('get').allowed()" in refused
    assert not find(render({"secretReferences": {"admissionPolicy": False}}), "ValidatingAdmissionPolicy")
