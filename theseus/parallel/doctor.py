"""`theseus doctor`: what each process of a job sees, and the problems multi-node runs hit most.

Per process: its host and the address its hostname resolves to (gloo binds there), the devices
it sees, its process id and count, whether it reached the coordinator, a timed all-reduce, and
whether the output root is writable and the same folder as process 0's. The processes exchange
what they saw through the coordination service's key-value store, not through a collective, so
that a broken collective (a process that advertised its loopback) is reported, not hung on.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from theseus.parallel.distributed import initialize_distributed, is_multiprocess

_WAIT_MS = 120_000  # for the other processes' reports: a loaded machine starts them late
_MARKER = ".theseus-doctor-"


@dataclass
class Seen:
    """One process's view."""

    process: int = 0
    processes: int = 1
    host: str = ""
    address: str = ""
    platform: str = ""
    devices: int = 0
    local_devices: int = 0
    allocated: int | None = None  # accelerators the allocation gives this node, when it says
    coordinator: str = ""
    writable: str = ""  # "" when it is, else why not
    same_root: bool = True
    all_reduce: str = ""
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        device_text = f"{self.local_devices} of {self.devices} {self.platform} device(s)"
        if self.allocated is not None:
            device_text += f" ({self.allocated} allocated on this node)"
        return (
            f"process {self.process}/{self.processes} on {self.host} ({self.address}): "
            f"{device_text}; coordinator {self.coordinator or 'none (one process)'}; "
            f"all-reduce {self.all_reduce or 'not run'}; root "
            f"{'writable' if not self.writable else 'NOT writable'}"
            f"{'' if self.same_root else ', NOT the folder process 0 sees'}"
        )


def _allocated_accelerators() -> int | None:
    """The GPUs the scheduler or the user gave this process's node, when the environment says."""
    if os.environ.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(os.environ["SLURM_GPUS_ON_NODE"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return len([d for d in visible.split(",") if d.strip()])
    return None


def unused_lines(platform: str, seen: list[tuple[str, int | None, int]]) -> list[str]:
    """Warnings for the nodes whose allocation gives more accelerators than their processes use
    together; `seen` holds (host, allocated or None, local devices) per process."""
    if platform == "cpu":
        return []
    nodes: dict[str, tuple[int | None, int]] = {}
    for host, allocated, used in seen:
        before, total = nodes.get(host, (None, 0))
        nodes[host] = (
            max(before or 0, allocated) if allocated is not None else before,
            total + used,
        )
    return [
        f"warning: {host} was allocated {allocated} {platform.upper()}s but its process(es) use "
        f"{used}: the rest stay idle (run one process per node that sees all of them, or one "
        "per accelerator)"
        for host, (allocated, used) in nodes.items()
        if allocated is not None and allocated > used
    ]


def unused_accelerators() -> list[str]:
    """`unused_lines` for this job: every process says what it was given and uses (a collective:
    every process calls it)."""
    import jax
    import numpy as np

    allocated = _allocated_accelerators()
    platform = jax.devices()[0].platform
    if platform == "cpu":
        return []
    if jax.process_count() == 1:
        return unused_lines(platform, [(socket.gethostname(), allocated, jax.local_device_count())])
    from jax.experimental import multihost_utils

    host = zlib.crc32(socket.gethostname().encode()) & 0x7FFFFFFF  # numbers travel, names do not
    mine = np.array([host, -1 if allocated is None else allocated, jax.local_device_count()])
    every = multihost_utils.process_allgather(mine).reshape(-1, 3).tolist()
    first = {}  # a node is named by its first process
    for p, (h, _, _) in enumerate(every):
        first.setdefault(h, p)
    seen = [
        (f"the node of process {first[h]}", None if a < 0 else int(a), int(u)) for h, a, u in every
    ]
    return unused_lines(platform, seen)


def _time_all_reduce(megabytes: float) -> str:
    """Sum one array per device across every device of the job; its size and bandwidth."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    count = max(1, int(megabytes * 2**20 / 4))
    mesh = Mesh(np.array(jax.devices()), ("d",))
    local = np.ones((jax.local_device_count(), count), np.float32)
    rows = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("d")), local)
    reduce = jax.jit(
        lambda a: jnp.sum(a, axis=0), out_shardings=NamedSharding(mesh, PartitionSpec())
    )
    reduce(rows).block_until_ready()  # compile, and the collectives' first connection
    runs = 3
    started = time.perf_counter()
    for _ in range(runs):
        total = reduce(rows)
    total.block_until_ready()
    seconds = (time.perf_counter() - started) / runs
    if float(total[0]) != jax.device_count():
        raise RuntimeError(f"all-reduce summed to {float(total[0])}, not {jax.device_count()}")
    gb_per_s = count * 4 / seconds / 1e9
    return f"{count * 4 / 2**20:.0f} MiB in {seconds * 1e3:.1f} ms ({gb_per_s:.2f} GB/s)"


def _kv() -> Any:
    from jax._src import distributed  # the coordination-service client has no public handle

    return distributed.global_state.client


def examine(root: Path, megabytes: float = 16.0) -> list[Seen]:
    """Every process's view (process 0 gets them all; another process, its own)."""
    seen = Seen(host=socket.gethostname())
    try:
        seen.address = socket.gethostbyname(seen.host)
    except OSError as exc:
        seen.address = "unresolved"
        seen.problems.append(f"{seen.host} does not resolve ({exc}): gloo cannot bind to it")
    if is_multiprocess():
        seen.coordinator = os.environ.get("THESEUS_COORDINATOR", "found by JAX from SLURM")
        try:
            initialize_distributed()
        except Exception as exc:  # what JAX raises here is not one type
            seen.problems.append(
                f"cannot join the job through coordinator {seen.coordinator}: {exc}"
            )
            return [seen]
        seen.coordinator += " reached"
    import jax

    seen.process, seen.processes = jax.process_index(), jax.process_count()
    seen.platform = jax.devices()[0].platform
    seen.devices, seen.local_devices = jax.device_count(), jax.local_device_count()
    seen.allocated = _allocated_accelerators()
    token = _check_root(root, seen)
    try:
        seen.all_reduce = _time_all_reduce(megabytes)
    except Exception as exc:
        seen.problems.append(f"the all-reduce failed: {str(exc).splitlines()[0][:300]}")
    if seen.processes == 1:
        _remove_marker(root, token)
        idle = unused_lines(seen.platform, [(seen.host, seen.allocated, seen.local_devices)])
        seen.problems += [line.removeprefix("warning: ") for line in idle]
        return [seen]
    client = _kv()
    client.key_value_set(f"theseus-doctor/seen/{seen.process}", json.dumps(asdict(seen)))
    if seen.process != 0:
        return [seen]
    everyone = [seen]
    for p in range(1, seen.processes):
        try:
            text = client.blocking_key_value_get(f"theseus-doctor/seen/{p}", _WAIT_MS)
            everyone.append(Seen(**json.loads(text)))
        except Exception as exc:
            everyone.append(
                Seen(process=p, processes=seen.processes, problems=[f"no report: {exc}"])
            )
    _remove_marker(root, token)
    idle = unused_lines(seen.platform, [(s.host, s.allocated, s.local_devices) for s in everyone])
    everyone[0].problems += [line.removeprefix("warning: ") for line in idle]
    hosts = {s.host for s in everyone}
    loopback = [s for s in everyone if s.address.startswith("127.")]
    if len(hosts) > 1 and loopback:
        for s in loopback:
            s.problems.append(
                f"{s.host} resolves to {s.address} (loopback) although the job spans "
                f"{len(hosts)} hosts: the others cannot reach it; fix /etc/hosts or DNS"
            )
    return everyone


def _check_root(root: Path, seen: Seen) -> str:
    """Write a marker under `root` (process 0) and look for process 0's (the others)."""
    token = ""
    if seen.process == 0:
        token = secrets.token_hex(8)
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / f"{_MARKER}{token}").write_text(seen.host)
        except OSError as exc:
            seen.writable, token = str(exc), ""
    else:
        probe = root / f"{_MARKER}probe-{seen.process}-{os.getpid()}"
        try:
            probe.write_text(seen.host)
            probe.unlink()
        except OSError as exc:
            seen.writable = str(exc)
    if seen.writable:
        seen.problems.append(f"the output root {root} is not writable: {seen.writable}")
    if seen.processes > 1:
        client = _kv()
        if seen.process == 0:
            client.key_value_set("theseus-doctor/token", token)
        else:
            token = client.blocking_key_value_get("theseus-doctor/token", _WAIT_MS)
            # no token: process 0 could not write its marker (and says so)
            seen.same_root = not token or (root / f"{_MARKER}{token}").exists()
            if not seen.same_root:
                seen.problems.append(
                    f"the output root {root} on {seen.host} is not the folder process 0 "
                    "writes to: mount the same shared storage there on every node"
                )
    return token  # process 0 removes its marker once every report is in


def _remove_marker(root: Path, token: str) -> None:
    if token:
        (root / f"{_MARKER}{token}").unlink(missing_ok=True)


def report(everyone: list[Seen]) -> tuple[list[str], list[str]]:
    """(one line per process, one line per problem, each naming its process)."""
    lines = [s.line() for s in everyone]
    problems = [
        f"process {s.process} on {s.host or '?'}: {p}" for s in everyone for p in s.problems
    ]
    return lines, problems


def run_doctor(root: Path, megabytes: float = 16.0) -> int:
    """Examine, print (process 0: every process's line, then one line per problem), and return
    the exit code: 1 when this process knows of a problem, else 0."""
    everyone = examine(root, megabytes)
    lines, problems = report(everyone)
    if everyone[0].process == 0:
        for line in lines:
            print(line, flush=True)
    for problem in problems:
        if everyone[0].process == 0 or everyone[0].processes == 1:
            print(f"problem: {problem}", flush=True)
    return 1 if problems else 0
