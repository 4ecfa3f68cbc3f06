"""The test Job controller: runs the Jobs the operator creates as real local processes.

`JobController` plays the Job controller and the kubelet for batch/v1 Jobs:
for each unfinished Job it starts one pod from the Job's pod template with the
test kubelet's `PodProcess` (command/args/env, volumes mapped to folders the
same way, so a persistentVolumeClaim is the same folder the runtime pods of
that claim use), writes the Pod object (owned by the Job, with the
`batch.kubernetes.io/job-name` labels), and when the process exits writes the
container's `state.terminated` (exit code, and the termination message: the
file at the container's `terminationMessagePath`, mapped to a file of the pod,
or the log tail with `FallbackToLogsOnError`). The Job's status follows as a
real controller writes it: `active`, `succeeded`/`failed` counts, `startTime`,
and the Complete (with `completionTime`) or Failed condition. A failed pod is
retried up to `backoffLimit`, except when a `podFailurePolicy` rule with
`action: FailJob` matches its exit code (reason PodFailurePolicy).

`hold = True` keeps Jobs pending (no pod starts) so a test can act between a
Job's creation and its run; setting it back to False lets them run.

Simplifications: one container per pod, `parallelism`/`completions` of 1,
no `activeDeadlineSeconds` and no TTL after finishing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .client import ClusterClient
from .emulator import ClusterEmulator, _now
from .kubelet import PodController, PodProcess, Volumes, next_address

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_LIMIT = 4096  # what the kubelet keeps of a termination message


@dataclasses.dataclass
class JobPod(PodProcess):
    """One pod of a Job: a PodProcess whose container writes its termination message to a local file."""

    job: str = ""
    started_at: str = ""
    terminated: dict[str, Any] | None = None

    @property
    def termination_path(self) -> str:
        return str(self.container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH)

    @property
    def termination_file(self) -> Path:
        return self.volumes.pod(self.namespace, self.name) / "termination-log"

    def translate(self, text: str) -> str:
        return super().translate(text).replace(self.termination_path, str(self.termination_file))

    def finish(self, exit_code: int, message: str | None = None) -> None:
        """Record the container's end as the kubelet would."""
        if message is None:
            data = self.termination_file.read_bytes() if self.termination_file.exists() else b""
            message = data[-TERMINATION_LIMIT:].decode(errors="replace")
            if (
                not message.strip()
                and exit_code != 0
                and self.container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            ):
                message = self.log_tail()
        self.terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "message": message,
            "startedAt": self.started_at or _now(),
            "finishedAt": _now(),
        }

    def pod_status(self) -> dict[str, Any]:
        if self.terminated is None:
            return super().pod_status()
        succeeded = self.terminated["exitCode"] == 0
        container = self.container_status(ready=False, started=False, state={"terminated": dict(self.terminated)})
        return self.status_of_phase("Succeeded" if succeeded else "Failed", container, "PodCompleted")


def _condition(job: Mapping[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in (job.get("status") or {}).get("conditions") or []
    )


def finished(job: Mapping[str, Any]) -> bool:
    return _condition(job, "Complete") or _condition(job, "Failed")


def fails_job(job: Mapping[str, Any], container: str, exit_code: int) -> bool:
    """Whether a podFailurePolicy rule with action FailJob matches this exit code."""
    for rule in ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []:
        codes = rule.get("onExitCodes")
        if rule.get("action") != "FailJob" or not codes:
            continue
        if codes.get("containerName") not in (None, container):
            continue
        inside = exit_code in codes.get("values") or []
        if inside == (codes.get("operator", "In") == "In"):
            return True
    return False


class JobController(PodController[JobPod]):
    """batch/v1 Jobs → trainer processes → Pod objects and Job status (see the module docstring)."""

    task_name = "test job controller"

    def __init__(self, cluster: ClusterEmulator, client: ClusterClient, volumes: Volumes) -> None:
        super().__init__(cluster, client, volumes)
        self.hold = False
        self._written: dict[tuple[str, str], str] = {}

    def pods_of(self, namespace: str, job: str) -> list[JobPod]:
        return [p for p in self.pods.values() if p.namespace == namespace and p.job == job]

    async def sync(self) -> None:
        jobs = {
            (j["metadata"]["namespace"], j["metadata"]["name"]): j
            for j in self.cluster.live_objects("batch", "v1", "jobs")
        }
        for key, pod in list(self.pods.items()):
            job = jobs.get((pod.namespace, pod.job))
            if job is None or job["metadata"]["uid"] != pod.owner["uid"]:
                # The Job is gone: its process stops (the garbage collector deletes the Pod object).
                del self.pods[key]
                await pod.stop()
        for (namespace, name), job in jobs.items():
            await self._sync_job(namespace, name, job)

    async def _sync_job(self, namespace: str, name: str, job: Mapping[str, Any]) -> None:
        if finished(job):
            return
        mine = self.pods_of(namespace, name)
        for pod in mine:
            if pod.terminated is None and pod.exited() is not None:
                pod.finish(int(pod.exited() or 0))
                await self._write_pod_status(pod)
        done = [p for p in mine if p.terminated is not None]
        active = [p for p in mine if p.terminated is None]
        succeeded = len([p for p in done if p.terminated["exitCode"] == 0])
        failed = len(done) - succeeded
        if not active and not succeeded and not self.hold and not self._failed_reason(job, done, failed):
            pod = await self._start_pod(namespace, name, job)
            if pod.terminated is None:
                active.append(pod)

        status: dict[str, Any] = {
            "active": len(active),
            "succeeded": succeeded,
            "failed": failed,
            "ready": len([p for p in active if p.process is not None]),
        }
        start = (job.get("status") or {}).get("startTime")
        if mine or active:
            status["startTime"] = start or _now()
        if succeeded:
            now = _now()
            status["completionTime"] = now
            status["conditions"] = [
                {"type": "Complete", "status": "True", "lastTransitionTime": now, "lastProbeTime": now}
            ]
        elif (reason := self._failed_reason(job, done, failed)) is not None:
            now = _now()
            message = (
                "Container trainer for pod failed with a code that the podFailurePolicy marks fatal"
                if reason == "PodFailurePolicy"
                else "Job has reached the specified backoff limit"
            )
            status["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now,
                    "lastProbeTime": now,
                }
            ]
        comparable = json.dumps({k: v for k, v in status.items() if k != "startTime"}, sort_keys=True)
        if self._written.get((namespace, name)) == comparable:
            return
        if await self.client.write_status("batch", "v1", "jobs", namespace, name, status):
            self._written[(namespace, name)] = comparable

    def _failed_reason(self, job: Mapping[str, Any], done: list[JobPod], failed: int) -> str | None:
        for pod in done:
            code = pod.terminated["exitCode"] if pod.terminated else 0
            if code != 0 and fails_job(job, pod.container["name"], code):
                return "PodFailurePolicy"
        if failed > int((job.get("spec") or {}).get("backoffLimit", 6)):
            return "BackoffLimitExceeded"
        return None

    async def _start_pod(self, namespace: str, name: str, job: Mapping[str, Any]) -> JobPod:
        uid = job["metadata"]["uid"]
        template = json.loads(json.dumps(job["spec"]["template"]))
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels.update(
            {
                "batch.kubernetes.io/job-name": name,
                "job-name": name,
                "batch.kubernetes.io/controller-uid": uid,
                "controller-uid": uid,
            }
        )
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        pod = JobPod(
            namespace=namespace,
            name=f"{name}-{next(self._counter):05d}",
            owner=owner,
            template=template,
            template_hash="job",
            address=next_address(),
            volumes=self.volumes,
            cluster=self.cluster,
            job=name,
        )
        self.pods[(namespace, pod.name)] = pod
        self.started.append(pod)
        manifest = pod.manifest()
        manifest["metadata"]["labels"].pop("pod-template-hash", None)
        await self.client.create("", "v1", "pods", namespace, manifest)
        try:
            await pod.start()
            pod.started_at = _now()
        except (OSError, ValueError) as exc:
            pod.terminated = {"exitCode": 128, "reason": "StartError", "message": str(exc), "finishedAt": _now()}
        await self._write_pod_status(pod)
        return pod

    async def _write_pod_status(self, pod: JobPod) -> None:
        await self.client.write_status("", "v1", "pods", pod.namespace, pod.name, pod.pod_status())


__all__ = ["JobController", "JobPod", "fails_job", "finished"]
