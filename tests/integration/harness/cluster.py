"""One emulated cluster for a test: the API server, a client, a kubeconfig, a namespace, volumes.

`Cluster` is what the `cluster` fixture yields. Reads for assertions come from
the emulator's memory (`get`, `list`, `owned_by`); writes a test makes as a
user (apply, patch, delete a ModelVersion) go over HTTP like kubectl's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kmock
import yaml

from .client import ClusterClient
from .emulator import ClusterEmulator
from .kubelet import Volumes

MV = ("serving.modelfleet.dev", "v1alpha1", "modelversions")
DEPLOYMENTS = ("apps", "v1", "deployments")
SERVICES = ("", "v1", "services")
PODS = ("", "v1", "pods")
HPAS = ("autoscaling", "v2", "horizontalpodautoscalers")
PDBS = ("policy", "v1", "poddisruptionbudgets")


class Cluster:
    def __init__(self, emulator: ClusterEmulator, url: str, workdir: Path, namespace: str) -> None:
        self.emulator = emulator
        self.url = url
        self.namespace = namespace
        self.client = ClusterClient(url)
        self.volumes = Volumes(workdir / "volumes")
        workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = workdir / "kubeconfig.yaml"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulated", "cluster": {"server": url}}],
                    "users": [{"name": "operator", "user": {"token": "emulated"}}],
                    "contexts": [
                        {
                            "name": "emulated",
                            "context": {"cluster": "emulated", "user": "operator", "namespace": namespace},
                        }
                    ],
                    "current-context": "emulated",
                }
            )
        )

    # -- reads (in memory) ---------------------------------------------------------------------

    def get(self, resource: tuple[str, str, str], name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.emulator.live_object(*resource, namespace or self.namespace, name)

    def list(self, resource: tuple[str, str, str], namespace: str | None = None) -> list[dict[str, Any]]:
        return self.emulator.live_objects(*resource, namespace or self.namespace)

    def owned_by(self, resource: tuple[str, str, str], owner: Mapping[str, Any]) -> list[dict[str, Any]]:
        uid = owner["metadata"]["uid"]
        return [
            o
            for o in self.list(resource)
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        ]

    # -- writes as a user ----------------------------------------------------------------------

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create the ModelVersion, or merge its spec into the existing one (kubectl apply, roughly)."""
        name = manifest["metadata"]["name"]
        if self.get(MV, name) is None:
            return await self.client.create(*MV, self.namespace, manifest)
        return await self.client.merge_patch(*MV, self.namespace, name, {"spec": manifest["spec"]})

    async def patch_spec(self, name: str, spec_patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.client.merge_patch(*MV, self.namespace, name, {"spec": dict(spec_patch)})

    async def delete(self, resource: tuple[str, str, str], name: str) -> bool:
        return await self.client.delete(*resource, self.namespace, name)

    async def close(self) -> None:
        await self.client.close()


@contextlib.asynccontextmanager
async def running_cluster(crds: list[Mapping[str, Any]], workdir: Path, namespace: str = "ml"):
    emulator = ClusterEmulator()
    for crd in crds:
        emulator.register_crd(crd)
    async with emulator, kmock.Server(emulator) as server:
        cluster = Cluster(emulator, str(server.url).rstrip("/"), workdir, namespace)
        try:
            await cluster.client.create("", "v1", "namespaces", None, {"metadata": {"name": namespace}})
            yield cluster
        finally:
            await cluster.close()
            emulator.close_watches()
