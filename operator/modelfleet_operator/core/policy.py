"""What a ModelVersion may reach and use, by the operator's configuration (DESIGN.md section 9).

Pure checks on a validated spec, run before anything of the version is written
(`manifests.check_policy`): the model URI's scheme and host, its sha256, the
trainer's command, the feature store's host. Each failure is a `SpecRejected`
whose reason names the rule and whose message names the setting to change.

Secret references are checked against the cluster (`secret_problem`): a Secret
may be referenced only when it carries the label `consumable-secret-label`
names. The shell watches the Secrets that carry it (metadata only is kept) and
the snapshot says which names it saw.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from modelfleet_operator.config import OperatorConfig, host_allowed, image_allowed
from modelfleet_operator.core.errors import SpecRejected
from modelfleet_operator.spec import ModelVersionSpec


class UriSchemeNotAllowed(SpecRejected):
    reason = "UriSchemeNotAllowed"


class ModelHostNotAllowed(SpecRejected):
    reason = "ModelHostNotAllowed"


class Sha256Required(SpecRejected):
    reason = "Sha256Required"


class TrainerNotAllowed(SpecRejected):
    reason = "TrainerNotAllowed"


class RedisHostNotAllowed(SpecRejected):
    reason = "RedisHostNotAllowed"


class SecretNotConsumable(SpecRejected):
    reason = "SecretNotConsumable"


def check_source(spec: ModelVersionSpec, config: OperatorConfig) -> None:
    """The model URI: an allowed scheme, an allowed host (http and https), a sha256 when required."""
    uri = urlsplit(spec.source.uri)
    if uri.scheme not in config.allowed_uri_schemes:
        raise UriSchemeNotAllowed(
            f"spec.source.uri uses {uri.scheme}://, which this operator does not allow "
            f"(allowed-uri-schemes: {', '.join(s + '://' for s in config.allowed_uri_schemes)}); "
            "publish the model through one of those, or ask the operator's administrator to allow it"
        )
    host = uri.hostname or ""
    hosts = config.allowed_model_hosts
    if uri.scheme in ("http", "https") and hosts and not host_allowed(host, hosts):
        raise ModelHostNotAllowed(
            f"spec.source.uri names host {host!r}, which this operator does not allow "
            f"(allowed-model-hosts: {', '.join(hosts)}); publish the model on one "
            "of those, or ask the operator's administrator to allow the host"
        )
    if config.require_sha256 and not spec.source.sha256:
        raise Sha256Required(
            "spec.source.sha256 is required by this operator (require-sha256): add the model file's "
            "SHA-256 (sha256sum model.onnx)"
        )


def check_trainer(spec: ModelVersionSpec, config: OperatorConfig) -> None:
    """A custom trainer command runs only in an image of `allowed-trainer-images` (empty by default)."""
    retraining = spec.retraining
    if retraining is None or not retraining.command:
        return
    image = retraining.image or ""
    if not image_allowed(image, config.allowed_trainer_images):
        allowed = ", ".join(config.allowed_trainer_images) or "none"
        raise TrainerNotAllowed(
            f"spec.retraining.command runs only in an image of the operator's allowed-trainer-images "
            f"(allowed: {allowed}), and {image!r} is not one: the trainer's report decides promotion, so "
            "only administrator-approved code may write it; remove command to train with "
            "`modelfleet-runtime train`, or ask the operator's administrator to allow the image"
        )


def custom_trainer_command(spec: ModelVersionSpec, config: OperatorConfig) -> bool:
    """Whether the trainer runs the image's own command or entrypoint (an allowed trainer image)
    rather than `modelfleet-runtime train`."""
    image = spec.retraining.image if spec.retraining else None
    return bool(image and image_allowed(image, config.allowed_trainer_images))


def check_redis(spec: ModelVersionSpec, config: OperatorConfig) -> None:
    """features.redis.url names a host of `allowed-redis-hosts` when that is set."""
    if spec.features is None or not config.allowed_redis_hosts:
        return
    host = urlsplit(spec.features.redis.url).hostname or ""
    if not host_allowed(host, config.allowed_redis_hosts):
        raise RedisHostNotAllowed(
            f"spec.features.redis.url names host {host!r}, which this operator does not allow "
            f"(allowed-redis-hosts: {', '.join(config.allowed_redis_hosts)}); the password would be sent "
            "there: use an allowed feature store, or ask the operator's administrator to allow the host"
        )


def check(spec: ModelVersionSpec, config: OperatorConfig) -> None:
    """Every rule of this module that the configuration alone decides."""
    check_source(spec, config)
    check_trainer(spec, config)
    check_redis(spec, config)


def referenced_secrets(spec: ModelVersionSpec) -> list[tuple[str, str]]:
    """(field, Secret name) of every Secret the spec names (the operator's own token Secret is not one)."""
    refs: list[tuple[str, str]] = []
    if spec.features is not None and spec.features.redis.password_secret_ref is not None:
        refs.append(("spec.features.redis.passwordSecretRef", spec.features.redis.password_secret_ref.name))
    if spec.retraining is not None and spec.retraining.token_secret_ref is not None:
        refs.append(("spec.retraining.tokenSecretRef", spec.retraining.token_secret_ref.name))
    if spec.predict_token is not None:
        refs.append(("spec.predictToken", spec.predict_token.name))
    return refs


def secret_problem(
    spec: ModelVersionSpec, consumable: Collection[str], config: OperatorConfig
) -> SecretNotConsumable | None:
    """A SecretNotConsumable for the first referenced Secret that does not carry the opt-in label
    (`consumable`: the names of the namespace's Secrets that carry it); None when all do."""
    if not config.consumable_secret_label:
        return None
    for where, name in referenced_secrets(spec):
        if name not in consumable:
            return SecretNotConsumable(
                f"{where} names Secret {name!r}, which does not carry the label "
                f"{config.consumable_secret_label} (consumable-secret-label) or does not exist: a ModelVersion "
                f"may use only Secrets opted in for it; label it (kubectl label secret {name} "
                f"{config.consumable_secret_label}) if its owner agrees"
            )
    return None


__all__ = [
    "ModelHostNotAllowed",
    "RedisHostNotAllowed",
    "SecretNotConsumable",
    "Sha256Required",
    "TrainerNotAllowed",
    "UriSchemeNotAllowed",
    "check",
    "check_redis",
    "check_source",
    "check_trainer",
    "custom_trainer_command",
    "referenced_secrets",
    "secret_problem",
]
