"""Host selection: the first host, in priority order, that has the chips and can start now;
otherwise the first reachable SLURM host that has them (the job waits in its queue). This machine
(`local`, CPU jobs) comes after that queue unless `priority` names it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from theseus.base.chips import get_chip, usable_cores
from theseus.dispatch.config import LOCAL, Cluster, DispatchConfig, Host
from theseus.errors import UserError
from theseus.job import Request

# probe(host_name, host, placement) -> True when the host can start the job right now.
Probe = Callable[[str, Host, "Placement"], bool]


@dataclass(frozen=True)
class Placement:
    """Where a job goes and how it is laid out over nodes."""

    host_name: str
    host: Host | None  # None: this machine
    cluster: Cluster
    chip: str
    n: int
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    queued: bool = False

    @property
    def backend(self) -> str:
        return LOCAL if self.host is None else self.host.type


def wanted(request: Request) -> tuple[str, int]:
    """The chip and count `request` asks for: CPU when it names none or asks for 0; one of it
    when it gives no count."""
    chip = get_chip(request.chip or "cpu").name
    n = request.n if request.n else 1
    if request.n == 0:
        chip = "cpu"
    return chip, n


def layout(name: str, host: Host, cluster: Cluster, chip: str, n: int) -> Placement | str:
    """How `n` chips fit on `host`, or why they do not."""
    per_node = host.chips.get(chip)
    if per_node is None:
        return f"{name} has no {chip} (has {', '.join(host.chips)})"
    if n <= per_node:
        nodes, used = 1, n
    elif host.type == "slurm" and n % per_node == 0:
        nodes, used = n // per_node, per_node
    elif host.type == "slurm":
        return f"{name} has {per_node} {chip} per node and {n} is not a multiple of it"
    else:
        return f"{name} has only {per_node} {chip}"
    gpu = chip != "cpu"
    # One JAX process per node drives all its GPUs; on CPU every slot is its own process.
    return Placement(
        name,
        host,
        cluster,
        chip,
        n,
        nodes=nodes,
        tasks_per_node=1 if gpu else used,
        gpus_per_node=used if gpu else 0,
    )


def choose(
    config: DispatchConfig,
    request: Request,
    local_cluster: Cluster,
    *,
    clusters: list[str] | None = None,
    exclude_clusters: list[str] | None = None,
    probe: Probe | None = None,
    passed_over: list[str] | None = None,
) -> Placement:
    """Pick a host for `request` (see the module docstring); errors say what each host lacks.

    `passed_over` collects why hosts ahead of the chosen one were not taken (down, or busy).
    """
    passed_over = [] if passed_over is None else passed_over
    chip, n = wanted(request)
    for listed in (clusters or []) + (exclude_clusters or []):
        if listed not in config.clusters and listed != LOCAL:
            raise UserError(
                f"no cluster {listed!r} (clusters: {', '.join(dict.fromkeys([*config.clusters, LOCAL]))})"
            )
    order = list(dict.fromkeys([*config.priority, *config.hosts, LOCAL]))
    reasons: list[str] = []
    candidates: list[Placement] = []
    for name in order:
        cluster_name = LOCAL if name == LOCAL else config.hosts[name].cluster
        if (clusters and cluster_name not in clusters) or cluster_name in (exclude_clusters or []):
            continue
        if name == LOCAL:
            cores = usable_cores()
            if chip != "cpu":
                reasons.append(f"{LOCAL} runs CPU jobs only")
            elif n > cores:
                reasons.append(f"{LOCAL} has only {cores} CPU cores")
            else:
                candidates.append(Placement(LOCAL, None, local_cluster, chip, n))
            continue
        fit = layout(name, config.hosts[name], config.clusters[cluster_name], chip, n)
        if isinstance(fit, str):
            reasons.append(fit)
        else:
            candidates.append(fit)
    reachable: list[Placement] = []
    for placement in candidates:
        if placement.host is None and probe is not None and LOCAL not in config.priority:
            return _queue_on_slurm(reachable) or placement
        if placement.host is None or probe is None:
            return placement
        try:
            if probe(placement.host_name, placement.host, placement):
                return placement
        except UserError as exc:  # a host that is down must not stop the others being tried
            reasons.append(f"{placement.host_name} is unreachable ({exc})")
            passed_over.append(reasons[-1])
            continue
        reachable.append(placement)
        passed_over.append(f"{placement.host_name} is busy")
    queued = _queue_on_slurm(reachable)
    if queued is not None:
        return queued
    busy = [p.host_name for p in reachable]
    detail = (
        "; ".join(reasons + [f"{b} is busy" for b in busy]) or "no host matches the cluster filters"
    )
    raise UserError(f"no host can run {n} × {chip} now: {detail}")


def with_resources(placement: Placement, mem: str | None, cpus: int | None) -> Placement:
    """`placement` with the memory per node and CPUs per task asked for in place of its host's.
    Only SLURM reserves them: an SSH host or this machine has no scheduler that would hold them
    for the job (nor keep other jobs off them), so there they are refused rather than ignored."""
    asked = {"mem": mem, "cpus_per_task": cpus}
    given = [option for option, value in (("--mem", mem), ("--cpus", cpus)) if value is not None]
    if not given:
        return placement
    if placement.host is None or placement.host.type != "slurm":
        what = "this machine" if placement.host is None else "an SSH host"
        raise UserError(
            f"{' and '.join(given)}: {placement.host_name} is {what}, where no scheduler reserves "
            "memory or CPUs for a job; leave them out, or pick a SLURM host with --cluster"
        )
    update = {key: value for key, value in asked.items() if value is not None}
    return dataclasses.replace(placement, host=placement.host.model_copy(update=update))


def _queue_on_slurm(reachable: list[Placement]) -> Placement | None:
    """The first SLURM host of `reachable` (busy, but it answered), to wait in its queue."""
    for placement in reachable:
        if placement.backend == "slurm":
            return Placement(**{**placement.__dict__, "queued": True})
    return None
