"""The operator's picture of the cluster: every object it watches, in memory, fed by kopf's watch events.

kopf lists and watches ModelVersions and, with a server-side label selector on
`app.kubernetes.io/managed-by=modelfleet-operator`, the objects the operator
creates (Deployments, Services, HPAs, PDBs, Pods, Jobs, HTTPRoutes, GRPCRoutes). Its index
handlers, which kopf calls for every object before it lets any other handler
run, put each object here (`observe`); its event handlers take the deleted ones
out (`forget`) and say which models to reconcile (`models_of`). A reconcile
reads a `ModelSnapshot` from here in one go, without a request.

The operator's own writes go in as soon as the API server answers
(`observe` of the answer), so the next reconcile does not see its previous
state; an older watch event arriving after that is ignored (resourceVersions
of one object only grow, and the API servers the operator meets write them as
numbers). Objects another party owns are not watched; a GET that found one
before a create is remembered (`remember_foreign`) and looked at again every
`FOREIGN_TTL_SECONDS` by the reconciles of the model that wants the name.

Secrets are watched only with the server-side selector of `consumable-secret-label`,
and only their names and labels are kept (`observe_consumable_secret`): the
snapshot says which names a ModelVersion may reference.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from modelfleet_operator.core import manifests
from modelfleet_operator.core.retraining import LABEL_PARENT
from modelfleet_operator.core.snapshot import ModelSnapshot
from modelfleet_operator.shell import kube as k8s
from modelfleet_operator.shell.kube import Kind

ModelKey = tuple[str, str]  # (namespace, model)
# How often a foreign object found by a GET is looked at again (the watch cannot see it go).
FOREIGN_TTL_SECONDS = 30.0


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _version(obj: Mapping[str, Any]) -> int | None:
    raw = _meta(obj).get("resourceVersion")
    try:
        return int(str(raw))
    except ValueError:
        return None


class Cache:
    """Objects by kind and (namespace, name), and the models they belong to (see the module docstring)."""

    def __init__(self) -> None:
        self._objects: dict[Kind, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
        self._by_model: dict[Kind, dict[ModelKey, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._model_of: dict[tuple[Kind, str, str], str] = {}
        self._foreign: dict[tuple[Kind, str, str], tuple[float, dict[str, Any]]] = {}

    # -- feeding ---------------------------------------------------------------------------------

    def observe(self, kind: Kind, obj: Mapping[str, Any]) -> bool:
        """Store the object as the API server has it now; False when it is older than what is stored."""
        meta = _meta(obj)
        key = (str(meta.get("namespace") or ""), str(meta["name"]))
        stored = self._objects[kind].get(key)
        if stored is not None and _meta(stored).get("uid") == meta.get("uid"):
            old, new = _version(stored), _version(obj)
            if old is not None and new is not None and new < old:
                return False
        self._objects[kind][key] = copy.deepcopy(dict(obj))
        self._foreign.pop((kind, *key), None)
        self._index(kind, key, self._model_label(kind, obj))
        return True

    def forget(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        """Drop a deleted object (unless what is stored is a newer incarnation of the name)."""
        meta = _meta(obj)
        key = (str(meta.get("namespace") or ""), str(meta["name"]))
        stored = self._objects[kind].get(key)
        if stored is None:
            return
        if _meta(stored).get("uid") != meta.get("uid"):
            return
        del self._objects[kind][key]
        self._index(kind, key, None)

    def remember_foreign(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        meta = _meta(obj)
        key = (kind, str(meta.get("namespace") or ""), str(meta["name"]))
        self._foreign[key] = (time.monotonic() + FOREIGN_TTL_SECONDS, copy.deepcopy(dict(obj)))

    def forget_foreign(self, kind: Kind, namespace: str, name: str) -> None:
        self._foreign.pop((kind, namespace, name), None)

    def foreign_names(
        self, namespace: str, names: Iterable[str], *, stale_only: bool = False
    ) -> list[tuple[Kind, str]]:
        """The remembered foreign objects among `names` (only those due for a new look, with `stale_only`)."""
        wanted = set(names)
        moment = time.monotonic()
        return [
            (kind, name)
            for (kind, ns, name), (expires, _) in self._foreign.items()
            if ns == namespace and name in wanted and (not stale_only or expires <= moment)
        ]

    def names_of(self, namespace: str, model: str) -> list[str]:
        """The object names a model's reconcile looks up: its versions' names and the model's."""
        return [*(str(_meta(v)["name"]) for v in self.of_model(k8s.MODELVERSIONS, namespace, model)), model]

    def _model_label(self, kind: Kind, obj: Mapping[str, Any]) -> str | None:
        if kind == k8s.MODELVERSIONS:
            return str((obj.get("spec") or {}).get("model") or "") or None
        labels = _meta(obj).get("labels") or {}
        if labels.get(manifests.LABEL_MODEL):
            return str(labels[manifests.LABEL_MODEL])
        # A trainer pod carries no model label (the Services must not select it), but its parent's name.
        return labels.get("app.kubernetes.io/name") if labels.get(LABEL_PARENT) else None

    def _index(self, kind: Kind, key: tuple[str, str], model: str | None) -> None:
        namespace, name = key
        previous = self._model_of.pop((kind, namespace, name), None)
        if previous is not None:
            members = self._by_model[kind].get((namespace, previous))
            if members is not None:
                members.discard(name)
                if not members:
                    del self._by_model[kind][(namespace, previous)]
        if model:
            self._model_of[(kind, namespace, name)] = model
            self._by_model[kind][(namespace, model)].add(name)

    # -- reading ---------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (the cache's own copy: do not change it), or a remembered foreign one."""
        found = self._objects[kind].get((namespace, name))
        if found is not None:
            return found
        foreign = self._foreign.get((kind, namespace, name))
        return foreign[1] if foreign is not None else None

    def of_model(self, kind: Kind, namespace: str, model: str) -> list[dict[str, Any]]:
        names = self._by_model[kind].get((namespace, model), set())
        return [self._objects[kind][(namespace, n)] for n in sorted(names) if (namespace, n) in self._objects[kind]]

    def models_of(self, kind: Kind, obj: Mapping[str, Any]) -> set[ModelKey]:
        """The models an event about `obj` concerns: its own, and any whose object names it shares."""
        namespace = str(_meta(obj).get("namespace") or "")
        name = str(_meta(obj).get("name") or "")
        keys: set[ModelKey] = set()
        model = self._model_label(kind, obj)
        if model:
            keys.add((namespace, model))
        # A shared object named like a version of another model, or the reverse (ownership conflicts).
        if (
            kind in (k8s.SERVICES, k8s.HTTPROUTES, k8s.GRPCROUTES, k8s.NETWORKPOLICIES)
            and (namespace, name) in self._by_model[k8s.MODELVERSIONS]
        ):
            keys.add((namespace, name))
        namesake = self._objects[k8s.MODELVERSIONS].get((namespace, name))
        if namesake is not None and kind != k8s.MODELVERSIONS:
            keys.add((namespace, str((namesake.get("spec") or {}).get("model"))))
        return keys

    def models(self) -> set[ModelKey]:
        """Every model that has a ModelVersion or an object the operator made."""
        keys: set[ModelKey] = set()
        for by_model in self._by_model.values():
            keys.update(by_model)
        return keys

    def snapshot(
        self, namespace: str, model: str, shared: Iterable[Kind] = (), served: frozenset[str] = frozenset()
    ) -> ModelSnapshot:
        """Everything one reconcile of the model reads, in one consistent view; `shared`: the kinds of
        the model's shared objects (looked up by the model's name); `served`: the optional kinds the
        cluster serves."""
        versions = self.of_model(k8s.MODELVERSIONS, namespace, model)
        names = [str(_meta(v)["name"]) for v in versions]

        def named(kind: Kind, wanted: Iterable[str]) -> dict[str, dict[str, Any]]:
            return {n: obj for n in wanted if (obj := self.get(kind, namespace, n)) is not None}

        return ModelSnapshot(
            namespace=namespace,
            model=model,
            versions=versions,
            deployments=named(k8s.DEPLOYMENTS, names),
            services=named(k8s.SERVICES, names),
            hpas=named(k8s.HPAS, names),
            pdbs=named(k8s.PDBS, names),
            shared={k8s.KIND_NAMES[kind]: obj for kind in shared if (obj := self.get(kind, namespace, model))},
            pods=[p for p in self.of_model(k8s.PODS, namespace, model) if not _is_trainer(p)],
            consumable_secrets=frozenset(name for ns, name in self._objects[k8s.SECRETS] if ns == namespace),
            served=served,
        )

    def observe_consumable_secret(self, secret: Mapping[str, Any]) -> None:
        """Keep a Secret that carries the opt-in label: its name and labels, never its data."""
        meta = _meta(secret)
        kept = {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion", "labels") if meta.get(k)}
        self.observe(k8s.SECRETS, {"metadata": kept})

    def models_naming_secret(self, namespace: str, name: str) -> set[ModelKey]:
        """The models of the namespace with a version that references the Secret `name`."""
        keys: set[ModelKey] = set()
        for (ns, _), mv in self._objects[k8s.MODELVERSIONS].items():
            if ns == namespace and name in referenced_secret_names(mv):
                keys.add((ns, str((mv.get("spec") or {}).get("model"))))
        return keys

    def jobs(self, namespace: str, model: str) -> list[dict[str, Any]]:
        return self.of_model(k8s.JOBS, namespace, model)

    def pods_owned_by(self, namespace: str, model: str, uid: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.of_model(k8s.PODS, namespace, model)
            if any(ref.get("uid") == uid for ref in _meta(p).get("ownerReferences") or [])
        ]

    def count(self, kind: Kind) -> int:
        return len(self._objects[kind])


def referenced_secret_names(mv: Mapping[str, Any]) -> set[str]:
    """The Secret names a ModelVersion object references, read loosely (its spec may be invalid)."""
    spec = mv.get("spec") or {}
    refs = (
        ((spec.get("features") or {}).get("redis") or {}).get("passwordSecretRef"),
        (spec.get("retraining") or {}).get("tokenSecretRef"),
        spec.get("predictToken"),
    )
    return {str(ref["name"]) for ref in refs if isinstance(ref, Mapping) and ref.get("name")}


def _is_trainer(pod: Mapping[str, Any]) -> bool:
    return LABEL_PARENT in (_meta(pod).get("labels") or {})


__all__ = ["FOREIGN_TTL_SECONDS", "Cache", "ModelKey"]
