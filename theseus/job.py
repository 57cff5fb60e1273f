"""Jobs: a typed config plus an execution spec, and a `run()` that does the work.

`BasicJob` runs once. `CheckpointedJob` resumes from its own checkpoints when its run is started
again. `RestoreableJob` also accepts `--restore`, starting from another run's checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from omegaconf import DictConfig

from theseus.config import Schema, configure
from theseus.errors import UserError

C = TypeVar("C")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_MAX_NAME = 200  # folder names; most filesystems allow 255 bytes


def check_name(kind: str, value: str) -> str:
    """Names become folder names: refuse anything that could escape or confuse a path."""
    if not value:
        raise UserError(f"bad {kind} {value!r}: it is empty; give a name")
    if len(value) > _MAX_NAME:
        raise UserError(
            f"bad {kind} {value[:20] + '...'!r}: {len(value)} characters, at most {_MAX_NAME} "
            "are allowed; shorten it"
        )
    if not _SAFE_NAME.match(value):
        raise UserError(
            f"bad {kind} {value!r}: use letters, digits, '.', '_', '+' or '-' (not starting with '.' or '-')"
        )
    return value


@dataclass
class Request:
    """The hardware a run asks for: chip type, chip count, and tensor-parallel shards."""

    chip: str | None = None
    n: int | None = None
    n_shards: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"chip": self.chip, "n": self.n, "n_shards": self.n_shards}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "request") -> Request:
        if data is not None and not isinstance(data, dict):
            raise UserError(
                f"{source}: expected a mapping (chip:, n:, n_shards:), got {data!r}; "
                "e.g. `request: {chip: h100, n: 8}`"
            )
        data = dict(data or {})
        unknown = set(data) - {"chip", "n", "n_shards"}
        if unknown:
            raise UserError(
                f"{source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: chip, n, n_shards"
            )
        request = cls(data.get("chip"), data.get("n"), data.get("n_shards"))
        request.check(source)
        return request

    def over(self, written: Request) -> Request:
        """This request where it says something, else what `written` says: the command line's
        request over a config file's."""
        return Request(
            written.chip if self.chip is None else self.chip,
            written.n if self.n is None else self.n,
            written.n_shards if self.n_shards is None else self.n_shards,
        )

    def check(self, source: str = "request") -> None:
        from theseus.base.chips import get_chip

        if self.chip is not None:
            get_chip(str(self.chip))
        for key in ("n", "n_shards"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{source}.{key}: expected an integer, got {value!r}")
            if value < (0 if key == "n" else 1):
                raise UserError(
                    f"{source}.{key}: must be {'>= 0' if key == 'n' else '>= 1'}, got {value}"
                )
        if self.n and self.n_shards and self.n % self.n_shards:
            raise UserError(
                f"{source}: n_shards={self.n_shards} does not divide n={self.n} chips; "
                "choose tensor-parallel shards that divide the chip count"
            )
        if self.n == 0 and self.chip not in (None, "cpu"):
            raise UserError(
                f"{source}: n=0 means a CPU run, but the chip is {self.chip}; "
                "ask for at least one, or for chip cpu"
            )


def yaml_header(job: str, request: Request) -> dict[str, Any]:
    """What a config file says above its `config:`: the job (when it has a name) and the chip
    request (when one was made)."""
    header: dict[str, Any] = {"job": job} if job else {}
    if any(v is not None for v in request.as_dict().values()):
        header["request"] = request.as_dict()
    return header


@dataclass
class ExecutionSpec:
    """Where a run lives and how it was asked to start.

    Output layout under `root`: `data/<dataset>/` token stores,
    `checkpoints/<project>/<group>/<name>/` checkpoints, `runs/<project>/<group>/<name>/` the
    run's config, metrics, logs and plots. Asking where a folder is creates nothing: whoever
    writes there makes it.
    """

    name: str
    root: Path
    project: str = "default"
    group: str = "default"
    request: Request = field(default_factory=Request)
    fresh: bool = False
    restore: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        check_name("run name", self.name)
        check_name("project", self.project)
        check_name("group", self.group)

    def place(self, kind: str) -> Path:
        """Where this run's `kind` folder ("runs", "checkpoints") is."""
        return self.root / kind / self.project / self.group / self.name

    @property
    def run_dir(self) -> Path:
        return self.place("runs")

    @property
    def checkpoint_dir(self) -> Path:
        return self.place("checkpoints")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root": str(self.root),
            "project": self.project,
            "group": self.group,
            "request": self.request.as_dict(),
        }


class BasicJob(Generic[C]):
    """A job: `CONFIG` is its typed settings, `run()` does the work.

    `components()` lists every config dataclass the job reads; the union is its schema.
    """

    CONFIG: ClassVar[type | None] = None
    DISTRIBUTED: ClassVar[bool] = False
    """Whether one run may span several processes (the tasks of a SLURM job: a trainer's join
    through jax.distributed, a tokenize job's share its batches); other jobs run as one."""

    def __init__(self, cfg: DictConfig, spec: ExecutionSpec) -> None:
        self.cfg = cfg
        self.spec = spec
        self.config: C = configure(self.CONFIG, cfg) if self.CONFIG is not None else None  # type: ignore[assignment]

    @classmethod
    def components(cls) -> list[type]:
        return [cls.CONFIG] if cls.CONFIG is not None else []

    @classmethod
    def schema(cls) -> Schema:
        return Schema(*cls.components())

    @classmethod
    def fresh_start_refusal(cls, cfg: DictConfig) -> str | None:
        """How to let a run of this job configured by `cfg` start over (`--fresh`) although it
        has checkpoints, when the job would refuse that as configured; None when it would not.
        Dispatch asks before it submits a run again, so the refusal comes before the job leaves."""
        return None

    def run(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def settings_yaml(self, cfg: DictConfig | None = None) -> str:
        """The settings this job runs with (or `cfg`), as a file `theseus run` takes back."""
        from theseus.config import to_yaml
        from theseus.registry import JOBS

        header = yaml_header(JOBS.name_of(type(self)), self.spec.request)
        return to_yaml(self.cfg if cfg is None else cfg, self.schema(), header)

    def __call__(self) -> Any:
        return self.run()


class CheckpointedJob(BasicJob[C]):
    """A job that resumes from its own checkpoints (under `spec.checkpoint_dir`) when its run is
    started again, and starts over with `spec.fresh`. How it saves and resumes is its own."""


class RestoreableJob(CheckpointedJob[C]):
    """A checkpointed job that also accepts `--restore`: it can start from another run's
    checkpoint (`spec.restore`). The runner refuses `--restore` for a run with no such job."""
