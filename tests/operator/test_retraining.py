"""The retraining loop's pure decisions: when a Job starts, the Job, its outcome, the child version, promotion."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfleet_operator import spec as crd
from modelfleet_operator.config import OperatorConfig
from modelfleet_operator.core.manifests import (
    FEEDBACK_DIR,
    MODEL_ROOT,
    ImageNotAllowed,
    build_children,
    validated,
)
from modelfleet_operator.core.policy import TrainerNotAllowed
from modelfleet_operator.core.retraining import (
    ANNOTATION_METRICS,
    BACKOFF_MAX,
    LABEL_JOB,
    LABEL_PARENT,
    Metrics,
    Outcome,
    RetrainingError,
    active_jobs,
    attempt_of,
    backoff,
    build_child,
    build_job,
    child_name,
    child_version,
    failure_streak,
    job_name,
    job_outcome,
    metrics_of,
    next_attempt,
    output_dir,
    promotion,
    retraining_version,
    should_retrain,
)
from modelfleet_runtime import sources
from modelfleet_runtime.training import job as trainer

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# file:// sources are allowed here so the trainer's view of every source scheme is covered.
CONFIG = OperatorConfig(allowed_uri_schemes=("https", "pvc", "configmap", "file"))
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
MakeMV = Callable[..., dict[str, Any]]
SHA = "ab" * 32
CHILD_SHA = "cd" * 32
RETRAINING = {"feedbackClaim": "fraud-feedback", "minSamples": 100, "canaryTraffic": 15, "autoPromote": True}

SOURCES = {
    "https": {"uri": "https://models.example.com/fraud/2/model.onnx", "sha256": SHA},
    "pvc on the feedback claim": {"uri": "pvc://fraud-feedback/models/fraud-v1-retrain-1/model.onnx"},
    "pvc on another claim": {"uri": "pvc://models/fraud/model.onnx"},
    "configmap": {"uri": "configmap://tiny/model.onnx"},
    "file in the image": {"uri": "file:///opt/demo.onnx"},
}


def _retrainable(make_mv: MakeMV, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"version": "2", "source": SOURCES["https"], "retraining": dict(RETRAINING)}
    spec.update(overrides)
    return make_mv(name="fraud-v2", **spec)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def _finished_job(name: str, kind: str, when: datetime, reason: str = "BackoffLimitExceeded") -> dict[str, Any]:
    condition = {"type": kind, "status": "True", "lastTransitionTime": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    status: dict[str, Any] = {"conditions": [condition]}
    if kind == "Complete":
        status["succeeded"] = 1
        status["completionTime"] = condition["lastTransitionTime"]
    else:
        condition.update(reason=reason, message="Job has reached the specified backoff limit")
        status["failed"] = 2
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 1}, "status": status}


def _trainer_metrics() -> dict[str, Any]:
    """metrics.json as the built-in trainer writes it."""
    return {
        "task": "binary_classification",
        "metric": "accuracy",
        "higher_is_better": True,
        "parent": {"loss": 0.91, "accuracy": 0.31},
        "child": {"loss": 0.19, "accuracy": 0.94},
        "improved": True,
        "samples": {"unconsumed": 600, "used": 600, "train": 480, "holdout": 120, "skipped": 0, "skipped_reasons": {}},
        "model": {"file": "model.onnx", "sha256": CHILD_SHA, "bytes": 312},
        "run_id": "fraud-v2-retrain-1",
    }


def _succeeded(metrics: Metrics | None = None) -> Outcome:
    metrics = metrics or Metrics(
        sha256=CHILD_SHA, metric="accuracy", parent=0.31, child=0.94, improved=True, samples=600, higher_is_better=True
    )
    return Outcome("Succeeded", "Trained", "accuracy 0.31 -> 0.94", metrics, "2025-01-02T03:04:05Z")


# --- the Job ------------------------------------------------------------------------


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_job_is_a_valid_kubernetes_object(make_mv: MakeMV, source: str, version: str) -> None:
    mv = _retrainable(make_mv, source=SOURCES[source])
    kubernetes_validate.validate(build_job(mv, CONFIG, samples=120, attempt=1, now=NOW), version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_custom_trainer_job_is_a_valid_kubernetes_object(make_mv: MakeMV, version: str) -> None:
    config = OperatorConfig(
        allowed_images=("ghcr.io/modelfleet/",), allowed_trainer_images=("ghcr.io/modelfleet/trainer",)
    )
    retraining = {
        **RETRAINING,
        "image": "ghcr.io/modelfleet/trainer:1",
        "command": ["python", "-m", "train"],
        "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
    }
    job = build_job(_retrainable(make_mv, retraining=retraining), config, samples=120, attempt=1, now=NOW)
    kubernetes_validate.validate(job, version, strict=True)


def test_job_hands_the_trainer_its_contract_through_the_environment(
    make_mv: MakeMV, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = build_job(_retrainable(make_mv), CONFIG, samples=120, attempt=3, now=NOW)
    container = _container(job)
    assert container["command"] == ["modelfleet-runtime", "train"]
    assert container["image"] == CONFIG.runtime_image
    for name, value in _env(container).items():
        monkeypatch.setenv(name, value)
    args = trainer._parser().parse_args([])
    assert args.base_model == SOURCES["https"]["uri"]
    assert args.base_sha256 == SHA
    assert args.samples == FEEDBACK_DIR
    assert args.output == f"{FEEDBACK_DIR}/models/fraud-v2-retrain-3"
    assert args.run_id == "fraud-v2-retrain-3" == job["metadata"]["name"]
    assert args.model_root == MODEL_ROOT
    assert args.termination_log == container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "File"


@pytest.mark.parametrize("source", ["pvc on the feedback claim", "pvc on another claim", "configmap"])
def test_trainer_finds_the_parent_model_where_the_job_mounts_it_read_only(make_mv: MakeMV, source: str) -> None:
    job = build_job(_retrainable(make_mv, source=SOURCES[source]), CONFIG, samples=120, attempt=1, now=NOW)
    container = _container(job)
    path = sources.resolve_local(SOURCES[source]["uri"], MODEL_ROOT)
    assert path is not None
    mount = next(m for m in container["volumeMounts"] if PurePosixPath(path).is_relative_to(m["mountPath"]))
    assert mount["readOnly"] is True
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert len(claims) == len(set(claims))  # one volume per claim, mounted twice when it holds the parent


def test_feedback_claim_is_writable_and_the_output_lands_on_it(make_mv: MakeMV) -> None:
    job = build_job(_retrainable(make_mv), CONFIG, samples=120, attempt=1, now=NOW)
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    feedback = mounts[FEEDBACK_DIR]
    assert not feedback.get("readOnly")
    assert volumes[feedback["name"]]["persistentVolumeClaim"]["claimName"] == "fraud-feedback"
    assert PurePosixPath(_env(_container(job))["MODELFLEET_OUTPUT_DIR"]).is_relative_to(FEEDBACK_DIR)
    assert mounts["/tmp"]["name"] in {n for n, v in volumes.items() if "emptyDir" in v}


def test_trainer_pod_is_locked_down_like_the_runtime(make_mv: MakeMV) -> None:
    job = build_job(_retrainable(make_mv), CONFIG, samples=120, attempt=1, now=NOW)
    pod = job["spec"]["template"]["spec"]
    security = _container(job)["securityContext"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_job_is_bounded_in_retries_time_and_lifetime(make_mv: MakeMV) -> None:
    spec = build_job(_retrainable(make_mv), CONFIG, samples=120, attempt=1, now=NOW)["spec"]
    assert spec["backoffLimit"] == 1
    assert 0 < spec["activeDeadlineSeconds"] <= 24 * 3600
    assert spec["ttlSecondsAfterFinished"] >= 3600  # kept long enough to read why it failed
    # A training failure (exit 1) or usage error (exit 2) fails the Job at once: a retry cannot help.
    (fatal, _ignore) = spec["podFailurePolicy"]["rules"]
    assert fatal["action"] == "FailJob" and fatal["onExitCodes"]["values"] == [1, 2]


def test_job_is_owned_by_the_version_and_labelled_as_its_retraining(make_mv: MakeMV) -> None:
    job = build_job(_retrainable(make_mv), CONFIG, samples=120, attempt=2, now=NOW)
    meta = job["metadata"]
    assert meta["name"] == "fraud-v2-retrain-2" and meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": crd.API_VERSION,
            "kind": "ModelVersion",
            "name": "fraud-v2",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    labels = meta["labels"]
    assert labels["serving.modelfleet.dev/model"] == "fraud" and labels["serving.modelfleet.dev/version"] == "2"
    assert labels["serving.modelfleet.dev/role"] == "retraining"
    assert labels[LABEL_PARENT] == "fraud-v2"
    assert labels["app.kubernetes.io/component"] == "retraining"
    assert meta["annotations"]["serving.modelfleet.dev/trigger-samples"] == "120"


def test_trainer_pods_never_receive_inference_traffic(make_mv: MakeMV) -> None:
    mv = _retrainable(make_mv)
    pod_labels = build_job(mv, CONFIG, samples=120, attempt=1, now=NOW)["spec"]["template"]["metadata"]["labels"]
    services = [c for c in build_children(mv, CONFIG) if c["kind"] == "Service"]
    deployment = next(c for c in build_children(mv, CONFIG) if c["kind"] == "Deployment")
    model_selector = {"serving.modelfleet.dev/model": "fraud"}
    for selector in [
        *(s["spec"]["selector"] for s in services),
        model_selector,
        deployment["spec"]["selector"]["matchLabels"],
    ]:
        assert not set(selector.items()) <= set(pod_labels.items()), selector


def test_same_attempt_builds_the_same_job(make_mv: MakeMV) -> None:
    mv = _retrainable(make_mv)
    first = build_job(mv, CONFIG, samples=120, attempt=4, now=NOW)
    again = build_job(mv, CONFIG, samples=120, attempt=4, now=NOW)
    assert first == again
    assert (
        build_job(mv, CONFIG, samples=500, attempt=4, now=NOW + timedelta(hours=1))["metadata"]["name"]
        == (first["metadata"]["name"])
    )


def test_an_allowed_trainer_image_runs_its_own_command_and_resources(make_mv: MakeMV) -> None:
    config = OperatorConfig(
        allowed_images=("ghcr.io/modelfleet/",), allowed_trainer_images=("ghcr.io/modelfleet/trainer",)
    )
    retraining = {
        **RETRAINING,
        "image": "ghcr.io/modelfleet/trainer:1",
        "command": ["python", "-m", "train"],
        "resources": {"limits": {"memory": "4Gi"}},
    }
    job = build_job(_retrainable(make_mv, retraining=retraining), config, samples=120, attempt=1, now=NOW)
    container = _container(job)
    assert container["image"] == "ghcr.io/modelfleet/trainer:1"
    assert container["command"] == ["python", "-m", "train"]
    assert container["resources"] == {"limits": {"memory": "4Gi"}}
    assert "podFailurePolicy" not in job["spec"]  # its exit codes mean what its author decided
    image_only = {**RETRAINING, "image": "ghcr.io/modelfleet/trainer:1"}
    job = build_job(_retrainable(make_mv, retraining=image_only), config, samples=120, attempt=1, now=NOW)
    assert "command" not in _container(job)  # the image's own entrypoint


def test_a_custom_command_in_the_runtime_image_is_refused_with_the_setting_to_change(make_mv: MakeMV) -> None:
    # Issue 11, finding 1: the runtime image passes allowed-images, so its command ran anything and wrote
    # the report that decides promotion.
    retraining = {**RETRAINING, "image": "ghcr.io/modelfleet/runtime:0.1.0", "command": ["python", "-c", "evil"]}
    mv = _retrainable(make_mv, retraining=retraining)
    with pytest.raises(TrainerNotAllowed) as caught:
        build_job(mv, CONFIG, samples=120, attempt=1, now=NOW)
    assert caught.value.reason == "TrainerNotAllowed"
    assert "allowed-trainer-images" in str(caught.value) and "spec.retraining.command" in str(caught.value)
    with pytest.raises(TrainerNotAllowed):
        build_children(mv, CONFIG)  # nothing of the version is built either: it is Failed before it runs


def test_an_allowed_image_outside_the_trainer_allowlist_runs_the_runtimes_own_train(make_mv: MakeMV) -> None:
    config = OperatorConfig(allowed_images=("ghcr.io/modelfleet/",))
    for image in ("ghcr.io/modelfleet/runtime:0.1.0", "ghcr.io/modelfleet/trainer:1"):
        retraining = {**RETRAINING, "image": image}
        job = build_job(_retrainable(make_mv, retraining=retraining), config, samples=120, attempt=1, now=NOW)
        assert _container(job)["image"] == image
        assert _container(job)["command"] == ["modelfleet-runtime", "train"]  # never the image's entrypoint
        assert "podFailurePolicy" in job["spec"]


def test_trainer_without_resources_gets_the_operator_default(make_mv: MakeMV) -> None:
    job = build_job(_retrainable(make_mv), CONFIG, samples=120, attempt=1, now=NOW)
    assert _container(job)["resources"] == dict(CONFIG.default_resources)


def test_a_trainer_image_outside_the_allowed_images_is_rejected_with_what_to_do(make_mv: MakeMV) -> None:
    retraining = {**RETRAINING, "image": "docker.io/evil/miner:latest", "command": ["sh"]}
    with pytest.raises(ImageNotAllowed) as caught:
        build_job(_retrainable(make_mv, retraining=retraining), CONFIG, samples=120, attempt=1, now=NOW)
    message = str(caught.value)
    assert "docker.io/evil/miner:latest" in message and "ghcr.io/modelfleet/runtime" in message
    assert caught.value.reason == "ImageNotAllowed"


def test_a_version_without_retraining_has_no_job(make_mv: MakeMV) -> None:
    with pytest.raises(RetrainingError, match=r"no spec.retraining"):
        build_job(make_mv(), CONFIG, samples=120, attempt=1, now=NOW)


# --- names ----------------------------------------------------------------------------

dns_labels = st.from_regex(r"\A[a-z]([-a-z0-9]{0,61}[a-z0-9])?\Z")
versions = st.from_regex(r"\A[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?\Z")
attempts = st.integers(min_value=1, max_value=10**9)


@settings(deadline=None)
@given(parent=dns_labels, attempt=attempts)
def test_job_and_child_names_are_dns_labels_that_encode_the_attempt(parent: str, attempt: int) -> None:
    for name in (job_name(parent, attempt), child_name(parent, attempt)):
        assert len(name) <= 63 and re.fullmatch(crd.DNS1035_LABEL, name), name
    assert attempt_of(job_name(parent, attempt)) == attempt
    assert job_name(parent, attempt) == job_name(parent, attempt)
    assert child_name(parent, attempt) == child_name(parent, attempt)


@settings(deadline=None)
@given(parent=dns_labels, a=attempts, b=attempts)
def test_different_attempts_get_different_names(parent: str, a: int, b: int) -> None:
    if a != b:
        assert job_name(parent, a) != job_name(parent, b)
        assert child_name(parent, a) != child_name(parent, b)


@settings(deadline=None)
@given(
    stem=st.from_regex(r"\A[a-z][a-z0-9]{58}\Z"),
    tails=st.lists(st.from_regex(r"\A[a-z0-9]{3}\Z"), min_size=2, max_size=2, unique=True),
)
def test_long_parents_sharing_a_prefix_still_get_different_names(stem: str, tails: list[str]) -> None:
    one, two = (f"{stem}-{t}" for t in tails)
    assert child_name(one, 1) != child_name(two, 1)
    assert job_name(one, 1) != job_name(two, 1)


@settings(deadline=None)
@given(version=versions, attempt=attempts)
def test_child_version_always_fits_the_crd_version_pattern(version: str, attempt: int) -> None:
    child = child_version(version, attempt)
    assert len(child) <= 63 and re.fullmatch(crd.LABEL_VALUE, child), child
    assert child != version


def test_names_read_like_the_parent() -> None:
    assert job_name("fraud-v2", 3) == "fraud-v2-retrain-3"
    assert child_name("fraud-v2", 3) == "fraud-v2-r3"
    assert child_version("2", 3) == "2.r3"
    assert attempt_of("someone-elses-job") is None
    with pytest.raises(ValueError, match="attempt must be 1 or more, got 0"):
        job_name("fraud-v2", 0)


def test_next_attempt_counts_past_the_status_and_past_jobs_created_before_a_restart() -> None:
    assert next_attempt(None) == 1
    assert next_attempt({"job": "fraud-v2-retrain-4", "result": "Failed"}) == 5
    # The operator created attempt 5, then restarted before writing its status.
    listed = [{"metadata": {"name": "fraud-v2-retrain-5", "labels": {}}}]
    assert next_attempt({"job": "fraud-v2-retrain-4"}, listed) == 6
    # After the Jobs' TTL the status still remembers: attempts never repeat.
    assert next_attempt({"job": "fraud-v2-retrain-9"}, []) == 10


# --- when to retrain ------------------------------------------------------------------


def test_backoff_starts_at_a_minute_doubles_and_caps_at_an_hour() -> None:
    waits = [backoff(n) for n in range(12)]
    assert waits[0] == timedelta(0)
    assert waits[1] == timedelta(minutes=1) and waits[2] == timedelta(minutes=2) and waits[3] == timedelta(minutes=4)
    assert all(a <= b for a, b in itertools.pairwise(waits))
    assert waits[-1] == BACKOFF_MAX == timedelta(hours=1)
    assert backoff(10**6) == timedelta(hours=1)


@settings(deadline=None)
@given(failures=st.integers(min_value=1, max_value=10**6))
def test_backoff_is_never_shorter_than_the_last_one_and_never_longer_than_an_hour(failures: int) -> None:
    assert backoff(failures - 1) <= backoff(failures) <= timedelta(hours=1)


def test_retrain_when_the_threshold_is_reached_and_nothing_runs() -> None:
    decision = should_retrain(samples=100, min_samples=100, active_job=False, last_failure_at=None, failures=0, now=NOW)
    assert decision.retrain and decision.reason == "ThresholdReached"


def test_no_retraining_below_the_threshold_or_while_a_job_runs() -> None:
    below = should_retrain(samples=99, min_samples=100, active_job=False, last_failure_at=None, failures=0, now=NOW)
    assert not below.retrain and below.reason == "WaitingForSamples" and "99 of 100" in below.message
    running = should_retrain(samples=10**6, min_samples=100, active_job=True, last_failure_at=None, failures=0, now=NOW)
    assert not running.retrain and running.reason == "JobRunning"


def test_after_failures_the_next_job_waits_for_the_backoff() -> None:
    failed_at = NOW - timedelta(minutes=3)
    waiting = should_retrain(
        samples=500, min_samples=100, active_job=False, last_failure_at=failed_at, failures=3, now=NOW
    )
    assert not waiting.retrain and waiting.reason == "BackingOff"
    assert waiting.retry_at == failed_at + timedelta(minutes=4)
    later = should_retrain(
        samples=500,
        min_samples=100,
        active_job=False,
        last_failure_at=failed_at,
        failures=3,
        now=failed_at + timedelta(minutes=4),
    )
    assert later.retrain


def test_failure_streak_counts_back_from_the_newest_attempt() -> None:
    t = NOW - timedelta(hours=1)
    jobs = [
        _finished_job("fraud-v2-retrain-1", "Failed", t),
        _finished_job("fraud-v2-retrain-2", "Complete", t + timedelta(minutes=5)),
        _finished_job("fraud-v2-retrain-4", "Failed", t + timedelta(minutes=20)),
        _finished_job("fraud-v2-retrain-3", "Failed", t + timedelta(minutes=10)),
        {"metadata": {"name": "fraud-v2-retrain-5"}, "status": {"active": 1}},
    ]
    assert failure_streak(jobs) == (2, t + timedelta(minutes=20))
    assert failure_streak(jobs[:2]) == (0, None)
    assert [j["metadata"]["name"] for j in active_jobs(jobs)] == ["fraud-v2-retrain-5"]


# --- what a Job produced ----------------------------------------------------------------


def test_a_job_without_a_finished_condition_is_running() -> None:
    # One pod failed and its retry runs: not an outcome yet.
    job = {
        "metadata": {"name": "fraud-v2-retrain-1"},
        "spec": {"backoffLimit": 1},
        "status": {"active": 1, "failed": 1},
    }
    assert job_outcome(job, '{"ok": false, "reason": "TrainingFailed", "error": "x"}').result == "Running"


def test_success_carries_the_trainers_evaluation() -> None:
    message = json.dumps(trainer.summary(_trainer_metrics()))
    outcome = job_outcome(_finished_job("fraud-v2-retrain-1", "Complete", NOW), message)
    assert outcome.result == "Succeeded" and outcome.reason == "Trained"
    assert outcome.metrics == Metrics(
        sha256=CHILD_SHA, metric="accuracy", parent=0.31, child=0.94, improved=True, samples=600, higher_is_better=True
    )
    assert outcome.completion_time == "2025-01-02T03:04:05Z"
    assert "accuracy 0.31 -> 0.94" in outcome.message


def test_success_with_a_truncated_message_keeps_the_sha_but_has_no_evaluation() -> None:
    outcome = job_outcome(_finished_job("j-retrain-1", "Complete", NOW), json.dumps({"ok": True, "sha256": CHILD_SHA}))
    assert outcome.result == "Succeeded"
    assert outcome.metrics is not None and outcome.metrics.sha256 == CHILD_SHA
    assert outcome.metrics.beats_parent() is None


@pytest.mark.parametrize("message", [None, "", "Traceback (most recent call last):", "[1, 2]", '{"ok": tru'])
def test_success_without_a_readable_message_is_a_success_without_evaluation(message: str | None) -> None:
    outcome = job_outcome(_finished_job("j-retrain-1", "Complete", NOW), message)
    assert outcome.result == "Succeeded" and outcome.reason == "NoEvaluation"
    assert outcome.metrics is not None and outcome.metrics.sha256 is None
    assert "not promoted automatically" in outcome.message


def test_failure_says_the_trainers_reason() -> None:
    message = json.dumps({"ok": False, "reason": "UnsupportedModel", "error": "operator Conv is not supported"})
    outcome = job_outcome(_finished_job("j-retrain-1", "Failed", NOW, reason="PodFailurePolicy"), message)
    assert outcome.result == "Failed" and outcome.reason == "UnsupportedModel"
    assert "operator Conv is not supported" in outcome.message
    assert outcome.completion_time == "2025-01-02T03:04:05Z"


@pytest.mark.parametrize("reason", ["BackoffLimitExceeded", "DeadlineExceeded"])
def test_failure_without_a_message_says_the_jobs_reason(reason: str) -> None:
    outcome = job_outcome(_finished_job("j-retrain-1", "Failed", NOW, reason=reason), None)
    assert outcome.result == "Failed" and outcome.reason == reason and reason in outcome.message


def test_failure_with_a_garbled_message_keeps_the_text_for_a_person() -> None:
    outcome = job_outcome(_finished_job("j-retrain-1", "Failed", NOW), "Killed: out of memory")
    assert outcome.result == "Failed" and outcome.reason == "BackoffLimitExceeded"
    assert "Killed: out of memory" in outcome.message


def test_a_trainer_that_exits_0_but_reports_failure_failed() -> None:
    message = json.dumps({"ok": False, "reason": "NotEnoughSamples", "error": "1 usable sample"})
    outcome = job_outcome(_finished_job("j-retrain-1", "Complete", NOW), message)
    assert outcome.result == "Failed" and outcome.reason == "NotEnoughSamples"


def test_failed_pods_beyond_the_backoff_limit_without_a_condition_fail_the_job() -> None:
    job = {"metadata": {"name": "j-retrain-1"}, "spec": {"backoffLimit": 1}, "status": {"failed": 2}}
    assert job_outcome(job, None).result == "Failed"


def test_metrics_of_the_wrong_type_are_dropped_not_trusted() -> None:
    metrics = Metrics.from_mapping(
        {"sha256": "not-a-sha", "metric": "accuracy", "parent": "0.3", "child": True, "improved": "yes", "samples": -4}
    )
    assert metrics == Metrics(sha256=None, metric="accuracy", higher_is_better=True)
    assert metrics.beats_parent() is None


# --- the child ModelVersion -----------------------------------------------------------------


def _validate_mv(validator: jsonschema.Validator, mv: dict[str, Any]) -> None:
    errors = sorted(validator.iter_errors(mv), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_child_is_a_valid_model_version_the_operator_serves(
    make_mv: MakeMV, mv_validator: jsonschema.Validator
) -> None:
    parent = _retrainable(make_mv, replicas=3, rollout={"maxErrorRate": 0.1}, traffic=100)
    child = build_child(parent, _succeeded(), "fraud-v2-retrain-1", "fraud-feedback")
    _validate_mv(mv_validator, child)
    spec = validated(child, CONFIG)
    assert child["metadata"]["name"] == "fraud-v2-r1" and child["metadata"]["namespace"] == "ml"
    assert spec.source.uri == "pvc://fraud-feedback/models/fraud-v2-retrain-1/model.onnx"
    assert spec.source.sha256 == CHILD_SHA
    assert spec.version == "2.r1" and spec.model == "fraud"
    assert spec.traffic == 15  # canaryTraffic
    assert spec.replicas == 3 and spec.rollout is not None and spec.retraining is not None
    assert [c["kind"] for c in build_children({**child, "metadata": {**child["metadata"], "uid": "u2"}}, CONFIG)]


def test_the_child_serves_the_file_the_job_wrote(make_mv: MakeMV) -> None:
    job = "fraud-v2-retrain-7"
    child = build_child(_retrainable(make_mv), _succeeded(), job, "fraud-feedback")
    served = sources.resolve_local(child["spec"]["source"]["uri"], MODEL_ROOT)
    written = PurePosixPath(output_dir(job)) / "model.onnx"
    # Same claim: MODEL_ROOT/pvc/CLAIM in the runtime pod is FEEDBACK_DIR in the Job's pod.
    assert PurePosixPath(served).relative_to(f"{MODEL_ROOT}/pvc/fraud-feedback") == written.relative_to(FEEDBACK_DIR)


def test_child_is_not_owned_by_its_parent_and_links_parent_job_and_metrics(make_mv: MakeMV) -> None:
    parent = _retrainable(make_mv)
    parent["metadata"]["labels"] = {"team": "risk", "app.kubernetes.io/instance": "fraud-v2"}
    child = build_child(parent, _succeeded(), "fraud-v2-retrain-1", "fraud-feedback")
    meta = child["metadata"]
    assert "ownerReferences" not in meta
    assert meta["labels"]["team"] == "risk" and "app.kubernetes.io/instance" not in meta["labels"]
    assert meta["labels"][LABEL_PARENT] == "fraud-v2" and meta["labels"][LABEL_JOB] == "fraud-v2-retrain-1"
    assert json.loads(meta["annotations"][ANNOTATION_METRICS])["child"] == 0.94
    assert metrics_of(child) == _succeeded().metrics
    assert metrics_of(parent) is None


def test_the_same_job_always_gives_the_same_child(make_mv: MakeMV) -> None:
    parent = _retrainable(make_mv)
    assert build_child(parent, _succeeded(), "fraud-v2-retrain-2", "fraud-feedback") == build_child(
        parent, _succeeded(), "fraud-v2-retrain-2", "fraud-feedback"
    )


def test_a_child_without_a_reported_sha_has_no_sha(make_mv: MakeMV, mv_validator: jsonschema.Validator) -> None:
    child = build_child(_retrainable(make_mv), _succeeded(Metrics(sha256=None)), "fraud-v2-retrain-1", "fraud-feedback")
    _validate_mv(mv_validator, child)
    assert "sha256" not in child["spec"]["source"]


def test_generations_of_children_stay_valid(make_mv: MakeMV, mv_validator: jsonschema.Validator) -> None:
    version = "2024-06-01-with-a-rather-long-version-string-for-the-model"
    mv = make_mv(name="fraud-" + "x" * 57, version=version, retraining=dict(RETRAINING))
    for attempt in range(1, 12):
        job = job_name(mv["metadata"]["name"], attempt)
        child = build_child(mv, _succeeded(), job, "fraud-feedback")
        _validate_mv(mv_validator, child)
        validated(child, CONFIG)
        assert child["metadata"]["name"] != mv["metadata"]["name"]
        assert child["spec"]["version"] != mv["spec"]["version"]
        mv = {**child, "metadata": {**child["metadata"], "uid": f"uid-{attempt}"}}


def test_only_a_succeeded_retraining_job_produces_a_child(make_mv: MakeMV) -> None:
    failed = Outcome("Failed", "UnsupportedModel", "no")
    with pytest.raises(RetrainingError):
        build_child(_retrainable(make_mv), failed, "fraud-v2-retrain-1", "fraud-feedback")
    with pytest.raises(RetrainingError):
        build_child(_retrainable(make_mv), _succeeded(), "hand-made-job", "fraud-feedback")


# --- promotion ----------------------------------------------------------------------------


def _promotion(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "parent": "fraud-v2",
        "child": "fraud-v2-r1",
        "child_ready": True,
        "metrics": _succeeded().metrics,
        "auto_promote": True,
    }
    args.update(overrides)
    return promotion(**args)


def test_a_ready_child_that_beats_its_parent_takes_all_traffic() -> None:
    decision = _promotion()
    assert decision.promote and decision.reason == "Promoted"
    assert decision.weights == {"fraud-v2-r1": 100, "fraud-v2": 0}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"auto_promote": False}, "AutoPromoteOff"),
        ({"child_ready": False}, "WaitingForReady"),
        ({"metrics": None}, "NoEvaluation"),
        ({"metrics": Metrics(sha256=CHILD_SHA)}, "NoEvaluation"),
        (
            {"metrics": Metrics(sha256=None, metric="accuracy", parent=0.9, child=0.9, higher_is_better=True)},
            "NotBetter",
        ),
        ({"metrics": Metrics(sha256=None, metric="mae", parent=0.5, child=0.7, higher_is_better=False)}, "NotBetter"),
        ({"rolled_back": True}, "RolledBack"),
    ],
)
def test_otherwise_the_canary_stays_and_the_reason_is_said(overrides: dict[str, Any], reason: str) -> None:
    decision = _promotion(**overrides)
    assert not decision.promote and decision.reason == reason and decision.weights == {}
    assert "fraud-v2-r1" in decision.message


def test_a_lower_error_beats_the_parent_for_regressors() -> None:
    metrics = Metrics(sha256=None, metric="mae", parent=0.7, child=0.5, higher_is_better=False)
    assert _promotion(metrics=metrics).promote
    # Without numbers the trainer's own verdict decides.
    assert _promotion(metrics=Metrics(sha256=None, improved=True)).promote


def test_promotion_takes_traffic_from_every_other_version_of_the_model() -> None:
    decision = _promotion(others=["fraud-v1", "fraud-v2-r1", "fraud-v2"])
    assert decision.weights == {"fraud-v1": 0, "fraud-v2": 0, "fraud-v2-r1": 100}


def _version(name: str, traffic: int, created: str, retraining: bool = True, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": "fraud", "version": name, "traffic": traffic}
    if retraining:
        spec["retraining"] = dict(RETRAINING)
    return {"metadata": {"name": name, "creationTimestamp": created, **meta}, "spec": spec}


def test_one_version_per_model_retrains_the_one_that_takes_the_traffic() -> None:
    parent = _version("fraud-v2", 100, "2025-01-01T00:00:00Z")
    canary = _version("fraud-v2-r1", 15, "2025-01-02T00:00:00Z")
    assert retraining_version([parent, canary], {"fraud-v2": True, "fraud-v2-r1": True}) == "fraud-v2"
    promoted_parent = _version("fraud-v2", 0, "2025-01-01T00:00:00Z")
    promoted = _version("fraud-v2-r1", 100, "2025-01-02T00:00:00Z")
    both_ready = {"fraud-v2": True, "fraud-v2-r1": True}
    assert retraining_version([promoted_parent, promoted], both_ready) == "fraud-v2-r1"
    # A tie goes to the newest; a version not Ready, being deleted or without retraining never retrains.
    tie = [_version("fraud-v2", 50, "2025-01-01T00:00:00Z"), _version("fraud-v2-r1", 50, "2025-01-02T00:00:00Z")]
    assert retraining_version(tie, both_ready) == "fraud-v2-r1"
    assert retraining_version([parent, canary], {"fraud-v2-r1": True}) == "fraud-v2-r1"
    gone = _version("fraud-v2", 100, "2025-01-01T00:00:00Z", deletionTimestamp="2025-01-03T00:00:00Z")
    assert retraining_version([gone], {"fraud-v2": True}) is None
    assert retraining_version([_version("fraud-v2", 100, "x", retraining=False)], {"fraud-v2": True}) is None
