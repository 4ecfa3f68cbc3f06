"""One model's reconcile, decided from a snapshot: children, shared objects, statuses, finalizers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core import drift
from modelfleet_operator.core.canary import analysis_targets
from modelfleet_operator.core.manifests import build_children
from modelfleet_operator.core.model import FINALIZER, ModelDecision, decide
from modelfleet_operator.core.rollout import Counts
from modelfleet_operator.core.snapshot import ModelSnapshot, Observations

MakeMV = Callable[..., dict[str, Any]]
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SERVICE = OperatorConfig(scale_down_delay_seconds=30)
GATEWAY = OperatorConfig(routing="gateway", gateway="infra/public", gateway_domain="models.example.org")


class Model:
    """A little cluster for one model: ModelVersions, their Deployments as the controller reports
    them, and their pods; `snapshot()` is what the cache would hand the reconcile."""

    def __init__(self, make_mv: MakeMV, config: OperatorConfig = SERVICE) -> None:
        self.make_mv = make_mv
        self.config = config
        self.versions: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        # The optional kinds the cluster serves (the shell discovers them).
        self.served: frozenset[str] = frozenset()

    def version(
        self, name: str, version: str, *, created: int = 0, status: dict[str, Any] | None = None, **spec: Any
    ) -> dict[str, Any]:
        mv = self.make_mv(name=name, uid=f"uid-{name}", version=version, **spec)
        mv["metadata"].update(
            {"generation": 1, "resourceVersion": "1", "creationTimestamp": f"2026-01-0{created + 1}T00:00:00Z"}
        )
        mv["status"] = copy.deepcopy(status or {})
        self.versions[name] = mv
        return mv

    def running(self, name: str, replicas: int, ready: int | None = None) -> None:
        """The version's Deployment at `replicas`, `ready` of them ready (default: all)."""
        mv = self.versions[name]
        [deployment, service, *_] = build_children(mv, self.config)
        deployment = drift.stamped(deployment)
        deployment["spec"]["replicas"] = replicas
        deployment["metadata"].update({"generation": 1, "uid": f"dep-{name}"})
        ready = replicas if ready is None else ready
        deployment["status"] = {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        self.deployments[name] = deployment
        self.services[name] = drift.stamped(service)
        version = mv["spec"]["version"]
        self.pods = [p for p in self.pods if p["metadata"]["labels"]["serving.modelfleet.dev/version"] != version]
        for i in range(replicas):
            self.pods.append(pod(f"{name}-{i}", version, ready=i < ready))

    def snapshot(self) -> ModelSnapshot:
        return ModelSnapshot(
            namespace="ml",
            model="fraud",
            versions=list(self.versions.values()),
            deployments=self.deployments,
            services=self.services,
            shared={"Service": self.services["fraud"]} if "fraud" in self.services else {},
            pods=self.pods,
            served=self.served,
        )

    def decide(self, observations: Observations | None = None, now: datetime = NOW) -> ModelDecision:
        return decide(self.snapshot(), observations or Observations(), self.config, now)


def pod(name: str, version: str, *, ready: bool = True, waiting: dict[str, str] | None = None) -> dict[str, Any]:
    state = {"waiting": waiting} if waiting else {"running": {}}
    return {
        "metadata": {
            "name": name,
            "labels": {"serving.modelfleet.dev/model": "fraud", "serving.modelfleet.dev/version": version},
        },
        "spec": {"containers": [{"name": "runtime", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {
            "podIP": "127.0.0.9",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "runtime", "ready": ready, "state": state}],
        },
    }


def replicas_of(decision: ModelDecision, name: str) -> int | None:
    deployment = next((c for c in decision.versions[name].children if c["kind"] == "Deployment"), None)
    return None if deployment is None else deployment["spec"].get("replicas")


def condition(decision: ModelDecision, name: str, kind: str) -> dict[str, Any]:
    return next(c for c in decision.versions[name].status["conditions"] if c["type"] == kind)


@pytest.fixture
def model(make_mv: MakeMV) -> Model:
    return Model(make_mv)


# --- one version -------------------------------------------------------------------------------------


def test_a_new_version_gets_its_children_at_full_replicas_and_the_shared_service(model: Model) -> None:
    model.version("fraud-v1", "1", replicas=2)
    decision = model.decide()
    assert [c["kind"] for c in decision.versions["fraud-v1"].children] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
    assert replicas_of(decision, "fraud-v1") == 2
    assert [(m["kind"], m["metadata"]["name"]) for m in decision.shared] == [
        ("Service", "fraud"),
        ("NetworkPolicy", "fraud"),
    ]
    status = decision.versions["fraud-v1"].status
    assert status["phase"] == "Pending" and status["servingTraffic"] == 0
    assert not decision.versions["fraud-v1"].finalizer  # alone: deleting it protects nothing


def test_a_ready_lone_version_serves_everything_with_no_finalizer(
    model: Model, mv_validator: jsonschema.Validator
) -> None:
    model.version("fraud-v1", "1", replicas=2)
    model.running("fraud-v1", 2)
    decision = model.decide()
    status = decision.versions["fraud-v1"].status
    assert status["phase"] == "Ready" and status["servingTraffic"] == 100
    assert status["fullShareReplicas"] == 2 and status["endpoint"] == "http://fraud.ml.svc.cluster.local"
    assert condition(decision, "fraud-v1", "TrafficAssigned")["reason"] == "Assigned"
    assert not decision.versions["fraud-v1"].finalizer
    checked = {**model.versions["fraud-v1"], "status": {k: v for k, v in status.items() if v is not None}}
    assert [e.message for e in mv_validator.iter_errors(checked)] == []


# --- a canary, its analysis and its rollback --------------------------------------------------------


def serving_pair(model: Model, *, canary_weight: int = 10, rollout: dict[str, Any] | None = None) -> None:
    model.version("fraud-v1", "1", replicas=2, status={"servingTraffic": 91, "phase": "Ready"})
    spec = {"rollout": rollout} if rollout else {}
    model.version(
        "fraud-v2",
        "2",
        created=1,
        replicas=2,
        traffic=canary_weight,
        status={"servingTraffic": 9, "phase": "Ready"},
        **spec,
    )
    model.running("fraud-v1", 2)
    model.running("fraud-v2", 1)


def test_two_serving_versions_both_carry_the_finalizer(model: Model) -> None:
    serving_pair(model)
    decision = model.decide()
    assert decision.versions["fraud-v1"].finalizer and decision.versions["fraud-v2"].finalizer
    owners = [o["name"] for o in decision.shared[0]["metadata"]["ownerReferences"]]
    assert owners == ["fraud-v1", "fraud-v2"]


def test_only_the_candidate_is_analysed_against_the_stable_version(model: Model) -> None:
    serving_pair(model, rollout={"maxErrorRate": 0.05, "minRequests": 10})
    assert analysis_targets(model.snapshot(), model.config) == ["fraud-v1", "fraud-v2"]
    decision = model.decide()
    assert decision.stable == "fraud-v1" and decision.candidates == ("fraud-v2",)
    assert decision.requeue_after == 5.0  # the next analysis


def test_a_canary_answering_errors_is_rolled_back_and_scaled_to_zero_in_service_mode(model: Model) -> None:
    serving_pair(model, rollout={"maxErrorRate": 0.05, "minRequests": 10})
    model.versions["fraud-v2"]["status"]["rollout"] = {
        "windowStart": "2026-03-01T11:59:50Z",
        "requestsAtWindowStart": 0,
        "errorsAtWindowStart": 0,
        "stableRequestsAtWindowStart": 0,
        "stableErrorsAtWindowStart": 0,
        "stableVersion": "fraud-v1",
        "analysisStart": "2026-03-01T11:59:50Z",
    }
    counts = {"fraud-v2": Counts(40, 30), "fraud-v1": Counts(400, 0)}
    decision = model.decide(Observations(counts=counts))
    canary = decision.versions["fraud-v2"]
    assert canary.status["phase"] == "Degraded" and canary.status["servingTraffic"] == 0
    assert canary.status["rollout"]["rolledBack"] is True
    assert condition(decision, "fraud-v2", "RolledBack")["reason"] == "ErrorRateExceeded"
    assert condition(decision, "fraud-v2", "TrafficAssigned")["reason"] == "RolledBack"
    assert [e["reason"] for e in canary.events] == ["RolledBack"]
    assert replicas_of(decision, "fraud-v2") == 0  # its pods leave the shared Service's endpoints at once
    assert decision.versions["fraud-v1"].status["servingTraffic"] == 100 and replicas_of(decision, "fraud-v1") == 2


def test_the_stable_version_is_never_judged_whatever_its_errors(model: Model) -> None:
    serving_pair(model, rollout={"maxErrorRate": 0.05, "minRequests": 10})
    model.versions["fraud-v1"]["spec"]["rollout"] = {"maxErrorRate": 0.05, "minRequests": 10}
    counts = {"fraud-v2": Counts(40, 0), "fraud-v1": Counts(400, 300)}
    decision = model.decide(Observations(counts=counts))
    assert "rollout" not in decision.versions["fraud-v1"].status
    assert decision.versions["fraud-v1"].status["servingTraffic"] == 91


def test_in_gateway_mode_a_rolled_back_canary_keeps_its_replicas_warm_at_weight_zero(make_mv: MakeMV) -> None:
    model = Model(make_mv, GATEWAY)
    serving_pair(model, rollout={"maxErrorRate": 0.05, "minRequests": 10})
    model.running("fraud-v2", 2)
    rolled = model.versions["fraud-v2"]
    rolled["status"]["rollout"] = {"rolledBack": True}
    rolled["status"]["conditions"] = [{"type": "RolledBack", "status": "True", "observedGeneration": 1, "message": "x"}]
    decision = model.decide()
    route = next(m for m in decision.shared if m["kind"] == "HTTPRoute")
    assert route["spec"]["hostnames"] == ["fraud-ml.models.example.org"]
    assert [(b["name"], b["weight"]) for b in route["spec"]["rules"][-1]["backendRefs"]] == [("fraud-v1", 100)]
    assert replicas_of(decision, "fraud-v2") == 2
    assert decision.versions["fraud-v1"].status["endpoint"] == "http://fraud-ml.models.example.org"


def test_in_gateway_mode_the_grpcroute_carries_the_same_split_as_the_httproute(make_mv: MakeMV) -> None:
    model = Model(make_mv, GATEWAY)
    model.served = frozenset({"GRPCRoute"})
    serving_pair(model)
    decision = model.decide()
    routes = {m["kind"]: m for m in decision.shared if m["kind"] in ("HTTPRoute", "GRPCRoute")}
    weights = {
        kind: [(b["name"], b["weight"]) for b in route["spec"]["rules"][-1]["backendRefs"]]
        for kind, route in routes.items()
    }
    shares = [(n, decision.versions[n].status["servingTraffic"]) for n in ("fraud-v1", "fraud-v2")]
    assert weights == {"HTTPRoute": shares, "GRPCRoute": shares}
    assert {b["port"] for r in routes["GRPCRoute"]["spec"]["rules"] for b in r["backendRefs"]} == {8081}


def test_without_the_grpcroute_kind_gateway_mode_makes_only_the_httproute(make_mv: MakeMV) -> None:
    model = Model(make_mv, GATEWAY)
    serving_pair(model)
    assert [m["kind"] for m in model.decide().shared] == ["Service", "HTTPRoute", "NetworkPolicy"]


# --- transitions ------------------------------------------------------------------------------------


def test_a_promotion_scales_the_child_up_before_the_parent_gives_anything_up(model: Model) -> None:
    serving_pair(model, canary_weight=100)
    model.versions["fraud-v1"]["spec"]["traffic"] = 0
    step = model.decide()
    assert replicas_of(step, "fraud-v2") == 2 and replicas_of(step, "fraud-v1") == 2
    assert step.versions["fraud-v1"].status["servingTraffic"] == 91  # until fraud-v2 is Available at 2
    assert (
        "waiting for fraud-v2 to have 2 Available replica(s)"
        in condition(step, "fraud-v2", "TrafficAssigned")["message"]
    )

    model.running("fraud-v2", 2)
    switched = model.decide()
    assert switched.versions["fraud-v2"].status["servingTraffic"] == 100
    parent = switched.versions["fraud-v1"]
    assert parent.status["servingTraffic"] == 0 and replicas_of(switched, "fraud-v1") == 2
    assert parent.status["scaleDownAt"] == "2026-03-01T12:00:30Z"
    assert condition(switched, "fraud-v1", "TrafficAssigned")["reason"] == "Draining"
    assert switched.requeue_after == 30.0

    for name in ("fraud-v1", "fraud-v2"):
        model.versions[name]["status"] = dict(switched.versions[name].status)
    retired = model.decide(now=NOW + timedelta(seconds=30))
    assert replicas_of(retired, "fraud-v1") == 0
    assert retired.versions["fraud-v1"].status["phase"] == "Retired"
    assert retired.versions["fraud-v1"].status["scaleDownAt"] is None
    assert not retired.versions["fraud-v1"].finalizer  # nothing left to protect


def test_deleting_the_serving_version_holds_its_finalizer_until_the_others_carry_the_traffic(model: Model) -> None:
    serving_pair(model, canary_weight=100)
    model.versions["fraud-v1"]["metadata"]["deletionTimestamp"] = "2026-03-01T11:59:00Z"
    model.versions["fraud-v1"]["metadata"]["finalizers"] = [FINALIZER]
    step = model.decide()
    assert step.versions["fraud-v1"].finalizer and replicas_of(step, "fraud-v2") == 2
    assert [o["name"] for o in step.shared[0]["metadata"]["ownerReferences"]] == ["fraud-v2"]
    model.running("fraud-v2", 2)
    switched = model.decide()
    assert switched.versions["fraud-v1"].finalizer  # the delay still runs
    model.versions["fraud-v1"]["status"] = dict(switched.versions["fraud-v1"].status)
    gone = model.decide(now=NOW + timedelta(seconds=31))
    assert not gone.versions["fraud-v1"].finalizer and not gone.versions["fraud-v1"].children


def test_a_version_being_deleted_gives_up_waiting_after_the_handover_timeout(model: Model) -> None:
    serving_pair(model, canary_weight=100)
    model.versions["fraud-v1"]["metadata"]["deletionTimestamp"] = "2026-03-01T11:00:00Z"
    model.running("fraud-v2", 1, ready=0)  # it can never take over
    assert not model.decide().versions["fraud-v1"].finalizer


# --- rules the schema cannot check ----------------------------------------------------------------


def test_the_newer_of_two_versions_with_the_same_version_fails_and_the_older_is_untouched(model: Model) -> None:
    model.version("fraud-v1", "1", replicas=2)
    model.running("fraud-v1", 2)
    before = model.decide()
    model.version("fraud-one", "1", created=3)
    decision = model.decide()
    dup = decision.versions["fraud-one"]
    assert dup.status["phase"] == "Failed" and not dup.children and not dup.finalizer
    ready = condition(decision, "fraud-one", "Ready")
    assert (
        ready["reason"] == "DuplicateVersion" and "ModelVersion fraud-v1 already serves version '1'" in ready["message"]
    )
    assert decision.versions["fraud-v1"].children == before.versions["fraud-v1"].children
    assert decision.shared == before.shared  # the duplicate owns nothing


def test_a_service_named_like_the_model_that_someone_else_owns_fails_every_version_and_stays_untouched(
    model: Model,
) -> None:
    model.version("fraud-v1", "1")
    model.services["fraud"] = {
        "metadata": {"name": "fraud", "namespace": "ml", "labels": {"app.kubernetes.io/managed-by": "Helm"}}
    }
    decision = model.decide()
    version = decision.versions["fraud-v1"]
    assert version.status["phase"] == "Failed" and not version.children and not decision.shared
    ready = condition(decision, "fraud-v1", "Ready")
    assert ready["reason"] == "ObjectConflict"
    assert ready["message"].startswith(
        "Service ml/fraud is managed by Helm; it would be the shared Service of model fraud"
    )


# --- why pods do not run -----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff"])
def test_pods_that_cannot_run_fail_the_version_with_the_kubelets_reason_and_message(model: Model, reason: str) -> None:
    model.version("fraud-v1", "1")
    model.running("fraud-v1", 1, ready=0)
    model.pods = [
        pod("fraud-v1-0", "1", ready=False, waiting={"reason": reason, "message": "back-off pulling image x"})
    ]
    decision = model.decide()
    status = decision.versions["fraud-v1"].status
    assert status["phase"] == "Failed"
    ready = condition(decision, "fraud-v1", "Ready")
    assert ready["reason"] == reason and "pod fraud-v1-0: back-off pulling image x" in ready["message"]
    assert condition(decision, "fraud-v1", "Available")["reason"] == reason


@pytest.mark.parametrize(
    ("cond", "reason"),
    [
        (
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": "exceeded quota: compute, requested: cpu=1",
            },
            "ReplicaFailure",
        ),
        (
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "x" has timed out progressing.',
            },
            "ProgressDeadlineExceeded",
        ),
    ],
)
def test_a_deployment_that_cannot_make_or_roll_out_pods_fails_the_version_with_its_message(
    model: Model, cond: dict[str, str], reason: str
) -> None:
    model.version("fraud-v1", "1")
    model.running("fraud-v1", 1, ready=0)
    model.pods = []
    model.deployments["fraud-v1"]["status"]["conditions"] = [cond]
    decision = model.decide()
    assert decision.versions["fraud-v1"].status["phase"] == "Failed"
    ready = condition(decision, "fraud-v1", "Ready")
    assert ready["reason"] == reason and ready["message"] == cond["message"]


def test_full_share_replicas_describe_the_same_quantity_as_spec_replicas(model: Model) -> None:
    model.version("fraud-v1", "1", replicas=4, traffic=50, status={"servingTraffic": 50, "phase": "Ready"})
    model.version("fraud-v2", "2", created=1, replicas=4, traffic=50, status={"servingTraffic": 50, "phase": "Ready"})
    model.running("fraud-v1", 2)
    model.running("fraud-v2", 2)
    decision = model.decide()
    for name in ("fraud-v1", "fraud-v2"):
        status = decision.versions[name].status
        assert (status["replicas"], status["desiredReplicas"], status["fullShareReplicas"]) == (2, 2, 4)


def test_an_unchanged_model_decides_the_same_status_again(model: Model) -> None:
    serving_pair(model)
    first = model.decide()
    for name in ("fraud-v1", "fraud-v2"):
        model.versions[name]["status"] = dict(first.versions[name].status)
    second = model.decide(now=NOW + timedelta(minutes=5))
    for name in ("fraud-v1", "fraud-v2"):
        assert second.versions[name].status == first.versions[name].status


def test_a_model_whose_gateway_hostname_is_not_a_dns_name_fails_with_what_to_change(make_mv: MakeMV) -> None:
    model = Model(make_mv, GATEWAY)
    long = "m" * 62
    mv = model.version("fraud-v1", "1")
    mv["spec"]["model"] = long  # {model}-{namespace}: a 63+ character label
    decision = decide(ModelSnapshot("ml", long, [mv]), Observations(), GATEWAY, NOW)
    ready = condition(decision, "fraud-v1", "Ready")
    assert decision.versions["fraud-v1"].status["phase"] == "Failed" and ready["reason"] == "InvalidHostname"
    assert "is not a DNS name" in ready["message"] and not decision.shared
