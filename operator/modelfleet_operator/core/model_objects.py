"""The objects one model shares across its versions, as pure builders.

`MODEL_BUILDERS` lists them (`SharedObject`: the kind, when the configuration
wants it, and a builder that takes a `ModelObjects` — the model's versions,
their traffic shares, the configuration — and returns the manifest). The model
reconciler applies what they build, checks that an existing object of that kind
and name is the model's own (`ownership`), and deletes nothing else: a new
shared object (a NetworkPolicy, a GRPCRoute) is one more entry here, plus its
kind among the watched ones (`shell.kube` and `shell.handlers.owned_kinds`).

- the shared Service named after the model: selects every pod of every version
  (kube-proxy sends only to ready pods), owned without a controller by every
  live version, so the garbage collector removes it with the last one;
- the HTTPRoute named after the model, in gateway mode: it matches only the
  model's hostname (`gateway-hostname-template`), pins a version by the header
  `x-model-version`, and splits the rest by the versions' shares;
- the GRPCRoute named after the model, in gateway mode when the cluster serves
  the GRPCRoute kind (`ModelObjects.served`, discovered by the shell at start):
  the same parent, hostname, pins and weights, to the Services' gRPC port;
- the NetworkPolicy named after the model (`network-policy`, on by default): its
  runtime pods take connections only from the namespaces that need them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core.manifests import (
    GRPC_PORT_NAME,
    LABEL_MODEL,
    PORT_NAME,
    model_labels,
    owner_reference,
    service_ports,
)
from modelfleet_operator.core.traffic import GRPC_SERVICE_PORT, HEADER_VERSION, SERVICE_PORT

# Gateway API allows 16 rules per HTTPRoute: one per pinned version plus the weighted default.
MAX_PINNED_VERSIONS = 15
MAX_BACKENDS = 16
# Shared kinds a cluster may not serve: built only when the shell found them in the API's discovery.
OPTIONAL_KINDS = frozenset({"GRPCRoute"})


@dataclass(frozen=True)
class ModelObjects:
    """What the model's shared objects are built from.

    `versions`: the ModelVersions that take part in the model's traffic (valid, not duplicates,
    those being deleted included while they hand over), sorted by name; `owners`: those of them
    that are not being deleted (the garbage collector removes the shared objects with the last);
    `shares`: the share each serves now, by name; `version_of`: spec.version by name;
    `served`: the optional kinds the cluster serves (the GRPCRoute CRD may not be installed).
    """

    model: str
    namespace: str
    versions: Sequence[Mapping[str, Any]]
    owners_of: Sequence[Mapping[str, Any]]
    shares: Mapping[str, int]
    version_of: Mapping[str, str]
    config: OperatorConfig
    served: frozenset[str] = frozenset()

    def owners(self) -> list[dict[str, Any]]:
        return [r for r in (owner_reference(v, controller=False) for v in self.owners_of) if r]

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.model, "namespace": self.namespace, "labels": model_labels(self.model)}
        owners = self.owners()
        if owners:
            meta["ownerReferences"] = owners
        return meta


ModelBuilder = Callable[[ModelObjects], "dict[str, Any] | None"]


@dataclass(frozen=True)
class SharedObject:
    """One object a model shares across its versions, named like the model."""

    kind: str  # the manifest's kind, as it is stored
    wanted: Callable[[OperatorConfig], bool]
    build: ModelBuilder


def build_model_service(model: ModelObjects) -> dict[str, Any]:
    """The model's shared Service (see the module docstring)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": model.metadata(),
        "spec": {"type": "ClusterIP", "selector": {LABEL_MODEL: model.model}, "ports": service_ports()},
    }


def _parent_ref(model: ModelObjects) -> dict[str, Any]:
    gateway_namespace, gateway_name = model.config.gateway_ref
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway_name}
    if gateway_namespace and gateway_namespace != model.namespace:
        parent["namespace"] = gateway_namespace
    return parent


def _backend(name: str, port: int, weight: int) -> dict[str, Any]:
    return {"group": "", "kind": "Service", "name": name, "port": port, "weight": weight}


def _pinned_and_serving(model: ModelObjects) -> tuple[list[str], list[str]]:
    """(versions pinnable by the header, versions of the weighted default rule), by name, sorted."""
    names = [str(v["metadata"]["name"]) for v in model.versions]
    ordered = sorted(names, key=lambda n: (-model.shares.get(n, 0), n))
    # Gateways normalise weights over the listed backends; past 16 the smallest shares are dropped.
    serving = [n for n in ordered if model.shares.get(n, 0) > 0][:MAX_BACKENDS]
    return sorted(ordered[:MAX_PINNED_VERSIONS]), sorted(serving)


def build_httproute(model: ModelObjects) -> dict[str, Any] | None:
    """The model's HTTPRoute in gateway mode (None in service mode).

    It matches only `config.gateway_hostname(model, namespace)`, so the routes of many models
    share one Gateway without overlapping. One rule per version matches the header
    `x-model-version: VERSION` and pins it (more header matches take precedence over the
    default rule); the last rule sends everything else to the versions with a positive
    share, weighted by it. With more than 15 versions only the 15 with the largest shares are
    pinnable, and at most 16 versions share the default rule (the Gateway API's limits).
    """
    if model.config.routing != "gateway":
        return None
    pinned, serving = _pinned_and_serving(model)
    everything = {"type": "PathPrefix", "value": "/"}
    rules: list[dict[str, Any]] = [
        {
            "matches": [
                {
                    "path": everything,
                    "headers": [{"type": "Exact", "name": HEADER_VERSION, "value": model.version_of[n]}],
                }
            ],
            "backendRefs": [_backend(n, SERVICE_PORT, 1)],
        }
        for n in pinned
    ]
    rules.append(
        {
            "matches": [{"path": everything}],
            "backendRefs": [_backend(n, SERVICE_PORT, model.shares[n]) for n in serving],
        }
    )
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": model.metadata(),
        "spec": {
            "parentRefs": [_parent_ref(model)],
            "hostnames": [model.config.gateway_hostname(model.model, model.namespace)],
            "rules": rules,
        },
    }


def build_grpcroute(model: ModelObjects) -> dict[str, Any] | None:
    """The model's GRPCRoute in gateway mode, when the cluster serves GRPCRoutes (None otherwise).

    The HTTPRoute's twin for the Open Inference Protocol's gRPC service: the same parent Gateway
    and hostname, one rule per version that pins it by the metadata `x-model-version` (gRPC
    metadata travels as HTTP/2 headers), and a default rule without matches (every method)
    weighted by the shares, to the Services' `grpc` port. The same limits as the HTTPRoute's.
    """
    if model.config.routing != "gateway" or "GRPCRoute" not in model.served:
        return None
    pinned, serving = _pinned_and_serving(model)
    rules: list[dict[str, Any]] = [
        {
            "matches": [{"headers": [{"type": "Exact", "name": HEADER_VERSION, "value": model.version_of[n]}]}],
            "backendRefs": [_backend(n, GRPC_SERVICE_PORT, 1)],
        }
        for n in pinned
    ]
    rules.append({"backendRefs": [_backend(n, GRPC_SERVICE_PORT, model.shares[n]) for n in serving]})
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": model.metadata(),
        "spec": {
            "parentRefs": [_parent_ref(model)],
            "hostnames": [model.config.gateway_hostname(model.model, model.namespace)],
            "rules": rules,
        },
    }


# The runtime container's ports a NetworkPolicy admits, by name (the pods' own port names).
NETWORK_POLICY_PORTS = (PORT_NAME, GRPC_PORT_NAME)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def admitted_namespaces(model: str, namespace: str, config: OperatorConfig) -> list[str]:
    """Namespaces whose pods may reach a model's runtime pods: the model's own, the Gateway's (gateway
    routing), the operator's (readiness and metrics), and `network-policy-namespaces`."""
    names = [namespace]
    if config.routing == "gateway":
        names.append(config.gateway_ref[0] or namespace)
    if config.operator_namespace:
        names.append(config.operator_namespace)
    names.extend(config.network_policy_namespaces)
    return sorted(set(names))


def build_network_policy(model: ModelObjects) -> dict[str, Any]:
    """The model's NetworkPolicy (`network-policy`): ingress to its runtime pods' ports only from the
    admitted namespaces (`admitted_namespaces`), everything else denied. Egress is left alone: the
    pods download models and read the feature store from addresses only the spec knows."""
    namespaces = admitted_namespaces(model.model, model.namespace, model.config)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": model.metadata(),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_MODEL: model.model}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": namespaces}
                                ]
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": name} for name in NETWORK_POLICY_PORTS],
                }
            ],
        },
    }


MODEL_BUILDERS: tuple[SharedObject, ...] = (
    SharedObject("Service", lambda config: True, build_model_service),
    SharedObject("HTTPRoute", lambda config: config.routing == "gateway", build_httproute),
    SharedObject("GRPCRoute", lambda config: config.routing == "gateway", build_grpcroute),
    SharedObject("NetworkPolicy", lambda config: config.network_policy, build_network_policy),
)


def shared_kinds(config: OperatorConfig) -> list[str]:
    """The kinds of the shared objects a model has in this configuration."""
    return [shared.kind for shared in MODEL_BUILDERS if shared.wanted(config)]


def build_model_objects(model: ModelObjects) -> list[dict[str, Any]]:
    """Every shared object of the model in this configuration (empty when no version stays)."""
    if not model.owners_of:
        return []
    built = (shared.build(model) for shared in MODEL_BUILDERS if shared.wanted(model.config))
    return [manifest for manifest in built if manifest is not None]


def endpoint(model: str, namespace: str, config: OperatorConfig) -> str:
    """status.endpoint: the address that applies the model's split (DESIGN.md section 2)."""
    if config.routing == "gateway":
        return f"http://{config.gateway_hostname(model, namespace)}"
    return f"http://{model}.{namespace}.svc.{config.cluster_domain}"


__all__ = [
    "MAX_BACKENDS",
    "MAX_PINNED_VERSIONS",
    "MODEL_BUILDERS",
    "NETWORK_POLICY_PORTS",
    "OPTIONAL_KINDS",
    "ModelBuilder",
    "ModelObjects",
    "SharedObject",
    "admitted_namespaces",
    "build_grpcroute",
    "build_httproute",
    "build_model_objects",
    "build_model_service",
    "build_network_policy",
    "endpoint",
    "shared_kinds",
]
