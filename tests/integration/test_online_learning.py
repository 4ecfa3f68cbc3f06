"""The online-learning loop on the emulated cluster (DESIGN.md section 5, docs/online-learning.md).

Real processes all the way: the runtime serves a logistic regression trained on
one distribution from two replicas, a client sends predictions and labelled
feedback from a shifted one through the model's Service (the test router picks
a pod per request, as kube-proxy does, so a label often reaches the pod that did
not answer its prediction), with the bearer token from the Secret the operator
created; the operator sums the sample count over the pods, creates the
retraining Job, the test Job controller runs the real trainer on the same
feedback folder, which joins every label with its logged prediction, and the
operator creates, rolls out as a canary and promotes the child version.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from modelfleet_operator.config import OperatorConfig
from tests.integration.harness.cluster import MV, PODS, Cluster
from tests.integration.harness.jobs import JobController
from tests.integration.harness.kubelet import DeploymentController
from tests.integration.harness.operator import InProcessOperator
from tests.integration.harness.router import Router
from tests.integration.model_versions import LOCAL_SOURCES, ModelFile, condition, model_version, phase, wait_for_phase
from tests.integration.steady_load import operator_metric
from tests.support.polling import wait_for

JOBS = ("batch", "v1", "jobs")
SECRETS = ("", "v1", "secrets")
EVENTS = ("", "v1", "events")
MODEL, CLAIM = "churn", "churn-feedback"
PARENT, JOB, CHILD = "churn-v1", "churn-v1-retrain-1", "churn-v1-r1"
FEATURES = 4
# The served model learned labels = [x @ W_SERVED > 0]; the world has since moved to W_SHIFTED.
W_SERVED = np.array([[2.0], [-1.5], [1.0], [0.5]], dtype=np.float32)
W_SHIFTED = np.array([[-1.0], [1.5], [1.0], [-2.0]], dtype=np.float32)


def linear_model(path: Path, weights: np.ndarray, activation: str) -> ModelFile:
    """x -> activation(Gemm(x, W, b)); Sigmoid makes a logistic regression the trainer supports."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["z"]), helper.make_node(activation, ["z"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.zeros(1, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return ModelFile(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def shifted_samples(rows: int, seed: int) -> tuple[list[list[float]], list[int]]:
    x = np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)
    return x.tolist(), (x @ W_SHIFTED > 0).astype(int).ravel().tolist()


def retraining_version(model: ModelFile, *, min_samples: int, replicas: int = 1) -> dict[str, Any]:
    return model_version(
        PARENT,
        MODEL,
        "1",
        model.uri,
        source={"uri": model.uri, "sha256": model.sha256},
        warmup={"iterations": 2},
        replicas=replicas,
        retraining={"minSamples": min_samples, "feedbackClaim": CLAIM, "canaryTraffic": 20, "autoPromote": True},
    )


@pytest.fixture
def metrics_port() -> int:
    return 0  # off: a killed in-process operator keeps its listening socket until it is collected


@pytest.fixture
def operator_config(metrics_port: int) -> OperatorConfig:
    return OperatorConfig(
        namespaces=("ml",),
        standalone=True,
        allowed_uri_schemes=LOCAL_SOURCES,
        metrics_port=metrics_port,
        scale_down_delay_seconds=2,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- reading the cluster ---------------------------------------------------------------------


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.get(MV, name) or {}).get("status") or {}


def versions_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    """Every stored version of a ModelVersion, oldest first (the emulator keeps them all)."""
    stored = cluster.emulator.objects[(kmock.resource(*MV), cluster.namespace, name)]
    return [copy.deepcopy(dict(v.raw)) for v in stored.history if v is not None]


def job_finished(cluster: Cluster, name: str) -> str | None:
    job = cluster.get(JOBS, name) or {}
    return next(
        (
            c["type"]
            for c in (job.get("status") or {}).get("conditions") or []
            if c["type"] in ("Complete", "Failed") and c["status"] == "True"
        ),
        None,
    )


async def reconciles(url: str) -> float:
    return await operator_metric(url, "modelfleet_operator_reconciles_total", outcome="ok")


def events_for(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [e for e in cluster.list(EVENTS) if e["involvedObject"]["name"] == name]


def feedback_token(cluster: Cluster) -> str:
    secret = cluster.get(SECRETS, f"{MODEL}-feedback-token")
    assert secret is not None, "the operator creates the feedback token Secret"
    return base64.b64decode(secret["data"]["token"]).decode()


async def ready_address(kubelet: DeploymentController, deployment: str) -> str:
    pods = await wait_for(
        lambda: [p for p in kubelet.pods_of("ml", deployment) if p.ready],
        timeout=60,
        message=f"a ready pod of {deployment}",
    )
    return f"http://{pods[0].address}:{pods[0].port('http')}"


# --- talking to the runtime as a client --------------------------------------------------------


async def predict(http: aiohttp.ClientSession, base: str, rows: list[list[float]]) -> dict[str, Any]:
    async with http.post(f"{base}/predict", json={"instances": rows}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def send_feedback(
    http: aiohttp.ClientSession, base: str, token: str, rows: list[list[float]], labels: list[int], chunk: int = 50
) -> None:
    """Predict, then label each prediction by its request_id, as a client that learns the truth later."""
    for start in range(0, len(rows), chunk):
        answer = await predict(http, base, rows[start : start + chunk])
        body = {"request_id": answer["request_id"], "labels": labels[start : start + chunk]}
        async with http.post(f"{base}/feedback", json=body, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["accepted"] == len(body["labels"])


async def pod_counters(http: aiohttp.ClientSession, pods: list[Any]) -> dict[str, tuple[float, float]]:
    """Each pod's own (rows run through its model, label records it durably appended), from its /metrics."""
    out = {}
    for p in pods:
        async with http.get(f"http://{p.address}:{p.port('http')}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        totals = {"modelfleet_inference_rows": 0.0, "modelfleet_feedback_samples": 0.0}
        for family in text_string_to_metric_families(text):
            if family.name in totals:
                totals[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
        out[p.name] = (totals["modelfleet_inference_rows"], totals["modelfleet_feedback_samples"])
    return out


def grown(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], which: int) -> list[str]:
    return [name for name in after if after[name][which] > before[name][which]]


async def feedback_through_the_service(
    http: aiohttp.ClientSession, url: str, pods: list[Any], token: str, rows: list[list[float]], labels: list[int]
) -> list[tuple[str, str]]:
    """Predict and label, chunk by chunk, through the model's Service; (the pod that predicted, the pod
    that stored the label) per chunk, as the pods' own counters tell."""
    landed = []
    chunk = 10
    for start in range(0, len(rows), chunk):
        before = await pod_counters(http, pods)
        answer = await predict(http, url, rows[start : start + chunk])
        predicted = await pod_counters(http, pods)
        body = {"request_id": answer["request_id"], "labels": labels[start : start + chunk]}
        async with http.post(f"{url}/feedback", json=body, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["accepted"] == len(body["labels"])
        labelled = await pod_counters(http, pods)
        [by] = grown(before, predicted, 0)
        [stored] = grown(predicted, labelled, 1)
        landed.append((by, stored))
    return landed


async def unconsumed(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/v1/feedback/stats") as response:
        assert response.status == 200
        return int((await response.json())["unconsumed"])


# --- the loop ----------------------------------------------------------------------------------


async def test_feedback_retrains_a_child_that_is_canaried_and_promoted_while_the_parent_serves(
    cluster: Cluster,
    kubelet: DeploymentController,
    jobs: JobController,
    operator: InProcessOperator,
    tmp_path: Path,
) -> None:
    served = linear_model(tmp_path / "churn-1.onnx", W_SERVED, "Sigmoid")
    jobs.hold = True  # the Job waits, so the test can look at the cluster while it is pending
    await cluster.apply(retraining_version(served, min_samples=200, replicas=2))
    await wait_for_phase(cluster, PARENT, "Ready")
    pods = await wait_for(
        lambda: (
            [p for p in kubelet.pods_of("ml", PARENT) if p.ready] if len(kubelet.pods_of("ml", PARENT)) == 2 else []
        ),
        timeout=60,
        message="two ready pods of the parent",
    )
    assert len(pods) == 2

    # The operator made the token Secret the pods mount; it belongs to the model, not to one version.
    secret = cluster.get(SECRETS, f"{MODEL}-feedback-token")
    assert secret is not None and not secret["metadata"].get("ownerReferences")
    token = feedback_token(cluster)
    assert len(token) >= 40

    base = await ready_address(kubelet, PARENT)
    rows, labels = shifted_samples(240, seed=1)
    async with aiohttp.ClientSession() as http, Router(cluster.emulator, "ml", MODEL, mode="service", seed=7) as router:
        async with http.post(f"{base}/feedback", json={"features": rows[0], "label": labels[0]}) as response:
            assert response.status == 401  # feedback changes the next model: never without the token
        landed = await feedback_through_the_service(http, router.url, pods, token, rows, labels)
        # Both pods answered predictions and stored labels, and labels reached the pod that did not log
        # their predictions (the prediction log on the shared volume joins them).
        assert {by for by, _ in landed} == {stored for _, stored in landed} == {p.name for p in pods}, landed
        assert any(by != stored for by, stored in landed), landed
        # Every labelled request was stored once, by one of the pods (the counter counts label records:
        # one per request, of ten rows each here).
        counters = await pod_counters(http, pods)
        assert sum(records for _, records in counters.values()) == len(landed) == 24

        # Threshold -> one Job, owned by the version, mounting the same claim.
        await wait_for(
            lambda: status_of(cluster, PARENT).get("lastRetraining", {}).get("job") == JOB,
            timeout=30,
            message=lambda: f"the retraining Job; status {status_of(cluster, PARENT)}",
        )
        job = cluster.get(JOBS, JOB)
        assert job["metadata"]["ownerReferences"][0]["uid"] == cluster.get(MV, PARENT)["metadata"]["uid"]
        assert {"name": "feedback", "persistentVolumeClaim": {"claimName": CLAIM}} in job["spec"]["template"]["spec"][
            "volumes"
        ]
        assert status_of(cluster, PARENT)["feedbackSamples"] == 240
        last = status_of(cluster, PARENT)["lastRetraining"]
        assert (last["job"], last["result"], last["samples"]) == (JOB, "Running", 240)
        assert condition(cluster, PARENT, "RetrainingTriggered")["status"] == "True"
        # The parent serves while the Job is pending.
        assert phase(cluster, PARENT) == "Ready"
        assert len((await predict(http, base, rows[:3]))["predictions"]) == 3

        # The operator dies; the Job runs and finishes while it is down.
        await operator.kill()
        jobs.hold = False
        await wait_for(lambda: job_finished(cluster, JOB), timeout=60, message="the trainer to finish")
        assert job_finished(cluster, JOB) == "Complete"
        assert cluster.get(MV, CHILD) is None
        claim = cluster.volumes.claim("ml", CLAIM)
        produced = claim / "models" / JOB / "model.onnx"
        metrics = json.loads((claim / "models" / JOB / "metrics.json").read_text())
        assert metrics["child"]["accuracy"] > metrics["parent"]["accuracy"]
        # Every label joined its prediction, whichever pod logged the one and stored the other.
        joined = metrics["samples"]["labels"]
        assert (joined["matched"], joined["unmatched"], joined["expired"]) == (240, 0, 0), joined
        assert await unconsumed(http, base) == 0  # consumed only now that the model is written

        # Restarted, it picks up the finished Job: exactly one child.
        await operator.start()
        await wait_for(
            lambda: status_of(cluster, PARENT).get("lastRetraining", {}).get("result") == "Succeeded",
            timeout=30,
            message=lambda: f"the Job's result; status {status_of(cluster, PARENT)}",
        )
        last = status_of(cluster, PARENT)["lastRetraining"]
        assert last["producedVersion"] == CHILD and last["samples"] == 240
        child = cluster.get(MV, CHILD)
        assert child["metadata"]["labels"]["serving.modelfleet.dev/parent"] == PARENT
        assert child["metadata"]["labels"]["serving.modelfleet.dev/retraining-job"] == JOB
        recorded = json.loads(child["metadata"]["annotations"]["serving.modelfleet.dev/metrics"])
        assert recorded["child"] == metrics["child"]["accuracy"] and recorded["parent"] == metrics["parent"]["accuracy"]
        assert child["spec"]["source"] == {
            "uri": f"pvc://{CLAIM}/models/{JOB}/model.onnx",
            "sha256": hashlib.sha256(produced.read_bytes()).hexdigest(),
        }
        assert versions_of(cluster, CHILD)[0]["spec"]["traffic"] == 20  # born a canary

        # Ready -> canary share -> promoted: all traffic to the child, none to the parent.
        await wait_for(
            lambda: (condition(cluster, CHILD, "Promoted") or {}).get("status") == "True",
            timeout=90,
            message=lambda: f"promotion; child status {status_of(cluster, CHILD)}",
        )
        assert cluster.get(MV, CHILD)["spec"]["traffic"] == 100 and cluster.get(MV, PARENT)["spec"]["traffic"] == 0
        await wait_for(
            lambda: status_of(cluster, CHILD).get("servingTraffic") == 100,
            timeout=30,
            message=lambda: f"the child serving everything; {status_of(cluster, CHILD)}",
        )

        child_history = versions_of(cluster, CHILD)
        promoted_at = next(i for i, v in enumerate(child_history) if v["spec"]["traffic"] == 100)
        canary = [
            v["status"]["servingTraffic"]
            for v in child_history[:promoted_at]
            if (v.get("status") or {}).get("servingTraffic")
        ]
        assert canary and all(0 < share < 100 for share in canary), canary
        parent_history = versions_of(cluster, PARENT)
        before = [v for v in parent_history if v["spec"].get("traffic", 100) == 100][-1]["status"]
        assert before["phase"] == "Ready" and before["servingTraffic"] > 0  # served until the promotion

        # The promoted child answers with the retrained model.
        child_base = await ready_address(kubelet, CHILD)
        answer = await predict(http, child_base, rows[:8])
        assert answer["model_version"] == "1.r1"

    assert [j["metadata"]["name"] for j in cluster.list(JOBS)] == [JOB]
    assert sorted(v["metadata"]["name"] for v in cluster.list(MV)) == [PARENT, CHILD]
    assert {e["reason"] for e in events_for(cluster, PARENT)} >= {"RetrainingStarted", "RetrainingSucceeded"}
    # The Event follows the Promoted condition's write: wait for it rather than race it.
    await wait_for(
        lambda: "Promoted" in {e["reason"] for e in events_for(cluster, CHILD)},
        timeout=30,
        message=lambda: f"the Promoted Event; events {events_for(cluster, CHILD)}",
    )


class TestAFailingJob:
    @pytest.fixture
    def metrics_port(self) -> int:
        return free_port()  # this scenario counts the operator's reconciles

    async def test_a_failing_job_leaves_the_parent_serving_and_the_samples_unconsumed_and_backs_off(
        self,
        cluster: Cluster,
        kubelet: DeploymentController,
        jobs: JobController,
        operator: InProcessOperator,
        tmp_path: Path,
    ) -> None:
        # Tanh serves fine but the trainer cannot differentiate it: the Job fails with UnsupportedModel.
        served = linear_model(tmp_path / "churn-tanh.onnx", W_SERVED, "Tanh")
        await cluster.apply(retraining_version(served, min_samples=100))
        await wait_for_phase(cluster, PARENT, "Ready")
        base = await ready_address(kubelet, PARENT)
        rows, labels = shifted_samples(120, seed=2)
        async with aiohttp.ClientSession() as http:
            await send_feedback(http, base, feedback_token(cluster), rows, labels)

            await wait_for(
                lambda: status_of(cluster, PARENT).get("lastRetraining", {}).get("result") == "Failed",
                timeout=60,
                message=lambda: f"the Job's failure; status {status_of(cluster, PARENT)}",
            )
            assert job_finished(cluster, JOB) == "Failed"
            last = status_of(cluster, PARENT)["lastRetraining"]
            assert last["job"] == JOB and "UnsupportedModel" in last["message"] and "Tanh" in last["message"]
            # The Event is posted right after the status is written: wait for it rather than race it.
            await wait_for(
                lambda: [e for e in events_for(cluster, PARENT) if e["type"] == "Warning"],
                timeout=30,
                message=lambda: f"a Warning Event for {PARENT}; events {events_for(cluster, PARENT)}",
            )
            [warning] = [e for e in events_for(cluster, PARENT) if e["type"] == "Warning"]
            assert warning["reason"] == "UnsupportedModel" and "Tanh" in warning["message"]
            # The trainer's own words reached the Pod as its termination message.
            [pod] = [p for p in cluster.list(PODS) if p["metadata"]["labels"].get("job-name") == JOB]
            terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
            assert terminated["exitCode"] == 1 and json.loads(terminated["message"])["reason"] == "UnsupportedModel"

            # Nothing consumed, the parent serves, no child.
            assert await unconsumed(http, base) == 120
            assert phase(cluster, PARENT) == "Ready"
            assert len((await predict(http, base, rows[:2]))["predictions"]) == 2
            assert cluster.get(MV, CHILD) is None

            # No retry storm: more feedback is counted, but the back-off holds the next Job.
            await send_feedback(http, base, feedback_token(cluster), *shifted_samples(10, seed=3))
            await wait_for(
                lambda: status_of(cluster, PARENT).get("feedbackSamples") == 130,
                timeout=30,
                message=lambda: f"the new count; status {status_of(cluster, PARENT)}",
            )
            triggered = condition(cluster, PARENT, "RetrainingTriggered")
            assert (triggered["status"], triggered["reason"]) == ("False", "BackingOff"), triggered
            assert [j["metadata"]["name"] for j in cluster.list(JOBS)] == [JOB]

            # Backing off is quiet: more reconciliations of the unchanged cluster (the sample count is read
            # every few seconds) write nothing to the version.
            url = f"http://127.0.0.1:{operator.config.metrics_port}/metrics"
            versions_before, before = len(versions_of(cluster, PARENT)), await reconciles(url)

            async def five_more() -> bool:
                return await reconciles(url) >= before + 5

            await wait_for(five_more, timeout=60, message="five more reconciliations")
            assert len(versions_of(cluster, PARENT)) == versions_before
            assert [j["metadata"]["name"] for j in cluster.list(JOBS)] == [JOB]
