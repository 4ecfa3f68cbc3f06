"""Pod Security admission of Pods, as the API server's PodSecurity plugin enforces a namespace's level.

The level is the namespace's label `pod-security.kubernetes.io/enforce`
(`privileged`, the default, allows everything; `baseline`; `restricted`), checked
with the Pod Security Standards' rules (https://kubernetes.io/docs/concepts/security/pod-security-standards/):

- baseline: no host namespaces (hostNetwork, hostPID, hostIPC), no privileged
  containers, capabilities added only from the baseline set, no hostPath volumes,
  no hostPort, no `Unconfined` seccomp profile, no unsafe sysctls, default /proc mount;
- restricted, in addition: only configMap, csi, downwardAPI, emptyDir, ephemeral,
  persistentVolumeClaim, projected and secret volumes; every container sets
  `allowPrivilegeEscalation: false`, drops `ALL` capabilities and adds none but
  `NET_BIND_SERVICE`; `runAsNonRoot: true` (pod or every container) and no
  `runAsUser: 0`; a `RuntimeDefault` or `Localhost` seccomp profile (pod or every container).

A violating Pod is refused with 403 and the API server's message:
`pods "x" is forbidden: violates PodSecurity "restricted:latest": <check> (<what to set>), ...`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .writes import WriteError

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    kinds = ("initContainers", "containers", "ephemeralContainers")
    return [c for kind in kinds for c in spec.get(kind) or []]


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _plural(names: list[str]) -> str:
    return "container" if len(names) == 1 else "containers"


def baseline(spec: Mapping[str, Any]) -> Iterator[str]:
    pod_context = spec.get("securityContext") or {}
    host = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        yield f"host namespaces ({', '.join(host)})"
    containers = _containers(spec)
    privileged = [c["name"] for c in containers if (c.get("securityContext") or {}).get("privileged")]
    if privileged:
        yield f"privileged ({_plural(privileged)} {_quoted(privileged)} must not set securityContext.privileged=true)"
    added = {
        c["name"]: sorted(
            set(((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        )
        for c in containers
    }
    if any(added.values()):
        names = [n for n, caps in added.items() if caps]
        forbidden = _quoted(sorted({cap for n in names for cap in added[n]}))
        yield (
            f"non-default capabilities ({_plural(names)} {_quoted(names)} must not include {forbidden} "
            "in securityContext.capabilities.add)"
        )
    host_paths = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    if host_paths:
        yield f"hostPath volumes (volumes {_quoted(host_paths)})"
    ports = [c["name"] for c in containers if any(p.get("hostPort") for p in c.get("ports") or [])]
    if ports:
        yield f"hostPort ({_plural(ports)} {_quoted(ports)} uses hostPort)"
    profiles = [pod_context.get("seccompProfile")] + [
        (c.get("securityContext") or {}).get("seccompProfile") for c in containers
    ]
    if any((p or {}).get("type") == "Unconfined" for p in profiles):
        yield 'seccompProfile (pod or containers must not set securityContext.seccompProfile.type to "Unconfined")'
    unsafe = [s["name"] for s in pod_context.get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]
    if unsafe:
        yield f"forbidden sysctls ({', '.join(unsafe)})"
    proc = [c["name"] for c in containers if (c.get("securityContext") or {}).get("procMount", "Default") != "Default"]
    if proc:
        yield f'procMount ({_plural(proc)} {_quoted(proc)} must not set securityContext.procMount to "Unmasked")'


def restricted(spec: Mapping[str, Any]) -> Iterator[str]:
    yield from baseline(spec)
    pod_context = spec.get("securityContext") or {}
    containers = _containers(spec)
    volumes = [v["name"] for v in spec.get("volumes") or [] if not (set(v) - {"name"}) & RESTRICTED_VOLUMES]
    if volumes:
        yield f"restricted volume types (volumes {_quoted(volumes)} use restricted volume types)"
    escalation = [
        c["name"] for c in containers if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False
    ]
    if escalation:
        yield (
            f"allowPrivilegeEscalation != false ({_plural(escalation)} {_quoted(escalation)} must set "
            "securityContext.allowPrivilegeEscalation=false)"
        )
    capabilities = []
    for c in containers:
        caps = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            capabilities.append(c["name"])
    if capabilities:
        yield (
            f"unrestricted capabilities ({_plural(capabilities)} {_quoted(capabilities)} must set "
            'securityContext.capabilities.drop=["ALL"])'
        )
    non_root = [
        c["name"]
        for c in containers
        if (c.get("securityContext") or {}).get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True
    ]
    if non_root:
        yield (
            f"runAsNonRoot != true (pod or {_plural(non_root)} {_quoted(non_root)} must set "
            "securityContext.runAsNonRoot=true)"
        )
    root = [
        c["name"]
        for c in containers
        if (c.get("securityContext") or {}).get("runAsUser", pod_context.get("runAsUser")) == 0
    ]
    if root:
        yield f"runAsUser=0 (pod or {_plural(root)} {_quoted(root)} must not set runAsUser=0)"
    pod_profile = (pod_context.get("seccompProfile") or {}).get("type")
    unconfined = [
        c["name"]
        for c in containers
        if ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type", pod_profile)
        not in ("RuntimeDefault", "Localhost")
    ]
    if unconfined:
        yield (
            f"seccompProfile (pod or {_plural(unconfined)} {_quoted(unconfined)} must set "
            'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
        )


CHECKS = {"baseline": baseline, "restricted": restricted}


def admit_pod(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None) -> None:
    """Raise WriteError 403 when `pod` violates its namespace's enforced Pod Security level."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get(ENFORCE_LABEL, "privileged")
    check = CHECKS.get(level)
    if check is None:
        return
    violations = list(check(pod.get("spec") or {}))
    if violations:
        name = (pod.get("metadata") or {}).get("name", "")
        version = labels.get(f"{ENFORCE_LABEL}-version", "latest")
        raise WriteError(
            403,
            "Forbidden",
            f'pods "{name}" is forbidden: violates PodSecurity "{level}:{version}": {", ".join(violations)}',
        )


__all__ = ["ENFORCE_LABEL", "admit_pod", "baseline", "restricted"]
