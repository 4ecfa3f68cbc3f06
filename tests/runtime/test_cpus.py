"""How many CPUs a container may use: cgroup v2 and v1 quotas, ancestors, the affinity mask."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet_runtime.cpus import cgroup_quotas, usable_cpus, v1_quota, v2_quota


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5), ("", None)],
)
def test_cgroup_v2_cpu_max_gives_the_quota(text: str, cpus: float | None) -> None:
    assert v2_quota(text) == cpus


def test_cgroup_v1_cfs_quota_gives_the_quota() -> None:
    assert v1_quota("-1\n", "100000\n") is None
    assert v1_quota("300000\n", "100000\n") == 3.0
    assert v1_quota("junk", "100000") is None


def test_a_fraction_of_a_cpu_rounds_down_and_never_below_one() -> None:
    assert usable_cpus([1.5], affinity=8) == 1
    assert usable_cpus([0.25], affinity=8) == 1
    assert usable_cpus([4.0], affinity=2) == 2  # the affinity mask bounds it too
    assert usable_cpus([None, None], affinity=6) == 6  # no quota anywhere: the CPUs it may run on


def test_the_lowest_quota_of_the_cgroup_and_its_ancestors_wins(tmp_path: Path) -> None:
    pod = tmp_path / "kubepods" / "pod1"
    container = pod / "ctr"
    container.mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.max").write_text("300000 100000\n")
    (container / "cpu.max").write_text("max 100000\n")
    quotas = cgroup_quotas(tmp_path, "0::/kubepods/pod1/ctr\n")
    assert usable_cpus(quotas, affinity=16) == 3


def test_cgroup_v1_files_are_found_under_the_cpu_controller(tmp_path: Path) -> None:
    folder = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("200000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    quotas = cgroup_quotas(tmp_path, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    assert usable_cpus(quotas, affinity=16) == 2
