"""Deployments that become available without running anything: a test controller for benchmarks.

`SimulatedWorkloads` plays the Deployment, ReplicaSet and EndpointSlice
controllers and the kubelet for objects whose pods need not really run (the
operator's scale benchmark, `bench/operator_scale.py`, with 1,000 ModelVersions):

- for each Deployment it keeps `spec.replicas` Pod objects of the current template
  (labels of the template plus `pod-template-hash`, owned by the Deployment, each
  with its own loopback address as podIP, phase Running and Ready); a template
  change replaces them, a scale change adds or removes them;
- it writes the Deployment's status as the controller does once it has observed
  the generation: replicas, updatedReplicas, readyReplicas, availableReplicas,
  observedGeneration, conditions Available and Progressing;
- for each Service with a selector it keeps one EndpointSlice with the ready
  addresses of the pods the selector selects.

It is event-driven (the emulator's in-process subscription, no polling over all
objects) and writes through the emulator's write path without a socket
(`ClusterEmulator.write_local`), so every change is a watch event the operator
sees, at a cost that stays small next to the operator's. `hold(namespace, name)`
keeps a Deployment's pods unready until `release`.

What a real cluster says when pods do not run, it says too: a Pod the API server
refuses (a ResourceQuota, `quota.py`) makes the Deployment's `ReplicaFailure`
condition True with reason FailedCreate and the API server's message (retried each
second); a Deployment that has not completed within `spec.progressDeadlineSeconds`
of its last progress (on the injectable `clock`; `tick()` looks again) gets
`Progressing` False with reason ProgressDeadlineExceeded; an image that `pullable`
refuses leaves its pods unready with the container waiting in ErrImagePull, then
ImagePullBackOff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

from .deployments import Progress, deployment_status
from .emulator import ClusterEmulator
from .kubelet import next_address, template_hash
from .selectors import LabelSelector, Requirement
from .writes import WriteError

DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
PODS = ("", "v1", "pods")
ENDPOINTSLICES = ("discovery.k8s.io", "v1", "endpointslices")
SLICE_SUFFIX = "-simulated"


@dataclasses.dataclass
class SimulatedPod:
    name: str
    template_hash: str
    address: str
    ready: bool | None = None  # None until its first status is written
    waiting: str = ""  # the container's waiting reason last written (ErrImagePull, then ImagePullBackOff)
    container: str = ""


def _selector(match: Mapping[str, str]) -> LabelSelector:
    return LabelSelector(tuple(Requirement(k, "=", (v,)) for k, v in match.items()))


class SimulatedWorkloads:
    """See the module docstring: `async with SimulatedWorkloads(emulator) as workloads: ...`."""

    def __init__(
        self,
        emulator: ClusterEmulator,
        *,
        clock: Callable[[], float] = time.monotonic,
        pullable: Callable[[str], bool] = lambda image: True,
    ) -> None:
        self.emulator = emulator
        self.clock = clock
        self.pullable = pullable
        self.pods: dict[tuple[str, str], list[SimulatedPod]] = {}  # (namespace, deployment) -> pods
        self.errors: list[BaseException] = []
        self.writes = 0
        self._held: set[tuple[str, str]] = set()
        # When each Deployment last made progress (new template, a pod more ready), and why it cannot create pods.
        self._progress: dict[tuple[str, str], Progress] = {}
        self._complete_keys: set[tuple[str, str]] = set()
        self._create_failure: dict[tuple[str, str], str] = {}
        self._dirty_deployments: set[tuple[str, str]] = set()
        self._dirty_services: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._counter = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> SimulatedWorkloads:
        streams = [
            (resource, await self._stack.enter_async_context(self.emulator.subscribe(*resource)))
            for resource in (DEPLOYMENTS, SERVICES, PODS)
        ]
        for obj in self.emulator.live_objects(*DEPLOYMENTS):
            self._dirty_deployments.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
        for obj in self.emulator.live_objects(*SERVICES):
            self._dirty_services.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
        self._tasks = [asyncio.create_task(self._follow(resource, events)) for resource, events in streams]
        self._tasks.append(asyncio.create_task(self._run(), name="simulated workloads"))
        self._wake.set()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stack.aclose()

    def hold(self, namespace: str, deployment: str) -> None:
        """Keep this Deployment's pods unready (a slow start) until `release`."""
        self._held.add((namespace, deployment))
        self._mark_deployment((namespace, deployment))

    def release(self, namespace: str, deployment: str) -> None:
        self._held.discard((namespace, deployment))
        self._mark_deployment((namespace, deployment))

    def pods_of(self, namespace: str, deployment: str) -> list[SimulatedPod]:
        return list(self.pods.get((namespace, deployment), []))

    def tick(self) -> None:
        """Look at every Deployment again (after moving an injected clock past a progress deadline)."""
        self._dirty_deployments.update(self.pods)
        self._wake.set()

    def _mark_deployment(self, key: tuple[str, str]) -> None:
        self._dirty_deployments.add(key)
        self._wake.set()

    # -- events ---------------------------------------------------------------------------------

    async def _follow(self, resource: tuple[str, str, str], events: Any) -> None:
        async for event in events:
            try:
                self._note(resource, event)
            except Exception as exc:  # keep playing; the test sees the error
                self.errors.append(exc)

    def _note(self, resource: tuple[str, str, str], event: Mapping[str, Any]) -> None:
        meta = event["object"]["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if resource == DEPLOYMENTS:
            if event["type"] == "DELETED":
                self.pods.pop(key, None)  # the garbage collector deletes the Pod objects
            self._mark_deployment(key)
        elif resource == SERVICES:
            self._dirty_services.add(key)
        else:
            labels = [meta.get("labels") or {}, ((event.get("previous") or {}).get("metadata") or {}).get("labels")]
            for svc in self.emulator.peek_objects(*SERVICES, key[0]):
                selector = (svc.get("spec") or {}).get("selector") or {}
                if selector and any(lbl is not None and _selector(selector).matches(lbl) for lbl in labels):
                    self._dirty_services.add((key[0], svc["metadata"]["name"]))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            # Deployments still progressing, or failing to create pods, are looked at again each second
            # (the Deployment controller's resync and the ReplicaSet controller's retries).
            waiting = [k for k in self.pods if k in self._create_failure or not self._complete(k)]
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that comes as
                # the wait ends, and __aexit__ then waits for this loop forever.
                async with asyncio.timeout(1.0 if waiting else None):
                    await self._wake.wait()
            except TimeoutError:
                self._dirty_deployments.update(waiting)
            self._wake.clear()
            deployments, self._dirty_deployments = self._dirty_deployments, set()
            for key in sorted(deployments):
                await self._guarded(self._sync_deployment(*key), lambda k=key: self._dirty_deployments.add(k))
            services, self._dirty_services = self._dirty_services, set()
            for key in sorted(services):
                await self._guarded(self._sync_service(*key), lambda k=key: self._dirty_services.add(k))

    async def _guarded(self, work: Any, retry: Any) -> None:
        try:
            await work
        except WriteError as exc:
            if exc.status in (404, 409):
                retry()  # raced with a delete or a newer write: look again
                self._wake.set()
            else:
                self.errors.append(exc)
        except Exception as exc:
            self.errors.append(exc)

    # -- Deployments ------------------------------------------------------------------------------

    async def _write(
        self, method: str, resource: tuple[str, str, str], namespace: str, name: str | None, body: Any, **kw: Any
    ) -> dict[str, Any]:
        self.writes += 1
        return await self.emulator.write_local(method, *resource, namespace, name, body, **kw)

    async def _sync_deployment(self, namespace: str, name: str) -> None:
        dep = self.emulator.peek_object(*DEPLOYMENTS, namespace, name)
        if dep is None:
            self.pods.pop((namespace, name), None)
            return
        spec = dep.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        current_hash = template_hash(spec["template"])
        pods = self.pods.setdefault((namespace, name), [])
        current = [p for p in pods if p.template_hash == current_hash]
        self._create_failure.pop((namespace, name), None)
        for _ in range(desired - len(current)):
            pod = SimulatedPod(f"{name}-{current_hash[:6]}-{next(self._counter)}", current_hash, next_address())
            pod.container = str((spec["template"]["spec"].get("containers") or [{}])[0].get("name", ""))
            try:
                await self._create_pod(namespace, dep, pod)
            except WriteError as exc:
                if exc.status != 403:
                    raise
                self._create_failure[(namespace, name)] = exc.message  # a quota or admission refused it
                break
            pods.append(pod)
            current.append(pod)
        for pod in current[desired:]:
            await self._delete_pod(namespace, name, pod)
        current = current[:desired]
        image = str((spec["template"]["spec"].get("containers") or [{}])[0].get("image", ""))
        ready = (namespace, name) not in self._held and self.pullable(image)
        for pod in current:
            waiting = "" if self.pullable(image) else ("ImagePullBackOff" if pod.waiting else "ErrImagePull")
            if pod.ready != ready or pod.waiting != waiting:
                await self._pod_status(namespace, pod, ready, image, waiting)
        if all(p.ready for p in current):
            for pod in [p for p in pods if p.template_hash != current_hash]:
                await self._delete_pod(namespace, name, pod)
        await self._deployment_status(namespace, dep)

    async def _create_pod(self, namespace: str, dep: Mapping[str, Any], pod: SimulatedPod) -> None:
        template = dep["spec"]["template"]
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": dep["metadata"]["name"],
            "uid": dep["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": pod.template_hash}
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "labels": labels, "ownerReferences": [owner]},
            "spec": template.get("spec") or {},
        }
        await self._write("POST", PODS, namespace, None, manifest)

    async def _pod_status(self, namespace: str, pod: SimulatedPod, ready: bool, image: str, waiting: str) -> None:
        flag = "True" if ready else "False"
        messages = {
            "ErrImagePull": f'failed to pull image "{image}": not found',
            "ImagePullBackOff": f'Back-off pulling image "{image}"',
        }
        state: dict[str, Any] = (
            {"waiting": {"reason": waiting, "message": messages[waiting]}}
            if waiting
            else {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        )
        container = {
            "name": pod.container,
            "image": image,
            "ready": ready,
            "restartCount": 0,
            "started": "running" in state,
            "state": state,
        }
        status = {
            "phase": "Running",
            "podIP": pod.address,
            "podIPs": [{"ip": pod.address}],
            "hostIP": "127.0.0.1",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": flag},
                {"type": "Ready", "status": flag},
            ],
            "containerStatuses": [container],
        }
        pod.waiting = waiting
        await self._write(
            "PATCH",
            PODS,
            namespace,
            pod.name,
            {"status": status},
            subresource="status",
            content_type="application/merge-patch+json",
        )
        pod.ready = ready

    async def _delete_pod(self, namespace: str, deployment: str, pod: SimulatedPod) -> None:
        pods = self.pods.get((namespace, deployment), [])
        if pod in pods:
            pods.remove(pod)
        with contextlib.suppress(WriteError):
            await self._write("DELETE", PODS, namespace, pod.name, None)

    def _complete(self, key: tuple[str, str]) -> bool:
        return key in self._complete_keys

    async def _deployment_status(self, namespace: str, dep: Mapping[str, Any]) -> None:
        key = (namespace, dep["metadata"]["name"])
        pods = self.pods.get(key, [])
        current_hash = template_hash(dep["spec"]["template"])
        status, self._progress[key], complete = deployment_status(
            dep,
            template_hash=current_hash,
            total=len(pods),
            updated=sum(p.template_hash == current_hash for p in pods),
            ready=sum(bool(p.ready) for p in pods),
            now=self.clock(),
            progress=self._progress.get(key),
            create_failure=self._create_failure.get(key),
        )
        if complete:
            self._complete_keys.add(key)
        else:
            self._complete_keys.discard(key)
        if {k: v for k, v in (dep.get("status") or {}).items() if k in status} == status:
            return
        await self._write(
            "PATCH",
            DEPLOYMENTS,
            namespace,
            dep["metadata"]["name"],
            {"status": status},
            subresource="status",
            content_type="application/merge-patch+json",
        )

    # -- Services -------------------------------------------------------------------------------

    async def _sync_service(self, namespace: str, name: str) -> None:
        svc = self.emulator.peek_object(*SERVICES, namespace, name)
        selector = ((svc or {}).get("spec") or {}).get("selector") or {}
        if svc is None or not selector:
            return
        match = _selector(selector)
        selected = sorted(
            (p for p in self.emulator.peek_objects(*PODS, namespace) if match.matches(p["metadata"].get("labels"))),
            key=lambda p: p["metadata"]["name"],
        )
        endpoints = [
            {
                "addresses": [p["status"]["podIP"]],
                "conditions": {"ready": _ready(p)},
                "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": namespace},
            }
            for p in selected
            if (p.get("status") or {}).get("podIP")
        ]
        ports = [
            {
                "name": port.get("name", ""),
                "port": _target_port(port, selected),
                "protocol": port.get("protocol", "TCP"),
            }
            for port in svc["spec"].get("ports") or []
        ]
        slice_name = name + SLICE_SUFFIX
        existing = self.emulator.peek_object(*ENDPOINTSLICES, namespace, slice_name)
        if existing is None:
            manifest = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "simulated-workloads.modelfleet.dev",
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": name,
                            "uid": svc["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            }
            await self._write("POST", ENDPOINTSLICES, namespace, None, manifest)
        elif (existing.get("endpoints") or [], existing.get("ports") or []) != (endpoints, ports):
            await self._write(
                "PATCH",
                ENDPOINTSLICES,
                namespace,
                slice_name,
                {"endpoints": endpoints, "ports": ports},
                content_type="application/merge-patch+json",
            )


def _ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _target_port(port: Mapping[str, Any], pods: list[dict[str, Any]]) -> int:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    for pod in pods:
        for container in (pod.get("spec") or {}).get("containers") or []:
            for candidate in container.get("ports") or []:
                if candidate.get("name") == target:
                    return int(candidate["containerPort"])
    return 0


__all__ = ["SimulatedPod", "SimulatedWorkloads"]
