"""`modelfleet-operator`: run the operator, or render what it would create without a cluster.

    modelfleet-operator run [--namespace NS ...] [--all-namespaces] [--standalone] [config flags]
    modelfleet-operator render FILE [--set key=value ...]
    modelfleet-operator crd            # the ModelVersion CRD (crds/modelversion.yaml)

Configuration keys: see modelfleet_operator.config (flag --KEY, variable
MODELFLEET_OPERATOR_KEY, or `render --set KEY=VALUE`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import yaml

from modelfleet_operator import spec as crd
from modelfleet_operator.config import ConfigError, OperatorConfig, env_name, load_config, parse_set_options
from modelfleet_operator.core.manifests import SpecRejected
from modelfleet_operator.core.render import render_manifests

_HELP = {
    "runtime-image": "runtime image of versions that name none",
    "routing": "service (replica-ratio split, no dependency) or gateway (Gateway API HTTPRoute)",
    "gateway": "NAMESPACE/NAME of the Gateway the HTTPRoutes attach to (gateway routing)",
    "cluster-domain": "cluster DNS domain used in status endpoints",
    "allowed-images": "comma-separated images or repositories a ModelVersion may name (prefix/ for a tree)",
    "allowed-uri-schemes": "comma-separated model URI schemes a ModelVersion may use",
    "peering": "name of the kopf peering object shared by several operator replicas",
    "liveness-port": "port of the operator's liveness endpoint /healthz",
    "metrics-port": "port of the operator's Prometheus /metrics (0: off)",
    "log-level": "debug, info, warning, error or critical",
    "log-format": "text or json",
    "default-resources": "JSON resources of runtime containers whose ModelVersion sets none",
    "gateway-hostname-template": "hostname of a model's HTTPRoute: {model}, {namespace}, {domain} (gateway routing)",
    "gateway-domain": "the {domain} of gateway-hostname-template",
    "resync-seconds": "every model is reconciled at least this often, events or not (default 300)",
    "scale-down-delay-seconds": "a version giving up traffic keeps its replicas this long after the takers are "
    "Available (default 30)",
    "retire-after-seconds": "gateway routing: a version at weight 0 stays warm this long, then Retired (default 600)",
    "allowed-model-hosts": "comma-separated hosts (or *.DOMAIN) an http(s) model URI may name (empty: any)",
    "require-sha256": "true: a ModelVersion without spec.source.sha256 is Failed",
    "max-model-bytes": "largest model download, passed to the runtime and sizing its cache (default 4 GiB)",
    "download-timeout-seconds": "deadline of a whole model download, passed to the runtime (default 600)",
    "download-allowed-networks": "comma-separated private CIDRs model downloads may reach, passed to the runtime",
    "allowed-trainer-images": "comma-separated images whose own retraining command may run (default: none)",
    "consumable-secret-label": "KEY=VALUE label a Secret needs to be referenced (empty: no check)",
    "allowed-redis-hosts": "comma-separated hosts (or *.DOMAIN) features.redis.url may name (empty: any)",
    "network-policy": "true/false: a NetworkPolicy per model admitting only known namespaces (default true)",
    "operator-namespace": "the operator's namespace, admitted by the models' NetworkPolicies",
    "network-policy-namespaces": "comma-separated namespaces more admitted by the models' NetworkPolicies",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(OperatorConfig):
        key = f.name.replace("_", "-")
        env = env_name(key)
        if key == "namespaces":
            parser.add_argument(
                "--namespace",
                "-n",
                dest="namespaces",
                action="append",
                default=None,
                metavar="NS",
                help=f"watch this namespace (repeatable) [env {env}, comma-separated]",
            )
        elif f.type == "bool" and key in ("all-namespaces", "standalone"):
            parser.add_argument(
                f"--{key}",
                dest=f.name,
                action="store_const",
                const="true",
                default=None,
                help=f"{'watch every namespace' if key == 'all-namespaces' else 'run without peering (one operator)'} "
                f"[env {env}]",
            )
        else:
            parser.add_argument(f"--{key}", dest=f.name, default=None, help=f"{_HELP.get(key, '')} [env {env}]")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet-operator", description="ModelFleet: ONNX inference on Kubernetes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the cluster (KUBECONFIG or in-cluster)")
    _add_config_flags(run)

    render = sub.add_parser(
        "render",
        help="print the manifests the operator would create for the ModelVersions in FILE",
        description=(
            "Print, as YAML, every manifest the operator creates for the ModelVersion(s) in FILE "
            "(multi-document YAML, '-' for stdin) once all of them are Ready. Documents of other "
            "kinds are skipped. Objects without metadata.uid get no ownerReferences."
        ),
    )
    render.add_argument("file", metavar="FILE")
    render.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a configuration key, as for `run` (repeatable); MODELFLEET_OPERATOR_* variables apply too",
    )

    sub.add_parser("crd", help="print the ModelVersion CustomResourceDefinition")
    return parser


def _read_documents(path: str) -> list[Any]:
    """The file's YAML documents, whatever they hold: the caller says which are not ModelVersions."""
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def render(path: str, overrides: Mapping[str, str], environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    config = load_config(overrides, environ)
    documents = _read_documents(path)
    versions: list[dict[str, Any]] = []
    for index, doc in enumerate(documents, start=1):
        if not isinstance(doc, dict) or doc.get("kind") != crd.KIND:
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            print(f"render: skipping document {index} ({kind}): not a {crd.KIND}", file=err)
            continue
        if doc.get("apiVersion") != crd.API_VERSION:
            print(
                f"render: document {index} has apiVersion {doc.get('apiVersion')!r}, expected {crd.API_VERSION}",
                file=err,
            )
            return 2
        versions.append(doc)
    if not versions:
        print(f"render: no {crd.KIND} in {path}", file=err)
        return 2
    out.write(yaml.safe_dump_all(render_manifests(versions, config), sort_keys=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "crd":
            sys.stdout.write(crd.crd_yaml())
            return 0
        if args.command == "render":
            return render(args.file, parse_set_options(args.overrides), os.environ, sys.stdout, sys.stderr)
        options = {k: v for k, v in vars(args).items() if k != "command"}
        config = load_config(options, os.environ)
    except (ConfigError, SpecRejected) as err:
        print(f"modelfleet-operator: {err}", file=sys.stderr)
        return 2
    except (OSError, yaml.YAMLError) as err:
        print(f"modelfleet-operator: cannot read input: {err}", file=sys.stderr)
        return 2
    # Imported here so that `render` and `crd` work without the operator's cluster libraries.
    from modelfleet_operator import runner

    runner.run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
