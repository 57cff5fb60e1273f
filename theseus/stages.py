"""A stage is one job with its config; a run is one or more stages executed in order.

This is the glue shared by `theseus configure`, `theseus run`, `theseus submit` and `quick()`:
read a YAML written by `configure`, check it against the job's schema, apply overrides, write it
back (updating a user's file without losing what is theirs), run it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from theseus import config as C
from theseus.base.files import atomic_write, require_output_folder
from theseus.errors import UserError
from theseus.job import BasicJob, ExecutionSpec, Request, RestoreableJob, yaml_header
from theseus.registry import JOBS, REGISTRIES, unknown_name


class JobSchemas:
    """Where stages find a job's schema and the names registered: the registries themselves
    (`theseus configure` asks a cache of them instead, theseus/schema_cache.py)."""

    def schema(self, job: str) -> C.Schema:
        return JOBS[job].schema()

    def knows(self, job: str) -> bool:
        return job in JOBS

    def names(self, kind: str) -> list[str]:
        return REGISTRIES[kind].names()


REGISTERED = JobSchemas()


@dataclass
class Stage:
    """One job, its schema and its (mutable) config tree."""

    job: str
    schema: C.Schema
    cfg: DictConfig
    request: Request
    source: str = ""
    schemas: JobSchemas = REGISTERED

    @property
    def cls(self) -> type[BasicJob]:
        return JOBS[self.job]

    @classmethod
    def new(
        cls, job: str, request: Request | None = None, schemas: JobSchemas = REGISTERED
    ) -> Stage:
        schema = schemas.schema(job)
        return cls(job, schema, schema.tree(), request or Request(), job, schemas)

    @classmethod
    def from_yaml(cls, path: str | Path, job: str | None = None) -> Stage:
        """Load a YAML written by `configure` (strict: unknown keys and bad types fail), as `job`
        when one is given (`-j`): then a file of another job that does not fit says whose it is."""
        try:
            return cls._from_yaml(path, job)
        except UserError as exc:
            written = C.read_yaml(path).get("job") if job else None
            if not written or written == job:
                raise
            problem = str(exc).removeprefix(f"{path}: ")
            raise UserError(
                f"{path} was written for job {written!r} and -j asks for {job!r}: {problem} "
                f"(drop -j, or carry its values over: theseus configure {job} NEW.yaml -p {path})"
            ) from None

    @classmethod
    def _from_yaml(cls, path: str | Path, job: str | None) -> Stage:
        written_by, request, values = read_parts(path)
        name = job or written_by
        if not name:
            raise UserError(f"{path} names no job: add `job: NAME` or pass -j JOB")
        stage = cls.new(name, request or Request())
        stage.source = str(path)
        try:
            C.merge_values(stage.schema, stage.cfg, values, strict=True)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
        return stage

    def carry_over(self, values: dict[str, Any], written_by: str | None = None) -> list[str]:
        """Take the values of a previous config that still fit; return the dropped keys. From a
        config of another job (`written_by`), only the values set there by hand: that job's
        defaults (a GPT's architecture in a Llama's file, say) are not this job's."""
        if written_by and written_by != self.job and self.schemas.knows(written_by):
            theirs = Stage.new(written_by, schemas=self.schemas).cfg
            defaults = dict(C.flatten(OmegaConf.to_container(theirs)))
            values = {k: v for k, v in C.flatten(values) if k not in defaults or defaults[k] != v}
        return C.merge_values(self.schema, self.cfg, values, strict=False)

    def to_yaml(self) -> str:
        return C.to_yaml(self.cfg, self.schema, yaml_header(self.job, self.request))

    def save(self, path: str | Path) -> None:
        """Write the YAML `theseus run` reads back; refuse values it would refuse (interpolations,
        choices, bounds, a component's `check()`), so a bad file is never written. Required
        values may still be unset."""
        self.request.check("request")
        C.check_values(self.schema, self.cfg)
        self.refuse_unregistered()
        atomic_write(Path(path).expanduser(), self.to_yaml())

    def check(self) -> None:
        C.check_complete(self.schema, self.cfg, self.job)
        self.refuse_unregistered()

    def refuse_unregistered(self) -> None:
        """Refuse a setting that names what no one registered (`data.name`, `eval.evaluations`),
        in the words the job itself would use when it ran."""
        for key, entry in self.schema.entries.items():
            if entry.registry is None:
                continue
            value = OmegaConf.select(self.cfg, key, throw_on_missing=False)
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            for name in value if isinstance(value, list) else [value]:
                if isinstance(name, str) and name != C.MISSING:
                    known = self.schemas.names(entry.registry)
                    if name not in known:
                        raise UserError(unknown_name(entry.registry, name, known))

    def instantiate(self, spec: ExecutionSpec) -> BasicJob:
        return self.cls(self.cfg, spec)


def read_parts(path: str | Path) -> tuple[str | None, Request | None, dict[str, Any]]:
    """The job, request and config values of a config file, each checked for its shape."""
    data = C.read_yaml(path)
    unknown = set(data) - {"job", "request", "config"}
    if unknown:
        raise UserError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}; "
            "expected job, request, config"
        )
    job = data.get("job")
    if job is not None and not isinstance(job, str):
        raise UserError(f"{path}: job must be a string, got {job!r}")
    values = data.get("config") or {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: config must be a mapping, got {type(values).__name__}")
    request = data.get("request")
    return job, None if request is None else Request.from_dict(request, f"{path}: request"), values


def override(stages: list[Stage], overrides: list[str]) -> None:
    """Apply `KEY=VALUE` overrides to every stage that owns the key (strict)."""
    C.apply_overrides([(s.schema, s.cfg) for s in stages], overrides)


def run_stages(stages: list[Stage], spec: ExecutionSpec) -> list[Any]:
    """Check every stage, then run them in order; the first failure stops the pipeline."""
    from theseus.parallel.distributed import is_multiprocess

    if spec.restore and not any(issubclass(stage.cls, RestoreableJob) for stage in stages):
        jobs = ", ".join(stage.job for stage in stages)
        raise UserError(
            f"--restore: {jobs} does not start from another run's checkpoint (training jobs do); "
            "drop --restore, or name the checkpoint in the job's own settings"
        )
    for stage in stages:
        stage.check()
        if is_multiprocess() and not stage.cls.DISTRIBUTED:
            raise UserError(
                f"{stage.job} runs as one process, but this is one of several (SLURM_NTASKS or "
                "THESEUS_NUM_PROCESSES > 1); run it as a single task"
            )
    require_output_folder(spec.root)  # after the checks, so a bad config creates no OUT
    results = []
    for stage in stages:
        job = stage.instantiate(spec)
        results.append(job())
    return results


@dataclass
class ConfigUpdate:
    """`theseus configure`: write `job`'s config to `out`, carrying over the values of `previous`
    (another config file, or `out` itself to update it in place), then `KEY=VALUE` updates.

    A file of the user's is never lost by accident: an existing `out` is replaced only when it is
    updated in place or with `force`, and an update in place that would drop a value or a comment
    of theirs is refused without `force`.
    """

    job: str
    out: Path
    previous: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out).expanduser()

    @property
    def in_place(self) -> bool:
        return (
            self.previous is not None
            and Path(self.previous).expanduser().resolve() == self.out.resolve()
        )

    @property
    def guards_the_users_file(self) -> bool:
        """Whether the user's own file is updated in place: nothing of theirs may go unasked."""
        return self.in_place and self.out.exists() and not self.force

    def refuse_replacing(self) -> None:
        """Refuse to write over a file that is not being updated, or that is another job's;
        checked before user code is imported, which may take a while or fail."""
        if not self.out.exists() or self.force:
            return
        if not self.in_place:
            raise UserError(
                f"{self.out} exists; pass -p {self.out} to carry its values over, or --force to "
                "replace it"
            )
        written = read_parts(self.out)[0]
        if written != self.job:
            raise UserError(
                f"{self.out} holds the config of job {written!r}, not {self.job!r}; write "
                f"{self.job} to a new file (theseus configure {self.job} NEW.yaml -p {self.out}), "
                "or pass --force to replace it"
            )

    def write(
        self,
        request: Request,
        overrides: Sequence[str],
        notify: Callable[[str], None],
        schemas: JobSchemas = REGISTERED,
    ) -> Stage:
        """Write the config, its request `request` over the previous file's; `notify` hears which
        values were dropped, which folders were created and which values are still required."""
        stage = Stage.new(self.job, request, schemas)
        if self.previous is not None:
            self._carry_over(stage, self.previous, request, notify)
        override([stage], list(overrides))
        if self.guards_the_users_file:
            _refuse_dropping_comments(self.out, stage.to_yaml(), self.job)
        save_config(stage, self.out, notify)
        return stage

    def _carry_over(
        self, stage: Stage, previous: str, request: Request, notify: Callable[[str], None]
    ) -> None:
        written_by, written_request, values = read_parts(previous)
        dropped = stage.carry_over(values, written_by)
        if dropped and self.guards_the_users_file:
            raise UserError(
                f"updating {self.out} in place would drop {', '.join(dropped)} (not in the schema "
                f"of {self.job} or ill-typed); fix them in {self.out}, write a new file (theseus "
                f"configure {self.job} NEW.yaml -p {self.out}), or pass --force to drop them"
            )
        if written_request is not None:
            stage.request = request.over(written_request)
        if dropped:
            notify(
                f"dropped from {previous} (not in the schema of {self.job} or ill-typed): "
                f"{', '.join(dropped)}"
            )


def _refuse_dropping_comments(path: Path, text: str, job: str) -> None:
    """The file is written anew from its values: comment lines of the user's would be lost."""
    written = {line.strip() for line in text.splitlines()}
    theirs = [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("#") and line.strip() not in written
    ]
    if theirs:
        more = f" and {len(theirs) - 1} more" if len(theirs) > 1 else ""
        raise UserError(
            f"updating {path} in place would drop your comment {theirs[0]!r}{more}; write a new "
            f"file (theseus configure {job} NEW.yaml -p {path}), or pass --force to drop them"
        )


def save_config(
    stage: Stage, path: str | Path, notify: Callable[[str], None] | None = None
) -> Path:
    """Write `stage` to the config file at `path` (see `Stage.save`) and return where it went;
    `notify` hears which folders were created and which values are still required."""
    out = Path(path).expanduser()
    new_folder = next((p for p in reversed(out.parents) if not p.exists()), None)
    stage.save(out)
    if notify is not None:
        if new_folder is not None:
            below = " and those below it" if new_folder != out.parent else ""
            notify(f"created the folder {new_folder}{below}")
        missing = C.missing_keys(stage.cfg)
        notify(f"wrote {out}" + (f"; still required: {', '.join(missing)}" if missing else ""))
    return out
