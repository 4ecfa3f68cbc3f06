"""One model as a reconcile sees it: the snapshot the shell reads from its cache, what it learnt
from the pods, and each ModelVersion with its spec, its failure (a rejected spec, a duplicate, a
name someone else holds) and its live children and pods. Pure: nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import manifests, ownership, policy, status
from modelfleet_operator.core.model_objects import shared_kinds
from modelfleet_operator.core.rollout import Counts
from modelfleet_operator.core.traffic import Scale
from modelfleet_operator.spec import ModelVersionSpec

# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSnapshot:
    """One consistent view of a model, read from the cache in one go.

    `versions`: every ModelVersion of the model (those being deleted included).
    `deployments`, `services`, `hpas`, `pdbs`: the live objects named like the versions, by
    name, whoever owns them; `shared`: the live objects named like the model, by kind (the
    operator's cache holds what it labelled, and what a GET found that it did not).
    `pods`: the model's pods that are not terminating, with their labels.
    `consumable_secrets`: the names of the namespace's Secrets that carry the opt-in label.
    `served`: the optional kinds of shared objects the cluster serves (GRPCRoute), as discovered
    when the operator started.
    """

    namespace: str
    model: str
    versions: Sequence[Mapping[str, Any]]
    deployments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hpas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pdbs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    shared: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pods: Sequence[Mapping[str, Any]] = ()
    # Names of the namespace's Secrets that carry the consumable-secret-label (only those may be named).
    consumable_secrets: frozenset[str] = frozenset()
    served: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Observations:
    """What the shell learnt from the pods for this reconcile.

    `readiness`: the runtime's (state, reason) by pod name, for pods that are not ready.
    `counts`: inference requests and errors by version name, summed over every ready pod
    (absent when a pod did not answer, or when the analysis was not due).
    `endpoints`: ready endpoints of the version's own Service, by version name, for the versions
    about to take a share (`takers`): what the Gateway and kube-proxy can send to.
    """

    readiness: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    counts: Mapping[str, Counts] = field(default_factory=dict)
    endpoints: Mapping[str, int] = field(default_factory=dict)


# --- reading objects ----------------------------------------------------------------------------


def meta_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def name_of(obj: Mapping[str, Any]) -> str:
    return str(meta_of(obj)["name"])


def status_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def generation_of(mv: Mapping[str, Any]) -> int:
    return int(meta_of(mv).get("generation") or 1)


def condition_of(mv: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in status_of(mv).get("conditions") or [] if c.get("type") == kind), None)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status_of(pod).get("conditions") or [])


def _terminated_message(pod: Mapping[str, Any]) -> str | None:
    for cs in status_of(pod).get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            terminated = state.get("terminated")
            if terminated and (terminated.get("message") or terminated.get("reason")):
                return str(terminated.get("message") or terminated.get("reason")).strip()
    return None


def _waiting(pod: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for cs in status_of(pod).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"]), (str(waiting["message"]) if waiting.get("message") else None)
    return None, None


def pod_report(pod: Mapping[str, Any], readiness: Mapping[str, tuple[str | None, str | None]]) -> status.PodReport:
    ready = pod_ready(pod)
    state, reason = (status.READY.lower(), None) if ready else readiness.get(name_of(pod), (None, None))
    waiting, waiting_message = _waiting(pod)
    return status.PodReport(
        name=name_of(pod),
        ready=ready,
        state=state,
        reason=reason,
        terminated=_terminated_message(pod),
        waiting=waiting,
        waiting_message=waiting_message,
    )


def pod_port(pod: Mapping[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == manifests.PORT_NAME:
                return int(port["containerPort"])
    return manifests.CONTAINER_PORT


def pod_url(pod: Mapping[str, Any]) -> str | None:
    """The base URL of a pod's runtime on its own address (DESIGN.md section 7), None without one."""
    ip = status_of(pod).get("podIP")
    return f"http://{ip}:{pod_port(pod)}" if ip else None


# --- one version, as the decision sees it ------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """A ModelVersion with its spec (None when rejected), live children and pods."""

    mv: Mapping[str, Any]
    spec: ModelVersionSpec | None
    failure: Exception | None
    deployment: Mapping[str, Any] | None = None
    hpa: Mapping[str, Any] | None = None
    pdb: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()

    @property
    def name(self) -> str:
        return name_of(self.mv)

    @property
    def deleting(self) -> bool:
        return bool(meta_of(self.mv).get("deletionTimestamp"))

    @property
    def serving(self) -> int:
        return int(status_of(self.mv).get("servingTraffic") or 0)

    @property
    def takes_part(self) -> bool:
        """Valid, not a duplicate, no conflict: it has children and a place in the model's traffic."""
        return self.spec is not None and self.failure is None

    def live_scale(self) -> Scale | None:
        if self.deployment is None:
            return None
        replicas = int((self.deployment.get("spec") or {}).get("replicas", 1))
        if self.hpa is not None:
            hpa_spec = self.hpa.get("spec") or {}
            low = int(hpa_spec.get("minReplicas") or 1)
            return Scale(replicas=replicas, autoscaling=(low, int(hpa_spec.get("maxReplicas") or low)))
        return Scale(replicas=replicas)

    def available(self) -> int:
        dep = status_of(self.deployment or {})
        return int(dep.get("availableReplicas", dep.get("readyReplicas")) or 0)

    def reports(self, observations: Observations) -> list[status.PodReport]:
        return [pod_report(p, observations.readiness) for p in self.pods]

    def current(self, config: OperatorConfig) -> bool:
        """Whether its Deployment runs the template of its current spec."""
        return self.spec is not None and manifests.runs_current_spec(self.deployment, self.mv, config)


def _controlled(obj: Mapping[str, Any] | None, mv: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if obj is None or not ownership.controlled_by(obj, str(meta_of(mv).get("uid") or "")):
        return None
    return obj


def versions_of(snapshot: ModelSnapshot, config: OperatorConfig) -> list[Version]:
    """The snapshot's ModelVersions with their specs, failures and children, sorted by name."""
    dups = ownership.duplicates(v for v in snapshot.versions if _valid(v, config))
    model_conflict = _hostname_problem(snapshot, config) or _model_conflict(snapshot, config)
    out: list[Version] = []
    for mv in sorted(snapshot.versions, key=name_of):
        name = name_of(mv)
        spec: ModelVersionSpec | None = None
        failure: Exception | None = None
        try:
            spec = manifests.validated(mv, config)
        except manifests.SpecRejected as rejected:
            failure = rejected
        if failure is None and name in dups:
            failure = ownership.duplicate_error(dups[name], snapshot.model)
        if failure is None and spec is not None:
            failure = policy.secret_problem(spec, snapshot.consumable_secrets, config)
        if failure is None:
            failure = model_conflict or _version_conflict(snapshot, mv)
        pods = [] if spec is None or failure else _pods_of(snapshot, spec.version)
        out.append(
            Version(
                mv=mv,
                spec=spec,
                failure=failure,
                deployment=_controlled(snapshot.deployments.get(name), mv),
                hpa=_controlled(snapshot.hpas.get(name), mv),
                pdb=_controlled(snapshot.pdbs.get(name), mv),
                pods=pods,
            )
        )
    return out


def _valid(mv: Mapping[str, Any], config: OperatorConfig) -> bool:
    try:
        manifests.validated(mv, config)
    except manifests.SpecRejected:
        return False
    return True


def _pods_of(snapshot: ModelSnapshot, version: str) -> list[Mapping[str, Any]]:
    return sorted(
        (
            p
            for p in snapshot.pods
            if (meta_of(p).get("labels") or {}).get(manifests.LABEL_VERSION) == version
            and not meta_of(p).get("deletionTimestamp")
        ),
        key=name_of,
    )


def _version_conflict(snapshot: ModelSnapshot, mv: Mapping[str, Any]) -> ownership.Conflict | None:
    name = name_of(mv)
    for kind, objects in (
        ("Deployment", snapshot.deployments),
        ("Service", snapshot.services),
        ("HorizontalPodAutoscaler", snapshot.hpas),
        ("PodDisruptionBudget", snapshot.pdbs),
    ):
        found = ownership.version_object_conflict(kind, objects.get(name), mv)
        if found is not None:
            return found
    return None


class InvalidHostname(manifests.SpecRejected):
    reason = "InvalidHostname"


def _hostname_problem(snapshot: ModelSnapshot, config: OperatorConfig) -> InvalidHostname | None:
    """Gateway mode: the model's hostname must be a DNS name (labels of at most 63 characters)."""
    if config.routing != "gateway":
        return None
    host = config.gateway_hostname(snapshot.model, snapshot.namespace)
    labels = host.split(".")
    if len(host) <= 253 and all(0 < len(label) <= 63 for label in labels):
        return None
    return InvalidHostname(
        f"the model's hostname {host!r} (gateway-hostname-template {config.gateway_hostname_template!r}) is not a "
        "DNS name: a label has more than 63 characters; shorten the model or namespace name, or change the template"
    )


def _model_conflict(snapshot: ModelSnapshot, config: OperatorConfig) -> ownership.Conflict | None:
    for kind in shared_kinds(config):
        found = ownership.model_object_conflict(kind, snapshot.shared.get(kind), snapshot.model, snapshot.namespace)
        if found is not None:
            return found
    return None


__all__ = [
    "InvalidHostname",
    "ModelSnapshot",
    "Observations",
    "Version",
    "condition_of",
    "generation_of",
    "meta_of",
    "name_of",
    "pod_port",
    "pod_ready",
    "pod_report",
    "pod_url",
    "status_of",
    "versions_of",
]
