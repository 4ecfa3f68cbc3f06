"""What the API server does to an object before it stores it: prune, default, canonicalise.

So that a controller that compares what it wants with what it reads sees what it
would see on a real cluster:

- unknown fields are pruned (by the built-in OpenAPI schema, or the CRD's
  structural schema unless `x-kubernetes-preserve-unknown-fields`), `null`s are
  dropped, and in built-in kinds an empty map or list is omitted as Go's
  `omitempty` omits it (a struct such as `resources: {}` stays);
- resource quantities (every field whose type is `resource.Quantity`) take their
  canonical form (`quantities.py`): `cpu: 1` -> "1", `1024Mi` -> "1Gi";
- defaults, each as the Kubernetes defaulting functions set them
  (pkg/apis/{core,apps,batch,autoscaling}/v1*/defaults.go): pod templates
  (dnsPolicy, restartPolicy, schedulerName, securityContext, terminationGracePeriodSeconds;
  per container imagePullPolicy by tag, terminationMessagePath/Policy, port
  protocol, probe timings, httpGet path/scheme, fieldRef apiVersion; volume
  defaultMode), Deployments (replicas, strategy with 25%/25%, revisionHistoryLimit,
  progressDeadlineSeconds), Services (type, sessionAffinity, port protocol and
  targetPort, internalTrafficPolicy, and the allocated clusterIP, clusterIPs,
  ipFamilies, ipFamilyPolicy), Jobs (completions, parallelism, backoffLimit,
  completionMode, suspend, podReplacementPolicy, and the generated selector and
  controller-uid/job-name labels), HPAs (minReplicas, the 80% CPU metric,
  behavior rules when behavior is given), Pods (requests from limits,
  enableServiceLinks), Namespaces, Secrets, PVCs, EndpointSlice ports, HTTPRoute
  (the defaults of the Gateway API CRD's schema) and every `default` of a CRD's
  schema.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from . import quantities
from .schemas import Schema
from .writes import WriteError

Obj = dict[str, Any]


# -- pruning, nulls, omitempty and quantities, by schema ----------------------------------------


def canonicalise(obj: Any, schema: Schema | None, *, builtin: bool, path: str = "") -> Any:
    """`obj` pruned to its schema, without nulls (and empty maps and lists in built-in kinds), quantities canonical."""
    if schema is None:
        return obj
    if schema.is_quantity and obj is not None:
        try:
            return quantities.canonical(obj)
        except quantities.QuantityError as exc:
            raise WriteError(422, "Invalid", f"{path or 'quantity'}: Invalid value: {exc}") from None
    if isinstance(obj, dict):
        if schema.preserves_unknown and not schema.raw.get("properties"):
            return obj
        result = {}
        for key, value in obj.items():
            if value is None and not schema.nullable:
                continue
            if not schema.knows(key):
                continue  # pruned, as the API server prunes unknown fields
            child_schema = schema.field(key)
            child = canonicalise(value, child_schema, builtin=builtin, path=f"{path}.{key}")
            if builtin and _omitted_when_empty(child, child_schema):
                continue
            result[key] = child
        return result
    if isinstance(obj, list):
        items = schema.items()
        return [canonicalise(item, items, builtin=builtin, path=f"{path}[{i}]") for i, item in enumerate(obj)]
    return obj


def _omitted_when_empty(value: Any, schema: Schema | None) -> bool:
    """Go's `omitempty`: an empty list or map is not serialised (an empty struct is)."""
    return value == [] or (value == {} and schema is not None and schema.is_map)


# -- defaults of built-in kinds ------------------------------------------------------------------


def _set(target: Obj, key: str, value: Any) -> None:
    if target.get(key) in (None, ""):
        target[key] = copy.deepcopy(value)


def _probe(probe: Obj | None) -> None:
    if not isinstance(probe, dict):
        return
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)):
        _set(probe, key, value)
    get = probe.get("httpGet")
    if isinstance(get, dict):
        _set(get, "path", "/")
        _set(get, "scheme", "HTTP")


def image_pull_policy(image: str) -> str:
    """Always for `:latest` or no tag (and no digest), else IfNotPresent."""
    name = image.rsplit("@", 1)[0] if "@" in image else image
    last = name.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else ("" if "@" in image else "latest")
    return "Always" if tag == "latest" else "IfNotPresent"


def _container(container: Obj) -> None:
    _set(container, "imagePullPolicy", image_pull_policy(str(container.get("image", ""))))
    _set(container, "terminationMessagePath", "/dev/termination-log")
    _set(container, "terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        _set(port, "protocol", "TCP")
    for key in ("readinessProbe", "livenessProbe", "startupProbe"):
        _probe(container.get(key))
    for env in container.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef")
        if isinstance(field_ref, dict):
            _set(field_ref, "apiVersion", "v1")


def pod_spec(spec: Obj) -> None:
    _set(spec, "dnsPolicy", "ClusterFirst")
    _set(spec, "restartPolicy", "Always")
    _set(spec, "schedulerName", "default-scheduler")
    _set(spec, "terminationGracePeriodSeconds", 30)
    if spec.get("securityContext") is None:
        spec["securityContext"] = {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        _container(container)
    for volume in spec.get("volumes") or []:
        for source in ("secret", "configMap", "projected", "downwardAPI"):
            if isinstance(volume.get(source), dict):
                _set(volume[source], "defaultMode", 420)
        if not set(volume) - {"name"}:
            volume["emptyDir"] = {}


def _template(obj: Obj) -> None:
    spec = (obj.get("spec") or {}).get("template", {}).get("spec")
    if isinstance(spec, dict):
        pod_spec(spec)


def deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    _set(spec, "replicas", 1)
    strategy = spec.setdefault("strategy", {})
    _set(strategy, "type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        _set(rolling, "maxUnavailable", "25%")
        _set(rolling, "maxSurge", "25%")
    _set(spec, "revisionHistoryLimit", 10)
    _set(spec, "progressDeadlineSeconds", 600)
    _template(obj)


def replica_set(obj: Obj) -> None:
    _set(obj.setdefault("spec", {}), "replicas", 1)
    _template(obj)


SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")


def cluster_ip(namespace: str, name: str) -> str:
    """A stable address in the service CIDR (a real allocator picks one at random; nothing connects to it here)."""
    digest = int.from_bytes(hashlib.sha256(f"{namespace}/{name}".encode()).digest()[:4], "big")
    return str(SERVICE_CIDR.network_address + 10 + digest % (SERVICE_CIDR.num_addresses - 12))


def service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    _set(spec, "type", "ClusterIP")
    _set(spec, "sessionAffinity", "None")
    for port in spec.get("ports") or []:
        _set(port, "protocol", "TCP")
        _set(port, "targetPort", port.get("port"))
    if spec["type"] != "ExternalName":
        _set(spec, "internalTrafficPolicy", "Cluster")
        meta = obj.get("metadata") or {}
        _set(spec, "clusterIP", cluster_ip(meta.get("namespace", ""), meta.get("name", "")))
        _set(spec, "clusterIPs", [spec["clusterIP"]])
        _set(spec, "ipFamilies", ["IPv4"])
        _set(spec, "ipFamilyPolicy", "SingleStack")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        _set(spec, "externalTrafficPolicy", "Cluster")
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def job(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    _set(spec, "parallelism", 1)
    _set(spec, "backoffLimit", 6)
    _set(spec, "completionMode", "NonIndexed")
    _set(spec, "suspend", False)
    _set(spec, "podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    meta = obj.get("metadata") or {}
    uid, name = meta.get("uid"), meta.get("name")
    if uid and not spec.get("manualSelector"):
        generated = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name}
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
        for key, value in {**generated, "controller-uid": uid, "job-name": name}.items():
            labels.setdefault(key, value)
    _template(obj)


_SCALE_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ],
}
_SCALE_DOWN = {
    "stabilizationWindowSeconds": 300,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
}


def hpa(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    _set(spec, "minReplicas", 1)
    if not spec.get("metrics"):
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
            }
        ]
    behavior = spec.get("behavior")
    if isinstance(behavior, dict):
        for direction, defaults in (("scaleUp", _SCALE_UP), ("scaleDown", _SCALE_DOWN)):
            rules = behavior.setdefault(direction, {})
            for key, value in defaults.items():
                _set(rules, key, value)


def pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    pod_spec(spec)
    _set(spec, "enableServiceLinks", True)
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = container.setdefault("resources", {})
        for key, value in (resources.get("limits") or {}).items():
            resources.setdefault("requests", {}).setdefault(key, value)


def namespace(obj: Obj) -> None:
    name = (obj.get("metadata") or {}).get("name")
    obj.setdefault("metadata", {}).setdefault("labels", {}).setdefault("kubernetes.io/metadata.name", name)
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def secret(obj: Obj) -> None:
    _set(obj, "type", "Opaque")


def pvc(obj: Obj) -> None:
    _set(obj.setdefault("spec", {}), "volumeMode", "Filesystem")


def endpoint_slice(obj: Obj) -> None:
    for port in obj.get("ports") or []:
        port.setdefault("name", "")
        _set(port, "protocol", "TCP")


def http_route(obj: Obj) -> None:
    """The defaults in the Gateway API's HTTPRoute CRD schema (v1)."""
    spec = obj.setdefault("spec", {})
    for ref in spec.get("parentRefs") or []:
        _set(ref, "group", "gateway.networking.k8s.io")
        _set(ref, "kind", "Gateway")
    for rule in spec.get("rules") or []:
        if not rule.get("matches"):
            rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
        for match in rule["matches"]:
            if "path" in match or not (match.get("headers") or match.get("queryParams") or match.get("method")):
                path = match.setdefault("path", {})
                _set(path, "type", "PathPrefix")
                _set(path, "value", "/")
            for item in (match.get("headers") or []) + (match.get("queryParams") or []):
                _set(item, "type", "Exact")
        for ref in rule.get("backendRefs") or []:
            ref.setdefault("group", "")
            _set(ref, "kind", "Service")
            _set(ref, "weight", 1)


BUILTIN_DEFAULTS: dict[tuple[str, str], Callable[[Obj], None]] = {
    ("apps/v1", "Deployment"): deployment,
    ("apps/v1", "ReplicaSet"): replica_set,
    ("v1", "Service"): service,
    ("v1", "Pod"): pod,
    ("v1", "Namespace"): namespace,
    ("v1", "Secret"): secret,
    ("v1", "PersistentVolumeClaim"): pvc,
    ("batch/v1", "Job"): job,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): hpa,
    ("discovery.k8s.io/v1", "EndpointSlice"): endpoint_slice,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): http_route,
}


# -- defaults of custom resources, from their schema ---------------------------------------------


def schema_defaults(obj: Any, schema: Schema | None) -> Any:
    """Every `default` of a structural schema, for fields of objects that exist (recursively), as for CRDs."""
    if schema is None:
        return obj
    if isinstance(obj, dict):
        for key in schema.raw.get("properties") or {}:
            child = schema.field(key)
            if child is not None and key not in obj and child.has_default:
                obj[key] = copy.deepcopy(child.default)
        for key, value in obj.items():
            if key != "metadata":
                obj[key] = schema_defaults(value, schema.field(key))
        return obj
    if isinstance(obj, list):
        items = schema.items()
        return [schema_defaults(item, items) for item in obj]
    return obj


# -- one normaliser per kind -----------------------------------------------------------------------


def normaliser(
    api_version: str, kind: str, schema: Schema | None, *, builtin: bool
) -> tuple[Callable[[Obj], Obj], Callable[[Obj], Obj]]:
    """(normalise, canonicalise) for a kind: the whole of what the server does, and only the canonical forms."""
    defaults = BUILTIN_DEFAULTS.get((api_version, kind))

    def canonical(obj: Obj) -> Obj:
        # canonicalise builds new maps and lists wherever the schema reaches; the input is a fresh copy anyway.
        result: Obj = canonicalise(obj, schema, builtin=builtin)
        return result

    def normalise(obj: Obj) -> Obj:
        result = canonical(obj)
        if not builtin:
            result = schema_defaults(result, schema)
        if defaults is not None:
            defaults(result)
        return canonical(result) if defaults is not None else result

    return normalise, canonical


def keep_allocated(kind: str, old: Mapping[str, Any], new: Obj) -> None:
    """On update a Service keeps its allocated addresses when the new object leaves them out."""
    if kind != "Service":
        return
    old_spec, new_spec = old.get("spec") or {}, new.setdefault("spec", {})
    for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        if key in old_spec and key not in new_spec:
            new_spec[key] = copy.deepcopy(old_spec[key])


__all__ = ["BUILTIN_DEFAULTS", "canonicalise", "cluster_ip", "image_pull_policy", "normaliser", "schema_defaults"]
