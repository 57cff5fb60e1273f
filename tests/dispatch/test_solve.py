"""Host selection: priority order, chip type and count, live availability, SLURM queueing."""

from __future__ import annotations

import pytest

from theseus.dispatch.config import DispatchConfig, parse
from theseus.dispatch.solve import Placement, choose
from theseus.errors import UserError
from theseus.job import Request


def config(priority: list[str] | None = None) -> DispatchConfig:
    return parse(
        {
            "clusters": {
                "a": {"root": "/a/out", "work": "/a/work"},
                "b": {"root": "/b/out", "work": "/b/work"},
            },
            "hosts": {
                "box4": {"type": "ssh", "ssh": "box4", "cluster": "a", "chips": {"a100-80gb": 4}},
                "box8": {"type": "ssh", "ssh": "box8", "cluster": "b", "chips": {"h100": 8}},
                "slurm": {
                    "type": "slurm",
                    "ssh": "login",
                    "cluster": "b",
                    "chips": {"h100": 8, "cpu": 4},
                },
            },
            "priority": priority or [],
        },
        "test",
    )


def pick(cfg: DispatchConfig, request: Request, free: set[str] | None = None, **kw) -> Placement:
    def probe(name, host, placement) -> bool:
        return free is None or name in free

    return choose(cfg, request, cfg.clusters["a"], probe=probe, **kw)


def test_priority_then_file_order() -> None:
    assert pick(config(), Request("h100", 8)).host_name == "box8"
    assert pick(config(["slurm"]), Request("h100", 8)).host_name == "slurm"


def test_chip_type_and_count() -> None:
    assert pick(config(), Request("a100-80gb", 2)).host_name == "box4"
    with pytest.raises(UserError, match=r"box4 has only 4 a100-80gb"):
        pick(config(), Request("a100-80gb", 8))


def test_a_chip_under_another_name_is_the_same_chip() -> None:
    # a request written with the reference system's name finds the host listing the chip
    assert pick(config(), Request("a100-sxm4-80gb", 2)).chip == "a100-80gb"
    # and a host listing it by that name (with its gres) is found by the catalogue's name
    hosts = {
        "gpu": {
            "type": "slurm",
            "cluster": "a",
            "chips": {"A100-SXM4-80GB": 8},
            "gres": {"a100-sxm4-80gb": "gpu:a100"},
        }
    }
    cfg = parse({"clusters": {"a": {"root": "/a", "work": "/w"}}, "hosts": hosts}, "test")
    assert cfg.hosts["gpu"].chips == {"a100-80gb": 8}
    assert cfg.hosts["gpu"].gres == {"a100-80gb": "gpu:a100"}
    assert pick(cfg, Request("a100-80gb", 8)).host_name == "gpu"
    with pytest.raises(
        UserError, match=r"'a100-sxm4-80gb' and 'a100-80gb' are both a100-80gb; give its count once"
    ):
        parse(
            {
                "clusters": {"a": {"root": "/a", "work": "/w"}},
                "hosts": {"gpu": {**hosts["gpu"], "chips": {"a100-sxm4-80gb": 8, "a100-80gb": 8}}},
            },
            "test",
        )


def test_request_bigger_than_a_node_becomes_several_nodes() -> None:
    placement = pick(config(), Request("h100", 16))
    assert (
        placement.host_name,
        placement.nodes,
        placement.gpus_per_node,
        placement.tasks_per_node,
    ) == ("slurm", 2, 8, 1)
    with pytest.raises(UserError, match="not a multiple"):
        pick(config(), Request("h100", 12))


def test_busy_hosts_are_skipped_and_slurm_queues_when_all_are_busy() -> None:
    passed_over: list[str] = []
    chosen = pick(config(), Request("h100", 8), free={"slurm"}, passed_over=passed_over)
    assert chosen.host_name == "slurm" and passed_over == ["box8 is busy"]  # said at submit
    queued = pick(config(), Request("h100", 8), free=set())
    assert queued.host_name == "slurm" and queued.queued
    with pytest.raises(UserError, match="box4 is busy"):
        pick(config(), Request("a100-80gb", 4), free=set())


def test_cpu_jobs_follow_the_same_order_with_local_last() -> None:
    assert (
        pick(config(), Request()).host_name == "slurm"
    )  # file order: slurm has cpu, local is last
    assert pick(config(), Request(), clusters=["local"]).host_name == "local"
    on_slurm = pick(config(), Request("cpu", 2), exclude_clusters=["local"])
    assert (on_slurm.host_name, on_slurm.tasks_per_node, on_slurm.gpus_per_node) == ("slurm", 2, 0)
    with pytest.raises(UserError, match="runs CPU jobs only"):
        pick(config(), Request("h100", 1), clusters=["local"])
    # a busy SLURM host queues the job rather than this machine taking it, unless priority names it
    queued = pick(config(), Request(), free=set())
    assert (queued.host_name, queued.queued) == ("slurm", True)
    assert pick(config(["slurm", "local"]), Request(), free=set()).host_name == "local"
    assert pick(config(["local"]), Request()).host_name == "local"


def test_cluster_filters() -> None:
    assert (
        pick(config(), Request("h100", 8), clusters=["b"], exclude_clusters=[]).host_name == "box8"
    )
    with pytest.raises(UserError, match="no cluster 'zz'"):
        pick(config(), Request("h100", 8), clusters=["zz"])
    with pytest.raises(UserError, match="no host can run 8 × h100"):
        pick(config(), Request("h100", 8), exclude_clusters=["b"])
