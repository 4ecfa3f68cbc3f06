"""Least privilege, proven at the end of every run: the chart's RBAC against the operator's requests.

A pytest plugin (tests/conftest.py loads it). The integration scenarios run the
real operator against an emulated API server that records every request the
operator makes (the `cluster` fixture adds them to `api_requests`). When the
session ends, whatever ran and in whatever order:

- every recorded request must be granted by the chart's RBAC, rendered as the
  scenarios deploy it (`watchNamespaces: [ml]`, gateway routing, so the rules of
  both routing modes, scoped as a namespaced install scopes them);
- when the whole integration suite ran and passed (no file left out, nothing
  deselected or skipped), every grant must also have been used by some request.

A failure marks the session failed and says what is missing or unused. Under
pytest-xdist each worker hands its requests to the controller, which checks
them all together. The requests are also written, as JSON, to
$MODELFLEET_API_REQUESTS_FILE (default .pytest_cache/modelfleet/api-requests.json).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart_render import helm_path, render_chart
from tests.chart.rbac import check_requests, grants
from tests.integration.harness.emulator import ApiRequest, dump_requests

from .paths import INTEGRATION

VALUES = {
    "watchNamespaces": ["ml"],
    "routing": {"mode": "gateway", "gateway": {"namespace": "ml", "name": "public"}},
}
WORKER_OUTPUT = "modelfleet_rbac_replay"


class RbacReplay:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.requests: set[ApiRequest] = set()
        # Why the unused-grant half cannot be judged in this run (the whole suite did not run).
        self.partial: set[str] = set()
        self.report: list[str] = []
        self.failed = False
        self._prefix = INTEGRATION.relative_to(config.rootpath).as_posix() + "/"

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def _scenario(self, nodeid: str) -> bool:
        return nodeid.startswith(self._prefix)

    # -- what ran ------------------------------------------------------------------------------

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if any(self._scenario(item.nodeid) for item in items):
            self.partial.add("some integration scenarios were deselected")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        files = {Path(item.path) for item in items if self._scenario(item.nodeid)}
        if not files:
            return
        left_out = sorted(p.name for p in INTEGRATION.glob("test_*.py") if p not in files)
        if left_out:
            self.partial.add(f"integration files not collected: {', '.join(left_out)}")
        for arg in self.config.args:
            path, sep, _ = arg.partition("::")
            if sep and Path(path).resolve().is_relative_to(INTEGRATION):
                self.partial.add(f"only part of a scenario file was selected: {arg}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self._scenario(report.nodeid) and (report.failed or report.skipped):
            self.partial.add("some integration scenarios failed or were skipped")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist's controller: a worker finished; take its requests."""
        output = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
        if output is None:
            self.partial.add(f"worker {getattr(node, 'gateway', node)} ended without its requests ({error})")
            return
        self.requests.update(ApiRequest(**r) for r in output["requests"])
        self.partial.update(output["partial"])

    # -- the check -----------------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            self.config.workeroutput[WORKER_OUTPUT] = {  # type: ignore[attr-defined]
                "requests": [r.as_dict() for r in self.requests],
                "partial": sorted(self.partial),
            }
            return
        if not self.requests:
            return
        self._write_requests()
        try:
            self._check()
        except Exception as exc:  # no helm, a chart that does not render: the check did not pass
            self._fail(f"could not replay the requests against the chart: {type(exc).__name__}: {exc}")
        if self.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _check(self) -> None:
        with tempfile.TemporaryDirectory(prefix="modelfleet-rbac-") as workdir:
            rendered = render_chart(helm_path(), VALUES, Path(workdir))
        if not grants(rendered):
            self._fail("the chart rendered no RBAC rules")
            return
        missing, unused = check_requests(self.requests, rendered)
        self.report.append(f"{len(self.requests)} distinct requests of the operator replayed against the chart")
        if missing:
            self._fail(f"the operator made requests the chart does not grant: {sorted(missing)}")
        if self.partial:
            self.report.append(
                "unused grants not judged, only the whole integration suite can: " + "; ".join(sorted(self.partial))
            )
        elif unused:
            self._fail(f"the chart grants what the operator never used: {sorted(unused)}")
        if not self.failed:
            self.report.append("every request is granted" + ("" if self.partial else ", and every grant was used"))

    def _fail(self, message: str) -> None:
        self.failed = True
        self.report.append("FAILED: " + message)

    def _write_requests(self) -> None:
        default = self.config.rootpath / ".pytest_cache" / "modelfleet" / "api-requests.json"
        target = Path(os.environ.get("MODELFLEET_API_REQUESTS_FILE", default))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dump_requests(self.requests))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report:
            terminalreporter.write_sep("=", "RBAC replay (tests/support/rbac_replay.py)", red=self.failed)
            for line in self.report:
                terminalreporter.write_line(line, red=line.startswith("FAILED"))


_KEY = pytest.StashKey[RbacReplay]()


def pytest_configure(config: pytest.Config) -> None:
    replay = RbacReplay(config)
    config.stash[_KEY] = replay
    config.pluginmanager.register(replay, "modelfleet-rbac-replay")


@pytest.fixture(scope="session")
def api_requests(pytestconfig: pytest.Config) -> set[ApiRequest]:
    """The operator's requests recorded in this process; the `cluster` fixture adds to it."""
    return pytestconfig.stash[_KEY].requests
