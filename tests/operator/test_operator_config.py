"""The operator's configuration: flags over MODELFLEET_OPERATOR_* over defaults, bad values refused."""

from __future__ import annotations

import pytest

from modelfleet_operator.config import (
    CONFIG_KEYS,
    ConfigError,
    OperatorConfig,
    env_name,
    image_allowed,
    load_config,
    parse_set_options,
)


def test_defaults() -> None:
    config = load_config({}, {})
    assert config.runtime_image == "ghcr.io/modelfleet/runtime:0.1.0"
    assert config.routing == "service" and config.cluster_domain == "cluster.local"
    assert config.allowed_images == ("ghcr.io/modelfleet/runtime",)
    # DESIGN.md section 9: https and in-cluster volumes only; http and file when configured
    assert config.allowed_uri_schemes == ("https", "pvc", "configmap")
    assert config.allowed_model_hosts == () and config.require_sha256 is False
    assert config.max_model_bytes == 4 * 1024**3 and config.download_timeout_seconds == 600.0
    assert config.allowed_trainer_images == ()  # no trainer code of its own by default
    assert config.consumable_secret_label == "serving.modelfleet.dev/consumable=true"
    assert config.network_policy is True
    assert config.namespaces == () and not config.all_namespaces and not config.standalone
    assert config.liveness_port == 8081
    assert config.default_resources["requests"]
    # The safety-net resync and the transition delays of DESIGN.md section 2.
    assert (config.resync_seconds, config.scale_down_delay_seconds) == (300.0, 30.0)
    assert config.gateway_hostname("fraud", "ml") == "fraud-ml.example.com"


def test_every_key_has_an_environment_variable() -> None:
    assert env_name("runtime-image") == "MODELFLEET_OPERATOR_RUNTIME_IMAGE"
    environ = {
        "MODELFLEET_OPERATOR_RUNTIME_IMAGE": "registry.local/runtime:2",
        "MODELFLEET_OPERATOR_ROUTING": "gateway",
        "MODELFLEET_OPERATOR_GATEWAY": "infra/public",
        "MODELFLEET_OPERATOR_CLUSTER_DOMAIN": "k8s.internal",
        "MODELFLEET_OPERATOR_ALLOWED_IMAGES": "registry.local/, ghcr.io/modelfleet/runtime",
        "MODELFLEET_OPERATOR_ALLOWED_URI_SCHEMES": "https,pvc",
        "MODELFLEET_OPERATOR_NAMESPACES": "ml,staging",
        "MODELFLEET_OPERATOR_ALL_NAMESPACES": "false",
        "MODELFLEET_OPERATOR_STANDALONE": "no",
        "MODELFLEET_OPERATOR_PEERING": "modelfleet",
        "MODELFLEET_OPERATOR_LIVENESS_PORT": "9000",
        "MODELFLEET_OPERATOR_LOG_LEVEL": "debug",
        "MODELFLEET_OPERATOR_LOG_FORMAT": "json",
        "MODELFLEET_OPERATOR_DEFAULT_RESOURCES": '{"requests": {"cpu": "1"}}',
        "MODELFLEET_OPERATOR_GATEWAY_HOSTNAME_TEMPLATE": "{model}.{namespace}.{domain}",
        "MODELFLEET_OPERATOR_GATEWAY_DOMAIN": "models.internal",
        "MODELFLEET_OPERATOR_RESYNC_SECONDS": "120",
        "MODELFLEET_OPERATOR_SCALE_DOWN_DELAY_SECONDS": "5.5",
        "MODELFLEET_OPERATOR_RETIRE_AFTER_SECONDS": "0",
        "MODELFLEET_OPERATOR_METRICS_PORT": "9090",
        "MODELFLEET_OPERATOR_ALLOWED_MODEL_HOSTS": "models.example.com,*.store.internal",
        "MODELFLEET_OPERATOR_REQUIRE_SHA256": "true",
        "MODELFLEET_OPERATOR_MAX_MODEL_BYTES": "1073741824",
        "MODELFLEET_OPERATOR_DOWNLOAD_TIMEOUT_SECONDS": "120",
        "MODELFLEET_OPERATOR_DOWNLOAD_ALLOWED_NETWORKS": "10.20.0.0/16",
        "MODELFLEET_OPERATOR_ALLOWED_TRAINER_IMAGES": "registry.local/trainer",
        "MODELFLEET_OPERATOR_CONSUMABLE_SECRET_LABEL": "example.com/modelfleet=yes",
        "MODELFLEET_OPERATOR_ALLOWED_REDIS_HOSTS": "redis.ml.svc",
        "MODELFLEET_OPERATOR_NETWORK_POLICY": "false",
        "MODELFLEET_OPERATOR_OPERATOR_NAMESPACE": "modelfleet",
        "MODELFLEET_OPERATOR_NETWORK_POLICY_NAMESPACES": "monitoring,envoy-gateway-system",
    }
    assert {k.removeprefix("MODELFLEET_OPERATOR_").lower().replace("_", "-") for k in environ} == set(CONFIG_KEYS)
    config = load_config({}, environ)
    assert config == OperatorConfig(
        runtime_image="registry.local/runtime:2",
        routing="gateway",
        gateway="infra/public",
        cluster_domain="k8s.internal",
        allowed_images=("registry.local/", "ghcr.io/modelfleet/runtime"),
        allowed_uri_schemes=("https", "pvc"),
        namespaces=("ml", "staging"),
        peering="modelfleet",
        liveness_port=9000,
        log_level="debug",
        log_format="json",
        default_resources={"requests": {"cpu": "1"}},
        allowed_model_hosts=("models.example.com", "*.store.internal"),
        require_sha256=True,
        max_model_bytes=1073741824,
        download_timeout_seconds=120.0,
        download_allowed_networks=("10.20.0.0/16",),
        allowed_trainer_images=("registry.local/trainer",),
        consumable_secret_label="example.com/modelfleet=yes",
        allowed_redis_hosts=("redis.ml.svc",),
        network_policy=False,
        operator_namespace="modelfleet",
        network_policy_namespaces=("monitoring", "envoy-gateway-system"),
        gateway_hostname_template="{model}.{namespace}.{domain}",
        gateway_domain="models.internal",
        resync_seconds=120.0,
        scale_down_delay_seconds=5.5,
        retire_after_seconds=0.0,
        metrics_port=9090,
    )
    assert config.gateway_hostname("fraud", "ml") == "fraud.ml.models.internal"


def test_a_flag_wins_over_its_variable() -> None:
    environ = {"MODELFLEET_OPERATOR_ROUTING": "gateway", "MODELFLEET_OPERATOR_GATEWAY": "gw"}
    assert load_config({"routing": "service"}, environ).routing == "service"
    assert load_config({"routing": None}, environ).routing == "gateway"
    assert load_config({"cluster_domain": "a.b"}, {}).cluster_domain == "a.b"  # argparse dest spelling


def test_the_allowed_images_follow_the_configured_runtime_image() -> None:
    assert load_config({"runtime-image": "registry.local:5000/ml/runtime:3"}, {}).allowed_images == (
        "registry.local:5000/ml/runtime",
    )


@pytest.mark.parametrize(
    ("image", "allowed", "expected"),
    [
        ("ghcr.io/modelfleet/runtime:0.2.0", ("ghcr.io/modelfleet/runtime",), True),
        ("ghcr.io/modelfleet/runtime@sha256:" + "a" * 64, ("ghcr.io/modelfleet/runtime",), True),
        ("ghcr.io/modelfleet/runtime", ("ghcr.io/modelfleet/runtime",), True),
        ("ghcr.io/modelfleet/runtime-evil:1", ("ghcr.io/modelfleet/runtime",), False),
        ("ghcr.io/modelfleet/runtime/../x:1", ("ghcr.io/modelfleet/runtime",), False),
        ("docker.io/library/python:3.12", ("ghcr.io/modelfleet/runtime",), False),
        ("registry.local/team/trainer:1", ("registry.local/",), True),
        ("registry.local.evil/x:1", ("registry.local/",), False),
        ("python:3.12", ("python:3.12",), True),
        ("python:3.13", ("python:3.12",), False),
    ],
)
def test_image_allow_list(image: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert image_allowed(image, allowed) is expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"routing": "mesh"}, "routing must be one of service, gateway"),
        ({"routing": "gateway"}, "routing gateway needs gateway"),
        ({"gateway": "a/b/c"}, "gateway must be NAMESPACE/NAME"),
        ({"allowed-uri-schemes": "https,s3"}, "unknown scheme(s) s3"),
        ({"liveness-port": "http"}, "liveness-port: expected a whole number"),
        ({"liveness-port": "70000"}, "liveness-port must be between 1 and 65535"),
        ({"standalone": "maybe"}, "standalone: expected true or false"),
        ({"log-level": "loud"}, "log-level must be one of"),
        ({"default-resources": "cpu=1"}, "default-resources: expected a JSON object"),
        ({"namespaces": ["ML"]}, "namespace 'ML' is not a valid namespace name"),
        ({"namespaces": ["ml"], "all-namespaces": True}, "not both"),
        ({"runtime-image": "a b"}, "runtime-image must be an image reference"),
        ({"peering": "Bad Name"}, "peering must be a DNS name"),
        ({"peering": "modelfleet", "standalone": "true"}, "either peering or standalone"),
        ({"replicas": "3"}, "unknown configuration key(s) replicas"),
        ({"resync-seconds": "0.5"}, "resync-seconds must be between 1 and 86400 seconds"),
        ({"metrics-port": "70000"}, "metrics-port must be between 0 (off) and 65535"),
        ({"metrics-port": "8081"}, "metrics-port and liveness-port must differ"),
        ({"resync-seconds": "often"}, "resync-seconds: expected a number of seconds"),
        ({"resync-seconds": "nan"}, "resync-seconds: expected a number of seconds"),
        ({"scale-down-delay-seconds": "-1"}, "scale-down-delay-seconds must be between 0 and 86400"),
        ({"retire-after-seconds": "1e9"}, "retire-after-seconds must be between 0 and 86400"),
        ({"gateway-hostname-template": "{name}.{domain}"}, "is not a template of {model}, {namespace}, {domain}"),
        ({"gateway-hostname-template": "models.example.com"}, "must contain {model}"),
        ({"gateway-hostname-template": "{model}_{namespace}.{domain}"}, "make a DNS name"),
        ({"gateway-domain": "Example.COM"}, "gateway-domain must be a DNS name"),
    ],
)
def test_bad_values_are_refused_naming_the_key(args: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(args, {})
    assert message in str(err.value)


def test_set_options_parse_key_value_pairs() -> None:
    assert parse_set_options(["routing=gateway", "gateway=infra/gw", 'default-resources={"a":1}']) == {
        "routing": "gateway",
        "gateway": "infra/gw",
        "default-resources": '{"a":1}',
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options(["routing"])
