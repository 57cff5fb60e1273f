"""The scripts a job runs on its host, written from the templates in `templates/`.

Every value that reaches a script goes through `shlex.quote` (or is checked against a strict
pattern, for `#SBATCH` lines, which sbatch reads without a shell); configs travel as files and
secrets only through the launcher's stdin (see `launch.sh`).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from theseus.dispatch.config import Cluster, Host
from theseus.dispatch.solve import Placement
from theseus.errors import UserError

TEMPLATES = Path(__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
# What a value on an #SBATCH line may hold: sbatch splits those lines itself, without a shell.
_DIRECTIVE_VALUE = re.compile(r"^[A-Za-z0-9_.,:@%/+=~-]+$")
SIGNAL_SECONDS = 120


# Shell functions that know a job's process by its id and start time. `started PID`: the start
# time of the process (from /proc). `ours FILE`: whether the process FILE names ("PID START", as
# launch.sh writes it) still runs: once a job has ended, its id may go to another process,
# which must not pass for it.
PROCESS_FUNCTIONS = (
    "started() { sed 's/.*) //' \"/proc/$1/stat\" 2>/dev/null | cut -d' ' -f20; }; "
    'ours() { read -r p s <"$1" 2>/dev/null && kill -0 "$p" 2>/dev/null && '
    '{ [ -z "$s" ] || [ "$(started "$p")" = "$s" ]; }; }'
)


def render(template: str, values: dict[str, str]) -> str:
    """Fill `{{NAME}}` placeholders; every name must be given (values are inserted verbatim),
    except `PROCESS_FUNCTIONS`, which every template may use."""
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    values = {"PROCESS_FUNCTIONS": PROCESS_FUNCTIONS, **values}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def words(items: list[str]) -> str:
    return " ".join(shlex.quote(item) for item in items)


@dataclass
class JobFiles:
    """Where one submission lives on its host, and the files written there."""

    dir: str
    snapshot_dir: str
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (text, mode)

    def path(self, name: str) -> str:
        return f"{self.dir}/{name}"

    @property
    def log(self) -> str:
        return self.path("output.log")

    @property
    def launcher(self) -> str:
        return self.path("launch.sh")


def _directive(option: str, value: str | int) -> str:
    text = str(value)
    if not _DIRECTIVE_VALUE.match(text):
        raise UserError(
            f"sbatch {option} value {text!r} holds characters sbatch cannot read from a script "
            "(spaces, quotes, ...); use letters, digits and ._,:@%/+=~-"
        )
    return f"#SBATCH {option}={text}"


def sbatch_directives(name: str, host: Host, placement: Placement, log: str | None) -> list[str]:
    """The `#SBATCH` lines of a job: one line per option, validated, never shell-evaluated.
    Without `log`, sbatch writes the job's output where whoever runs it says (or its default)."""
    lines = [
        _directive("--job-name", name),
        _directive("--nodes", placement.nodes),
        _directive("--ntasks-per-node", placement.tasks_per_node),
    ]
    if placement.gpus_per_node:
        gres = host.gres.get(placement.chip, "gpu")
        lines.append(_directive("--gres", f"{gres}:{placement.gpus_per_node}"))
    if isinstance(host.partitions, dict):
        partition = host.partitions.get(placement.chip)
        if partition:
            lines.append(_directive("--partition", partition))
    elif host.partitions:
        lines.append(_directive("--partition", ",".join(host.partitions)))
    for option, value in (
        ("--account", host.account),
        ("--qos", host.qos),
        ("--time", host.time),
        ("--mem", host.mem),
        ("--cpus-per-task", host.cpus_per_task),
    ):
        if value is not None:
            lines.append(_directive(option, value))
    if host.exclude:
        lines.append(_directive("--exclude", ",".join(host.exclude)))
    if log is not None:
        # Relative to the job folder, where the launcher runs sbatch: any folder name works.
        lines.append(_directive("--output", Path(log).name))
    lines += [
        "#SBATCH --open-mode=append",
        f"#SBATCH --signal=USR1@{SIGNAL_SECONDS}",
        "#SBATCH --requeue",
    ]
    for extra in host.directives:
        option, _, value = extra.partition("=")
        lines.append(_directive(option, value) if value else f"#SBATCH {_directive_flag(option)}")
    return lines


def _directive_flag(option: str) -> str:
    if not re.match(r"^--[a-z][a-z0-9-]*$", option):
        raise UserError(f"bad sbatch directive {option!r}: expected --option or --option=value")
    return option


def environment_key(groups: list[str], lock_files: list[bytes]) -> str:
    """Names the virtual environment that `uv sync` builds from these lock files and groups."""
    digest = hashlib.sha256("\0".join(groups).encode())
    for content in lock_files:
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()[:16]


def uv_groups(host: Host | None, targets: Sequence[str], pyproject: bytes) -> list[str]:
    """The dependency groups the job's environment installs: its host's (the chip's runtime), then
    `targets`. A target pyproject.toml does not define, or one that `[tool.uv] conflicts` keeps
    from another group, is refused here rather than by `uv sync` on the host."""
    groups = host.uv_groups if host is not None else ["all", "cpu"]
    if not targets:
        return groups
    try:
        project = tomllib.loads(pyproject.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read the groups of pyproject.toml ({exc}); fix it") from None
    defined = project.get("dependency-groups", {})
    exclusive = [
        {item.get("group") for item in rule if isinstance(item, dict)}
        for rule in project.get("tool", {}).get("uv", {}).get("conflicts", [])
    ]
    chosen = list(groups)
    for target in targets:
        if target not in defined:
            raise UserError(
                f"--target {target}: pyproject.toml defines no dependency group {target!r} "
                f"(it has {', '.join(defined) or 'none'}); add it there, or pick one of those"
            )
        clash = [g for rule in exclusive if target in rule for g in chosen if g in rule - {target}]
        if clash:
            raise UserError(
                f"--target {target}: cannot be installed with {clash[0]} (pyproject.toml's "
                "[tool.uv] conflicts); to change the runtime group, change the host's uv_groups"
            )
        chosen.append(target)
    return list(dict.fromkeys(chosen))


def job_files(
    *,
    name: str,
    job_dir: str,
    snapshot_dir: str,
    cluster: Cluster,
    host: Host | None,
    placement: Placement,
    run_args: list[str],
    fresh: bool = False,
    stage_yamls: list[str],
    backend: str,
    gpu_dir: str,
    work: str,
    lock_files: list[bytes],
    groups: list[str],
    by_hand: bool = False,
) -> JobFiles:
    """Render every file of one submission (stage configs included) for `backend`; `by_hand`:
    both ways to run it (under SLURM or in a shell) and no launcher, for `theseus bootstrap`."""
    job = JobFiles(job_dir, snapshot_dir)
    stage_paths = [job.path(f"stage-{i}.yaml") for i in range(len(stage_yamls))]
    args = [name, stage_paths[0], cluster.root, *run_args]
    for path in stage_paths[1:]:
        args += ["-s", path]
    mount_options: list[str] = []
    if cluster.cache_size is not None:
        mount_options += ["--cache-size", str(cluster.cache_size)]
    if cluster.cache_dir is not None:
        mount_options += ["--cache-dir", cluster.cache_dir]
    venv = f"{work}/venvs/{environment_key(groups, lock_files)}"
    lib = render(
        "lib.sh",
        {
            "JOB_DIR": shlex.quote(job_dir),
            "SNAPSHOT": shlex.quote(snapshot_dir),
            "ROOT": shlex.quote(cluster.root),
            "META_URL": shlex.quote(cluster.mount or ""),
            "JUICEFS_MOUNT_OPTIONS": words(mount_options),
            "UV_GROUP_ARGS": words([w for g in groups for w in ("--group", g)]),
            "VENV": shlex.quote(venv),
            "MOUNTS": shlex.quote(f"{work}/mounts"),
            "RUN_ARGS": words(args),
            "FRESH": "1" if fresh else "0",
        },
    )
    job.files["lib.sh"] = (lib, 0o600)
    for i, text in enumerate(stage_yamls):
        job.files[f"stage-{i}.yaml"] = (text, 0o600)
    common = {"LIB": shlex.quote(job.path("lib.sh"))}
    if backend == "slurm" or by_hand:
        log = None if by_hand else job.log
        directives = "\n".join(sbatch_directives(name, host, placement, log) if host else [])
        job.files["job.sbatch"] = (
            render(
                "job.sbatch",
                {**common, "DIRECTIVES": directives, "TASK": shlex.quote(job.path("task.sh"))},
            ),
            0o700,
        )
        job.files["task.sh"] = (render("task.sh", common), 0o700)
    if backend != "slurm" or by_hand:
        job.files["run.sh"] = (render("run.sh", common), 0o700)
    if by_hand:
        return job  # whoever runs it starts it: no launcher, no GPUs reserved for it
    if backend != "slurm":
        job.files["free_gpus.sh"] = (render("free_gpus.sh", {}), 0o700)
    job.files["launch.sh"] = (
        render(
            "launch.sh",
            {
                **common,
                "BACKEND": shlex.quote(backend),
                "N_GPUS": str(placement.gpus_per_node if backend != "slurm" else 0),
                "GPU_DIR": shlex.quote(gpu_dir),
                "SBATCH": shlex.quote(job.path("job.sbatch")),
                "FREE_GPUS": shlex.quote(job.path("free_gpus.sh")),
                "RUN": shlex.quote(job.path("run.sh")),
                "LOG": shlex.quote(job.log),
            },
        ),
        0o700,
    )
    return job
