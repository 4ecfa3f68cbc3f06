"""The Deployment the chart renders starts the operator as its CLI and
configuration expect: the arguments parse, and every MODELFLEET_OPERATOR_*
variable is a configuration key with a value the operator accepts."""

from __future__ import annotations

import pytest

from modelfleet_operator import cli
from modelfleet_operator.config import CONFIG_KEYS, env_name, load_config
from modelfleet_operator.runner import peering
from tests.chart.chart_render import VALUE_SETS, env_of, operator_container

KNOWN_VARIABLES = {env_name(key) for key in CONFIG_KEYS}


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_rendered_command_line_and_environment_configure_the_operator(render, value_set: str) -> None:
    container = operator_container(render(VALUE_SETS[value_set]))
    assert container["command"] == ["modelfleet-operator"]
    args = cli._parser().parse_args(container["args"])
    assert args.command == "run"
    env = {k: v for k, v in env_of(container).items() if k.startswith("MODELFLEET_OPERATOR_")}
    assert set(env) <= KNOWN_VARIABLES, f"unknown to the operator: {sorted(set(env) - KNOWN_VARIABLES)}"
    options = {k: v for k, v in vars(args).items() if k != "command"}
    config = load_config(options, env)
    assert config.liveness_port == 8081
    assert config.runtime_image == "ghcr.io/modelfleet/runtime:0.1.0"
    assert bool(config.namespaces) == bool(VALUE_SETS[value_set].get("watchNamespaces"))
    assert config.all_namespaces != bool(config.namespaces)
    # One replica runs standalone; several peer under the chart's name, each with its own priority.
    several = VALUE_SETS[value_set].get("replicas", 1) > 1
    assert config.standalone != several
    assert bool(peering(config)) == several and (not several or peering(config)["peering_name"] == config.peering)
