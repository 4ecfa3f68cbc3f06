"""A test kubelet: runs the containers the operator wrote, as real local processes.

`PodProcess` starts one pod's first container from its manifest: `command` +
`args` (an absent command means the image's entrypoint, `modelfleet-runtime`),
`env` (plain values, fieldRef podIP/name/namespace, secretKeyRef and
configMapKeyRef read from the emulated cluster), volumes mapped to temporary
folders (emptyDir per pod; configMap and secret written out from their objects;
persistentVolumeClaim shared per claim under `Volumes.claim(ns, name)`), and
every mountPath in env and args rewritten to its folder (a folder above mount
paths, such as MODELFLEET_MODEL_ROOT, to a per-pod tree of links to them). Every pod gets its own
loopback address (127.0.0.2, 127.0.0.3, ...) with the port from the manifest,
and `MODELFLEET_HOST` set to it. Readiness is the manifest's readinessProbe
(httpGet path and port) on that address: probed at every sync until the pod is
ready, then every periodSeconds, lost after failureThreshold failures in a row.

`DeploymentController` plays the Deployment and ReplicaSet controllers and the
kubelet together: it starts pods for the template of each Deployment, keeps old
pods serving until the new template's pods are ready (a rolling update), stops
pods of scaled-down or deleted Deployments as a kubelet does (not ready at once,
so their endpoints leave the Services; the preStop sleep; SIGTERM; SIGKILL after
the grace period), restarts crashed containers with back-off and records the
termination message, writes Pod objects (status.podIP, Ready condition,
containerStatuses) and the Deployment's status (`deployments.py`: replicas,
updatedReplicas, readyReplicas, availableReplicas, observedGeneration, conditions
Available and Progressing). `EndpointSliceController` writes one EndpointSlice per
Service with the addresses of the selected pods.

It says why pods do not run as a real kubelet and Deployment controller do: an
image the harness cannot pull (any repository but the runtime's,
`runtime_image_pullable`; `pullable=` overrides) leaves the container waiting in
ErrImagePull, then ImagePullBackOff, and starts nothing; a process that keeps
exiting waits in CrashLoopBackOff ("back-off Ns restarting failed container=...")
with restartCount and lastState.terminated (exit code, reason, log tail); a pod the
API server refuses (a ResourceQuota, Pod Security admission) makes the Deployment's
ReplicaFailure condition True with reason FailedCreate and the API server's message,
retried each second; and a rollout not complete within spec.progressDeadlineSeconds
of its last progress (on `clock=`, the real monotonic clock by default) gets
Progressing False with reason ProgressDeadlineExceeded.

Simplifications, on purpose: pods are owned by their Deployment directly (no
ReplicaSet objects); liveness and startup probes are not run; only the first
container of a pod runs; the controllers poll the emulator's memory (they are
in-process) but write through its HTTP API, so every change is a watch event
the operator sees.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import itertools
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiohttp

from modelfleet_operator.config import DEFAULT_RUNTIME_IMAGE, image_repository
from tests.support.polling import PollingController
from tests.support.processes import ChildProcess

from .client import ApiError, ClusterClient
from .deployments import Progress, deployment_status
from .emulator import ClusterEmulator, _now

# Loopback addresses are never reused within a test session, so a port in TIME_WAIT never collides;
# each session starts at a random point of 127.0.0.0/8, so two sessions on one machine do not collide either.
_ADDRESSES = (
    str(ipaddress.IPv4Address("127.0.0.2") + i) for i in itertools.count(random.SystemRandom().randrange(1 << 23))
)
DEFAULT_ENTRYPOINT = ["modelfleet-runtime"]
PROBE_TIMEOUT_SECONDS = 1.0  # a probe's timeoutSeconds when the manifest gives none (Kubernetes' default)
# Grace periods in the manifests are for production; tests do not wait that long for a drain.
MAX_GRACE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 5.0


# The one image the test kubelet can "pull": the runtime it runs from this virtualenv.
RUNTIME_REPOSITORY = image_repository(DEFAULT_RUNTIME_IMAGE)


def runtime_image_pullable(image: str) -> bool:
    return image_repository(image) == RUNTIME_REPOSITORY


def next_address() -> str:
    return next(_ADDRESSES)


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Volumes:
    """Where the volumes of the emulated cluster live on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def claim(self, namespace: str, name: str) -> Path:
        """The folder behind a PersistentVolumeClaim (shared by every pod that mounts it)."""
        path = self.root / "claims" / namespace / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pod(self, namespace: str, pod: str) -> Path:
        path = self.root / "pods" / namespace / pod
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class PodProcess:
    """One running pod: its process, address, readiness and restarts."""

    namespace: str
    name: str
    owner: Mapping[str, Any]  # ownerReference to write into the Pod
    template: Mapping[str, Any]
    template_hash: str
    address: str
    volumes: Volumes
    cluster: ClusterEmulator
    process: ChildProcess | None = None
    ready: bool = False
    probe_failures: int = 0  # failed readiness probes in a row
    next_probe: float = 0.0  # when a ready pod is probed again (event-loop time)
    restarts: int = 0
    last_termination: dict[str, Any] | None = None
    next_start: float = 0.0
    stopping: bool = False
    readiness_body: Any = None
    backoff: float = 0.0  # seconds until the next start after a crash
    image_pull: tuple[str, str] | None = None  # (waiting reason, message) while the image cannot be pulled
    _mounts: dict[str, Path] = field(default_factory=dict)

    @property
    def container(self) -> Mapping[str, Any]:
        return self.template["spec"]["containers"][0]

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.template.get("metadata") or {}).get("labels") or {})

    def port(self, port: Any = None) -> int:
        ports = self.container.get("ports") or []
        if isinstance(port, int):
            return port
        if isinstance(port, str) and not port.isdigit():
            for p in ports:
                if p.get("name") == port:
                    return int(p["containerPort"])
            raise ValueError(f"pod {self.name}: no container port named {port!r}")
        if isinstance(port, str):
            return int(port)
        return int(ports[0]["containerPort"]) if ports else 8080

    # -- the container's view of the world -------------------------------------------------------

    def _prepare_volumes(self) -> None:
        pod_dir = self.volumes.pod(self.namespace, self.name)
        by_name: dict[str, Path] = {}
        for volume in self.template["spec"].get("volumes") or []:
            vname = volume["name"]
            if "persistentVolumeClaim" in volume:
                by_name[vname] = self.volumes.claim(self.namespace, volume["persistentVolumeClaim"]["claimName"])
                continue
            path = pod_dir / "volumes" / vname
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                self._write_items(path, "configmaps", volume["configMap"]["name"], volume["configMap"].get("items"))
            elif "secret" in volume:
                self._write_items(path, "secrets", volume["secret"]["secretName"], volume["secret"].get("items"))
            by_name[vname] = path
        self._mounts = {}
        for mount in self.container.get("volumeMounts") or []:
            base = by_name.get(mount["name"])
            if base is None:
                raise ValueError(f"pod {self.name}: volumeMount {mount['name']!r} names no volume")
            self._mounts[mount["mountPath"].rstrip("/") or "/"] = base / mount.get("subPath", "")
        # The container's filesystem as links, for a path above the mounts (MODELFLEET_MODEL_ROOT=/mnt/models
        # while the claim is mounted at /mnt/models/pvc/CLAIM).
        rootfs = pod_dir / "rootfs"
        for mount_path, local in self._mounts.items():
            link = rootfs / mount_path.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            if not link.exists():
                link.symlink_to(local, target_is_directory=True)

    def _write_items(self, path: Path, plural: str, name: str, items: Any) -> None:
        obj = self.cluster.live_object("", "v1", plural, self.namespace, name)
        if obj is None:
            raise ValueError(f"pod {self.name}: {plural[:-1]} {name!r} does not exist")
        data: dict[str, bytes] = {}
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value) if plural == "secrets" else str(value).encode()
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value)
        mapping = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
        for key, rel in mapping.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[key])

    def translate(self, text: str) -> str:
        """Rewrite container paths under a mountPath to the folder behind it.

        /tmp is left alone (TMPDIR points at its volume instead): test files live
        under the host's /tmp and file:// URIs name them as they are.
        """
        parent = text.rstrip("/")
        if (
            parent.startswith("/")
            and parent not in self._mounts
            and any(m.startswith(parent + "/") for m in self._mounts if m != "/tmp")
        ):
            return str(self.volumes.pod(self.namespace, self.name) / "rootfs") + parent
        for mount_path in sorted((m for m in self._mounts if m != "/tmp"), key=len, reverse=True):
            local = str(self._mounts[mount_path])
            start = 0
            while (index := text.find(mount_path, start)) >= 0:
                end = index + len(mount_path)
                if end == len(text) or text[end] in "/:,; ":
                    text = text[:index] + local + text[end:]
                    start = index + len(local)
                else:
                    start = end
        return text

    def _env_value(self, item: Mapping[str, Any]) -> str | None:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            return {"status.podIP": self.address, "metadata.name": self.name, "metadata.namespace": self.namespace}.get(
                path, ""
            )
        for key, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            if key in source:
                ref = source[key]
                obj = self.cluster.live_object("", "v1", plural, self.namespace, ref["name"]) or {}
                value = (obj.get("data") or {}).get(ref["key"])
                if value is None:
                    if ref.get("optional"):
                        return None
                    raise ValueError(f"pod {self.name}: {plural[:-1]} {ref['name']}/{ref['key']} is missing")
                return base64.b64decode(value).decode() if plural == "secrets" else str(value)
        return None

    def command_line(self) -> tuple[list[str], dict[str, str]]:
        self._prepare_volumes()
        pod_dir = self.volumes.pod(self.namespace, self.name)
        env = {
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "HOME": str(pod_dir),
            "XDG_CACHE_HOME": str(pod_dir / "cache"),
            "TMPDIR": str(self._mounts.get("/tmp", pod_dir)),
            "LANG": "C.UTF-8",
        }
        for item in self.container.get("env") or []:
            value = self._env_value(item)
            if value is not None:
                env[item["name"]] = self.translate(value)
        env["MODELFLEET_HOST"] = self.address
        argv = [self.translate(a) for a in (self.container.get("command") or DEFAULT_ENTRYPOINT)]
        args = [self.translate(a) for a in self.container.get("args") or []]
        # A --host flag would win over MODELFLEET_HOST and make pods collide on one port.
        for i, arg in enumerate(args[:-1]):
            if arg == "--host":
                args[i + 1] = self.address
        argv += args
        resolved = shutil.which(argv[0], path=env["PATH"])
        if resolved is None:
            raise FileNotFoundError(f"pod {self.name}: command {argv[0]!r} not found on PATH")
        return [resolved, *argv[1:]], env

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        argv, env = self.command_line()
        process = ChildProcess(argv, env, self.volumes.pod(self.namespace, self.name) / "container.log")
        await process.start()
        self.process = process
        self.ready = False

    def exited(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def log_tail(self) -> str:
        return "" if self.process is None else self.process.log_tail()

    async def readiness(self, http: aiohttp.ClientSession, now: float) -> bool:
        """Readiness as a kubelet keeps it, from the manifest's readinessProbe.

        A pod that is not ready is probed at every sync (a test need not wait a period for a
        start); a ready one every `periodSeconds`, and it turns not ready only after
        `failureThreshold` failed probes in a row, each allowed `timeoutSeconds`.
        """
        if self.process is None or not self.process.running:
            self.probe_failures = 0
            return False
        if self.ready and now < self.next_probe:
            return True
        spec = self.container.get("readinessProbe") or {}
        self.next_probe = now + float(spec.get("periodSeconds", 10))
        if await self.probe(http, float(spec.get("timeoutSeconds", PROBE_TIMEOUT_SECONDS))):
            self.probe_failures = 0
            return True
        self.probe_failures += 1
        return self.ready and self.probe_failures < int(spec.get("failureThreshold", 3))

    async def probe(self, http: aiohttp.ClientSession, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
        """One readinessProbe of the manifest, on this pod's address."""
        probe = self.container.get("readinessProbe")
        if self.process is None or not self.process.running:
            return False
        if not probe or "httpGet" not in probe:
            return True
        get = probe["httpGet"]
        url = f"http://{self.address}:{self.port(get.get('port'))}{get.get('path', '/')}"
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                self.readiness_body = await response.text()
                return 200 <= response.status < 400
        except (TimeoutError, aiohttp.ClientError):
            return False

    def prestop_seconds(self) -> float:
        """The container's preStop sleep (`lifecycle.preStop.sleep.seconds`), capped like the grace period."""
        sleep = ((self.container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
        return min(float(sleep.get("seconds", 0)), MAX_GRACE_SECONDS)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL to the pod's processes after its grace period (capped for tests)."""
        self.stopping = True
        if self.process is not None and self.process.running:
            await self.process.stop(
                min(float(self.template["spec"].get("terminationGracePeriodSeconds", 30)), MAX_GRACE_SECONDS)
            )

    # -- the Pod object -------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {**self.labels, "pod-template-hash": self.template_hash},
                "ownerReferences": [dict(self.owner)],
            },
            "spec": self.template["spec"],
        }

    def pod_status(self) -> dict[str, Any]:
        running = self.process is not None and self.process.running
        state: dict[str, Any]
        if running:
            state = {"running": {"startedAt": _now()}}
        elif self.image_pull is not None:
            state = {"waiting": {"reason": self.image_pull[0], "message": self.image_pull[1]}}
        elif self.restarts:
            message = (
                f"back-off {self.backoff:g}s restarting failed container={self.container['name']} "
                f"pod={self.name}_{self.namespace}"
            )
            state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        container_status = self.container_status(ready=self.ready, started=running, state=state)
        if self.last_termination:
            container_status["lastState"] = {"terminated": self.last_termination}
        return self.status_of_phase("Running" if running else "Pending", container_status)

    def container_status(self, *, ready: bool, started: bool, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": self.container["name"],
            "image": self.container.get("image", ""),
            "ready": ready,
            "restartCount": self.restarts,
            "started": started,
            "state": state,
        }

    def status_of_phase(
        self, phase: str, container_status: dict[str, Any], not_ready_reason: str | None = None
    ) -> dict[str, Any]:
        """The Pod's status: its address, the four conditions, the one container's status."""
        ready = {"status": "True" if container_status["ready"] else "False"}
        if not_ready_reason and not container_status["ready"]:
            ready["reason"] = not_ready_reason
        return {
            "phase": phase,
            "podIP": self.address,
            "podIPs": [{"ip": self.address}],
            "hostIP": "127.0.0.1",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", **ready},
                {"type": "Ready", **ready},
            ],
            "containerStatuses": [container_status],
        }


P = TypeVar("P", bound=PodProcess)


class PodController(PollingController, Generic[P]):
    """A controller whose pods run as processes; they all stop when it ends."""

    def __init__(self, cluster: ClusterEmulator, client: ClusterClient, volumes: Volumes) -> None:
        super().__init__()
        self.cluster = cluster
        self.client = client
        self.volumes = volumes
        self.pods: dict[tuple[str, str], P] = {}  # (namespace, pod name)
        self.started: list[P] = []  # every pod it ever ran, to prove none outlives it
        self._counter = itertools.count()

    def still_running(self) -> list[P]:
        return [pod for pod in self.started if pod.process is not None and pod.process.running]

    async def close(self) -> None:
        await asyncio.gather(*(pod.stop() for pod in self.pods.values()), return_exceptions=True)


class DeploymentController(PodController[PodProcess]):
    """Deployments → running pods → Pod objects and Deployment status (see the module docstring)."""

    task_name = "test kubelet"

    def __init__(
        self,
        cluster: ClusterEmulator,
        client: ClusterClient,
        volumes: Volumes,
        *,
        pullable: Callable[[str], bool] = runtime_image_pullable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(cluster, client, volumes)
        self.pullable = pullable
        self.clock = clock
        self._written_status: dict[tuple[str, str], Any] = {}
        self._written_pod_status: dict[tuple[str, str], Any] = {}
        self._http: aiohttp.ClientSession | None = None
        self._progress: dict[tuple[str, str], Progress] = {}
        # Why pods of a Deployment cannot be created (the API server's refusal), and when to try again.
        self._create_failure: dict[tuple[str, str], tuple[str, float]] = {}
        # Pods on their way out: not ready, in their preStop sleep or their drain.
        self.terminating: dict[tuple[str, str], PodProcess] = {}
        self._terminations: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        # The pods in their preStop sleep are stopped now, with the others.
        leaving = list(self.terminating.values())
        for task in self._terminations:
            task.cancel()
        await asyncio.gather(*self._terminations, return_exceptions=True)
        await asyncio.gather(*(pod.stop() for pod in leaving), return_exceptions=True)
        await super().close()
        if self._http is not None:
            await self._http.close()

    def pods_of(self, namespace: str, deployment: str) -> list[PodProcess]:
        return [p for (ns, _), p in self.pods.items() if ns == namespace and p.owner["name"] == deployment]

    async def sync(self) -> None:
        deployments = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): d
            for d in self.cluster.live_objects("apps", "v1", "deployments")
        }
        # Pods whose Deployment is gone (deleted, garbage-collected) stop.
        for key, pod in list(self.pods.items()):
            dep = deployments.get((pod.namespace, pod.owner["name"]))
            if dep is None or dep["metadata"]["uid"] != pod.owner["uid"]:
                await self._remove(key)
        for (namespace, name), dep in deployments.items():
            await self._sync_deployment(namespace, name, dep)

    async def _sync_deployment(self, namespace: str, name: str, dep: Mapping[str, Any]) -> None:
        assert self._http is not None
        spec = dep.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        template = spec["template"]
        current_hash = template_hash(template)
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
            "uid": dep["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        mine = self.pods_of(namespace, name)
        current = [p for p in mine if p.template_hash == current_hash]
        old = [p for p in mine if p.template_hash != current_hash]

        await self._create_pods(namespace, name, owner, template, current_hash, current, desired)
        for pod in sorted(current, key=lambda p: p.name)[desired:] if len(current) > desired else []:
            await self._remove((namespace, pod.name))
            current.remove(pod)

        loop = asyncio.get_running_loop()
        for pod in current + old:
            if not self.pullable(str(pod.container.get("image", ""))):
                await self._cannot_pull(pod)
                continue
            if pod.process is None and loop.time() >= pod.next_start:
                try:
                    await pod.start()
                except (OSError, ValueError) as exc:
                    pod.last_termination = {
                        "exitCode": 128,
                        "reason": "StartError",
                        "message": str(exc),
                        "finishedAt": _now(),
                    }
                    pod.restarts += 1
                    pod.backoff = min(2**pod.restarts * 0.5, MAX_BACKOFF_SECONDS)
                    pod.next_start = loop.time() + pod.backoff
            elif pod.process is not None and not pod.process.running and not pod.stopping:
                pod.last_termination = {
                    "exitCode": pod.process.returncode,
                    "reason": "Error" if pod.process.returncode else "Completed",
                    "message": pod.log_tail(),
                    "finishedAt": _now(),
                }
                pod.restarts += 1
                pod.process = None
                pod.ready = False
                pod.backoff = min(2**pod.restarts * 0.5, MAX_BACKOFF_SECONDS)
                pod.next_start = loop.time() + pod.backoff
            else:
                pod.ready = await pod.readiness(self._http, loop.time())
            await self._write_pod_status(pod)

        # A rolling update: old pods serve until every new one is ready.
        if old and len([p for p in current if p.ready]) >= desired:
            for pod in old:
                await self._remove((namespace, pod.name))
            old = []

        everyone = current + old
        key = (namespace, name)
        failure = self._create_failure.get(key)
        status, self._progress[key], _ = deployment_status(
            dep,
            template_hash=current_hash,
            total=len(everyone),
            updated=len(current),
            ready=len([p for p in everyone if p.ready]),
            now=self.clock(),
            progress=self._progress.get(key),
            create_failure=failure[0] if failure else None,
        )
        changed = (
            self._written_status.get((namespace, name)) != status
            or (dep.get("status") or {}).get("observedGeneration") != status["observedGeneration"]
        )
        if changed and await self.client.write_status("apps", "v1", "deployments", namespace, name, status):
            self._written_status[(namespace, name)] = status

    async def _create_pods(
        self,
        namespace: str,
        name: str,
        owner: Mapping[str, Any],
        template: Mapping[str, Any],
        current_hash: str,
        current: list[PodProcess],
        desired: int,
    ) -> None:
        """Pods up to `desired`; a refusal (quota, Pod Security) becomes the ReplicaFailure, retried each second."""
        key = (namespace, name)
        failure = self._create_failure.get(key)
        if failure is not None and self.clock() < failure[1]:
            return
        self._create_failure.pop(key, None)
        for _ in range(desired - len(current)):
            pod = PodProcess(
                namespace=namespace,
                name=f"{name}-{current_hash[:6]}-{next(self._counter)}",
                owner=owner,
                template=template,
                template_hash=current_hash,
                address=next_address(),
                volumes=self.volumes,
                cluster=self.cluster,
            )
            try:
                await self.client.create("", "v1", "pods", namespace, pod.manifest())
            except ApiError as exc:
                if exc.status != 403:
                    raise
                self._create_failure[key] = (str((exc.body or {}).get("message", exc.body)), self.clock() + 1.0)
                return
            self.pods[(namespace, pod.name)] = pod
            self.started.append(pod)
            current.append(pod)

    async def _cannot_pull(self, pod: PodProcess) -> None:
        """The image is not one the harness can run: ErrImagePull, then ImagePullBackOff; never ready."""
        image = str(pod.container.get("image", ""))
        if pod.image_pull is None:
            pod.image_pull = (
                "ErrImagePull",
                f'failed to pull image "{image}": the test kubelet has only {RUNTIME_REPOSITORY}',
            )
        else:
            pod.image_pull = ("ImagePullBackOff", f'Back-off pulling image "{image}"')
        pod.ready = False
        await self._write_pod_status(pod)

    async def _write_pod_status(self, pod: PodProcess) -> None:
        key = (pod.namespace, pod.name)
        status = pod.pod_status()
        # Everything but the start time: a new waiting reason or a restart is news for the operator.
        states = [
            {k: v for k, v in cs.items() if k != "state"}
            | {"state": {s: dict(v, startedAt=None) for s, v in cs["state"].items()}}
            for cs in status["containerStatuses"]
        ]
        comparable = json.dumps(
            {k: v for k, v in status.items() if k != "containerStatuses"}, sort_keys=True
        ) + json.dumps(states, sort_keys=True)
        if self._written_pod_status.get(key) == comparable:
            return
        if await self.client.write_status("", "v1", "pods", pod.namespace, pod.name, status):
            self._written_pod_status[key] = comparable

    async def _remove(self, key: tuple[str, str]) -> None:
        """Terminate a pod as a kubelet does: not ready at once (its endpoint leaves the Services),
        then the container's preStop sleep, then SIGTERM and the drain; the Pod object goes last.

        The controller goes on meanwhile; a terminating pod no longer counts for its Deployment.
        """
        pod = self.pods.pop(key)
        self.terminating[key] = pod
        pod.ready = False
        await self._write_pod_status(pod)
        task = asyncio.create_task(self._terminate(key, pod), name=f"terminate pod {pod.name}")
        self._terminations.add(task)
        task.add_done_callback(self._terminations.discard)

    async def _terminate(self, key: tuple[str, str], pod: PodProcess) -> None:
        try:
            if pod.process is not None and pod.process.running:
                await asyncio.sleep(pod.prestop_seconds())  # the container's own preStop hook
            await pod.stop()
            await self.client.delete("", "v1", "pods", pod.namespace, pod.name)
        except Exception as exc:  # the test fails with it, like any controller error
            self.errors.append(exc)
        finally:
            self.terminating.pop(key, None)
            self._written_pod_status.pop(key, None)


class EndpointSliceController(PollingController):
    """One EndpointSlice per Service with a selector, listing the selected pods and their readiness."""

    task_name = "endpointslice controller"

    def __init__(self, cluster: ClusterEmulator, client: ClusterClient) -> None:
        super().__init__()
        self.cluster = cluster
        self.client = client

    async def sync(self) -> None:
        pods = self.cluster.live_objects("", "v1", "pods")
        for svc in self.cluster.live_objects("", "v1", "services"):
            selector = (svc.get("spec") or {}).get("selector") or {}
            if not selector:
                continue
            namespace, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            selected = [
                p
                for p in pods
                if p["metadata"]["namespace"] == namespace
                and labels_match(selector, p["metadata"].get("labels") or {})
                and (p.get("status") or {}).get("podIP")
            ]
            ports = []
            for port in svc["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                if isinstance(target, str) and not target.isdigit():
                    target = _port_by_name(selected[0], target) if selected else 0
                if int(target):
                    ports.append({"name": port.get("name", ""), "port": int(target), "protocol": "TCP"})
            slice_name = f"{name}-emulated"
            desired = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name,
                    "namespace": namespace,
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "modelfleet-test-harness",
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
                "endpoints": [
                    {
                        "addresses": [p["status"]["podIP"]],
                        "conditions": {
                            "ready": any(
                                c.get("type") == "Ready" and c.get("status") == "True"
                                for c in p["status"].get("conditions") or []
                            )
                        },
                        "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": namespace},
                    }
                    for p in sorted(selected, key=lambda p: p["metadata"]["name"])
                ],
            }
            existing = self.cluster.live_object("discovery.k8s.io", "v1", "endpointslices", namespace, slice_name)
            if existing is None:
                with contextlib.suppress(ApiError):
                    await self.client.create("discovery.k8s.io", "v1", "endpointslices", namespace, desired)
            elif (existing.get("endpoints"), existing.get("ports")) != (desired["endpoints"], desired["ports"]):
                try:
                    await self.client.merge_patch(
                        "discovery.k8s.io",
                        "v1",
                        "endpointslices",
                        namespace,
                        slice_name,
                        {"endpoints": desired["endpoints"], "ports": desired["ports"]},
                    )
                except ApiError as exc:
                    # Its Service was deleted since the read, and the garbage collector took the slice
                    # with it (as kube-controller-manager's EndpointSlice controller, try again next pass).
                    if exc.status != 404:
                        raise


def _port_by_name(pod: Mapping[str, Any], port_name: str) -> int:
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name:
                return int(port["containerPort"])
    return 0


__all__ = ["DeploymentController", "EndpointSliceController", "PodController", "PodProcess", "Volumes", "next_address"]
