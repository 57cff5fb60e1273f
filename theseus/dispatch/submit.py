"""`theseus submit`: check the stages here, pick a host, ship code and configs, start the job."""

from __future__ import annotations

import dataclasses
import glob
import secrets
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from theseus.dispatch import bootstrap, records
from theseus.dispatch import config as dispatch_config
from theseus.dispatch.backends import Backend, LaunchRefused, backend_for
from theseus.dispatch.config import LOCAL, Cluster, DispatchConfig, Host
from theseus.dispatch.control import ACTIVE
from theseus.dispatch.snapshot import Snapshot, repository_root, take
from theseus.dispatch.solve import Placement, choose, with_resources
from theseus.errors import UserError
from theseus.job import Request, check_name
from theseus.stages import Stage, override


@dataclass
class SubmitOptions:
    """What `theseus submit` was given on the command line."""

    name: str
    yaml_path: str
    overrides: Sequence[str] = ()
    stages: Sequence[str] = ()  # further stage YAMLs, run after the first
    chip: str | None = None
    n_chips: int | None = None
    n_shards: int | None = None
    project: str = "default"
    group: str = "default"
    clusters: Sequence[str] = ()  # each may list several, comma-separated
    exclude_clusters: Sequence[str] = ()
    dirty: bool = True
    untracked: bool = False
    restore: str | None = None
    fresh: bool = False
    env: Sequence[str] = ()  # NAME=VALUE
    loads: Sequence[str] = ()
    dispatch_file: str | None = None
    dry_run: bool = False
    mem: str | None = None  # per node, as sbatch --mem takes it
    cpus: int | None = None  # per task
    targets: Sequence[str] = ()  # dependency groups installed on top of the host's

    def __post_init__(self) -> None:
        dispatch_config.check_resources(self.mem, self.cpus, self.targets)


@dataclass
class Submission:
    """What `submit` did (or, for a dry run, would do)."""

    placement: Placement
    job: bootstrap.JobFiles
    record: records.Record | None
    snapshot_sent: bool = False
    passed_over: list[str] = field(default_factory=list)  # hosts ahead of the chosen one: why not

    def describe(self) -> str:
        where = f"{self.placement.host_name} ({self.placement.backend})"
        lines = [
            f"# host: {where}, the first that fits (a dry run does not ask hosts whether they are "
            f"up or busy); job folder: {self.job.dir}; code: {self.job.snapshot_dir}"
        ]
        for name, (text, _) in self.job.files.items():
            lines += [f"# ==> {self.job.path(name)} <==", text.rstrip("\n"), ""]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line on where the submitted run went, with its code and its log."""
        record = self.record
        assert record is not None, "a dry run submits nothing"
        queued = " (queued: no host is free now)" if self.placement.queued else ""
        sent = "sent" if self.snapshot_sent else "already there"
        return (
            f"submitted {record.name} to {record.host_name} ({record.backend} id "
            f"{record.backend_id}){queued}; code {record.snapshot} ({sent}); log: {record.log}"
        )


def _host_settings(host: Host | None) -> dict | None:
    return None if host is None else host.model_dump(exclude={"env"})


def _backend(placement: Placement) -> Backend:
    return backend_for(placement.backend, _host_settings(placement.host))


def _gpu_dir(placement: Placement) -> str:
    return f"{placement.cluster.work}/gpus/{placement.host_name}"


def probe(name: str, host: Host, placement: Placement) -> bool:
    """Can `host` start the job now? SSH: enough free GPUs; SLURM: enough idle nodes."""
    backend = _backend(placement)
    if host.type == "ssh":
        if not placement.gpus_per_node:
            backend.shell.run("true", timeout=60)  # raises if the host cannot be reached
            return True
        script = bootstrap.render("free_gpus.sh", {})
        # PATH is the one host setting the probe uses (it may name where nvidia-smi lives).
        path = f"export PATH={shlex.quote(host.env['PATH'])}\n" if "PATH" in host.env else ""
        result = backend.shell.run(
            f"{path}set -- {shlex.quote(_gpu_dir(placement))}\n{script}", timeout=60
        )
        return result.returncode == 0 and len(result.stdout.split()) >= placement.gpus_per_node
    partition = ""
    if isinstance(host.partitions, dict) and placement.chip in host.partitions:
        partition = f"-p {shlex.quote(host.partitions[placement.chip])}"
    elif isinstance(host.partitions, list) and host.partitions:
        partition = f"-p {shlex.quote(','.join(host.partitions))}"
    result = backend.shell.run(f"sinfo -h -t idle {partition} -o %D", timeout=60)
    idle = (
        sum(int(w) for w in result.stdout.split() if w.isdigit()) if result.returncode == 0 else 0
    )
    return idle >= placement.nodes


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not dispatch_config.ENV_NAME.match(key):
            raise UserError(
                f"--env {pair.split('=')[0]!r}: expected NAME=VALUE with NAME a valid variable name"
            )
        env[key] = value
    return env


def _refuse_relative_paths(stage: Stage) -> None:
    """A submitted job runs in its code snapshot, where a value naming a file relative to this
    folder names nothing (or something else): ask for the absolute path instead."""

    def walk(value: object, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        elif isinstance(value, str) and _names_a_file(value):
            path = Path(value).expanduser()
            if not path.is_absolute() and (path.exists() or glob.glob(str(path))):
                raise UserError(
                    f"{key}={value} is relative to this folder, but a submitted job runs in its "
                    f"code snapshot; give {key}={Path.cwd() / path}"
                )

    walk(OmegaConf.to_container(stage.cfg, resolve=True), "")


def _names_a_file(value: str) -> bool:
    """Whether a setting's text is written as a path (`data/x.txt`, `notes.jsonl`, `./x`),
    rather than a word that happens to name something in this folder (`val`, `gelu`)."""
    if not value or "://" in value:
        return False
    return "/" in value or value.startswith((".", "~")) or bool(Path(value).suffix)


def _fits_one(
    settings: DispatchConfig,
    request: Request,
    local: Cluster,
    clusters: list[str] | None,
    exclude_clusters: list[str] | None,
) -> bool:
    """Whether one chip of the kind asked for fits somewhere: then the count is what to change."""
    try:
        choose(
            settings,
            dataclasses.replace(request, n=1, n_shards=None),
            local,
            clusters=clusters,
            exclude_clusters=exclude_clusters,
        )
    except UserError:
        return False
    return True


def submit(options: SubmitOptions) -> Submission:
    """Validate, place, package and launch one run; a dry run stops before anything leaves here."""
    pipeline, job_env = validate(options)
    settings = dispatch_config.load(options.dispatch_file)
    placement, passed_over = place(options, pipeline, settings)
    snapshot, job = package(options, pipeline, placement)
    if options.dry_run:
        return Submission(placement, job, None)
    record, sent = _launch(options, placement, snapshot, job, job_env)
    return Submission(placement, job, record, sent, passed_over)


def validate(options: SubmitOptions) -> tuple[list[Stage], dict[str, str]]:
    """The stages as they will run, all under one request, and the job's environment; what the
    job would refuse on the host is refused here."""
    check_name("run name", options.name)
    check_name("project", options.project)
    check_name("group", options.group)
    pipeline = [Stage.from_yaml(options.yaml_path)] + [Stage.from_yaml(s) for s in options.stages]
    override(pipeline, list(options.overrides))
    asked = Request(options.chip, options.n_chips, options.n_shards)
    request = asked.over(pipeline[0].request)
    request.check("request")
    for stage in pipeline:
        stage.request = request
        stage.check()
        _refuse_relative_paths(stage)
    job_env = _parse_env(list(options.env))
    if options.restore and not Path(options.restore).expanduser().is_absolute():
        raise UserError(
            f"--restore {options.restore} is relative to this folder, but a submitted job runs in "
            "its code snapshot; give the checkpoint's absolute path on the host"
        )
    return pipeline, job_env


def place(
    options: SubmitOptions, pipeline: list[Stage], settings: DispatchConfig
) -> tuple[Placement, list[str]]:
    """The host that takes the run (where its checkpoints are, when it ran before), and why the
    hosts ahead of it were passed over."""
    local = settings.local_cluster(records.home())
    request = pipeline[0].request
    clusters = split_commas(options.clusters)
    exclude_clusters = split_commas(options.exclude_clusters)
    previous = _previous(options.name)
    if options.fresh and previous is not None:
        _refuse_fresh_start(options.name, previous, pipeline)
    if previous is not None and clusters is None:
        clusters = _clusters_with_root(settings, local, previous.root)
        if not clusters:
            raise UserError(
                f"{options.name} keeps its checkpoints under {previous.root}, which no cluster of "
                "the dispatch file has; submit it where they are, or choose another run name"
            )
    passed_over: list[str] = []
    try:
        placement = choose(
            settings,
            request,
            local,
            clusters=clusters,
            exclude_clusters=exclude_clusters,
            probe=None if options.dry_run else probe,
            passed_over=passed_over,
        )
    except UserError as exc:
        # the count came from the file: say so when another count would fit
        if (
            options.n_chips is None
            and request.n
            and _fits_one(settings, request, local, clusters, exclude_clusters)
        ):
            raise UserError(
                f"{exc} ({options.yaml_path} asks for {request.n}; pass -n for another count)"
            ) from None
        raise
    placement = with_resources(placement, options.mem, options.cpus)
    processes = placement.nodes * placement.tasks_per_node if placement.backend == "slurm" else 1
    for stage in pipeline:
        if processes > 1 and not stage.cls.DISTRIBUTED:
            raise UserError(
                f"{stage.job} runs as one process, but {placement.n} × {placement.chip} on "
                f"{placement.host_name} starts {processes}; submit it on its own with -n 1"
            )
    return placement, passed_over


def _refuse_fresh_start(name: str, previous: records.Record, pipeline: list[Stage]) -> None:
    """What a job would refuse on the host, once it found the checkpoints of its earlier run."""
    for stage in pipeline:
        refusal = stage.cls.fresh_start_refusal(stage.cfg)
        if refusal is not None:
            raise UserError(
                f"--fresh: {name} was submitted before (to {previous.host_name}) and may have "
                f"checkpoints; {refusal}, or pick another run name"
            )


def package(
    options: SubmitOptions, pipeline: list[Stage], placement: Placement, by_hand: bool = False
) -> tuple[Snapshot, bootstrap.JobFiles]:
    """The snapshot of the code to ship, and the job's files: its scripts and stage configs
    (`by_hand`: for a script that runs them, see `bootstrap.job_files`)."""
    repo = repository_root()
    snapshot = take(repo, clean=not options.dirty, untracked=options.untracked)
    missing = [f for f in ("pyproject.toml", "uv.lock") if f not in snapshot.files]
    if missing:
        raise UserError(
            f"{repo} has no {' or '.join(missing)} at its top, which the job installs from; "
            "submit from a checkout of the project that uses theseus"
        )
    cluster = placement.cluster
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    run_args = ["-p", options.project, "-g", options.group]
    if options.restore:
        run_args += ["--restore", options.restore]
    for load in options.loads:
        run_args += ["--load", _load_in_snapshot(load, repo, snapshot.files, options.untracked)]
    job = bootstrap.job_files(
        name=options.name,
        job_dir=f"{cluster.work}/jobs/{options.name}/{stamp}",
        snapshot_dir=f"{cluster.work}/snapshots/{snapshot.id}",
        cluster=cluster,
        host=placement.host,
        placement=placement,
        run_args=run_args,
        fresh=options.fresh,
        stage_yamls=[stage.to_yaml() for stage in pipeline],
        backend=placement.backend,
        gpu_dir=_gpu_dir(placement),
        work=cluster.work,
        lock_files=[snapshot.files.get(f, (0, b""))[1] for f in ("pyproject.toml", "uv.lock")],
        groups=bootstrap.uv_groups(
            placement.host, options.targets, snapshot.files["pyproject.toml"][1]
        ),
        by_hand=by_hand,
    )
    return snapshot, job


def _launch(
    options: SubmitOptions,
    placement: Placement,
    snapshot: Snapshot,
    job: bootstrap.JobFiles,
    job_env: dict[str, str],
) -> tuple[records.Record, bool]:
    """Ship the code and the job's files, start it, and record the run; returns the record and
    whether the snapshot was sent (else the host had it)."""
    name, host, cluster = options.name, placement.host, placement.cluster
    backend = _backend(placement)
    with records.claimed(name):
        previous = _previous(name)
        if previous is not None:
            state = backend_for(previous, previous.host).state(previous)
            if state in ACTIVE:
                raise UserError(
                    f"{name} is still {state} on {previous.host_name}; wait, or `theseus cancel {name}` first"
                )
        sent = backend.ship_snapshot(snapshot, job.snapshot_dir)
        backend.write_files(job)
        full_env = {**cluster.env, **(host.env if host else {}), **job_env}
        try:
            backend_id = backend.launch(job, full_env)
        except LaunchRefused:
            # nothing started: the job folder would only be litter (its configs stay here)
            backend.shell.run(f"rm -rf {shlex.quote(job.dir)}", timeout=60)
            raise
        record = records.Record(
            name=name,
            host_name=placement.host_name,
            backend=placement.backend,
            backend_id=backend_id,
            job_dir=job.dir,
            root=cluster.root,
            project=options.project,
            group=options.group,
            snapshot=snapshot.id,
            host=_host_settings(host),
        )
        records.save(record)
    return record, sent


def split_commas(values: Sequence[str]) -> list[str] | None:
    """Cluster names given as repeated options, each perhaps a comma-separated list; None: all."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return names or None


def _load_in_snapshot(
    load: str, repo: Path, files: dict[str, tuple[int, bytes]], untracked: bool
) -> str:
    """What `--load` names inside the job's copy of the code: a module name as given, a file
    (loaded here from this folder) as its path in the snapshot, which must hold it."""
    if not (load.endswith(".py") or "/" in load):
        return load
    path = Path(load).expanduser().resolve()
    try:
        inside = path.relative_to(repo.resolve()).as_posix()
    except ValueError:
        raise UserError(
            f"--load {load}: outside {repo}, so not in the code the job runs; move it into the "
            "repository"
        ) from None
    if inside not in files:
        hint = " (it is untracked: commit it, or pass --untracked)" if not untracked else ""
        raise UserError(f"--load {load}: not a file of the snapshot of {repo}{hint}")
    return inside


def _previous(name: str) -> records.Record | None:
    try:
        return records.load(name)
    except UserError:
        return None


def _clusters_with_root(settings: DispatchConfig, local: Cluster, root: str) -> list[str]:
    """The clusters whose outputs live under `root`: a resubmitted run resumes only there."""
    names = [name for name, cluster in settings.clusters.items() if cluster.root == root]
    return list(dict.fromkeys([*names, *([LOCAL] if local.root == root else [])]))
