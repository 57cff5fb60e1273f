"""A stage is one job with its config; a run is one or more stages executed in order.

This is the glue shared by `theseus configure`, `theseus run`, `theseus submit` and `quick()`:
read a YAML written by `configure`, check it against the job's schema, apply overrides, write it
back, run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from theseus import config as C
from theseus.errors import UserError
from theseus.job import BasicJob, ExecutionSpec, Request, RestoreableJob, yaml_header
from theseus.registry import JOBS


@dataclass
class Stage:
    """One job, its schema and its (mutable) config tree."""

    job: str
    cls: type[BasicJob]
    schema: C.Schema
    cfg: DictConfig
    request: Request
    source: str = ""

    @classmethod
    def new(cls, job: str, request: Request | None = None) -> Stage:
        job_cls = JOBS[job]
        schema = job_cls.schema()
        return cls(job, job_cls, schema, schema.tree(), request or Request(), source=job)

    @classmethod
    def from_yaml(cls, path: str | Path, job: str | None = None) -> Stage:
        """Load a YAML written by `configure` (strict: unknown keys and bad types fail)."""
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
        if written_by and written_by != self.job and written_by in JOBS:
            from omegaconf import OmegaConf

            defaults = dict(C.flatten(OmegaConf.to_container(Stage.new(written_by).cfg)))
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
        C.atomic_write(Path(path).expanduser(), self.to_yaml())

    def check(self) -> None:
        C.check_complete(self.schema, self.cfg, self.job)

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
    from theseus.base.topology import is_multiprocess

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
    C.require_output_folder(spec.root)  # after the checks, so a bad config creates no OUT
    results = []
    for stage in stages:
        job = stage.instantiate(spec)
        results.append(job())
    return results
