"""The dispatch file (`~/.theseus.yaml`): clusters (shared storage) and hosts (where jobs run).

Validated with pydantic: unknown keys and wrong types are refused with the path of the key.
Values may be `${oc.env:VAR}` (resolved from this machine's environment when the file is read),
which is how secrets such as `META_PASSWORD` stay out of the file. A password written in a
cluster's JuiceFS URL is moved to `META_PASSWORD` in its env as the file is read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, unquote_plus

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from theseus.base.chips import get_chip
from theseus.config.yaml_files import StrictLoader
from theseus.errors import UserError

LOCAL = "local"
DEFAULT_PATH = Path("~/.theseus.yaml")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SIZE = re.compile(r"^[0-9]+[KMGT]?$")
# K to P are powers of 1024, as JuiceFS and SLURM read them; B and iB may follow.
_CACHE_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGTP])(?:i?B)?$", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
# The engines whose password `juicefs mount` takes from META_PASSWORD: redis (and its unix-socket
# form) when the URL has none, mysql and postgres in place of an empty one (`user:@`).
_META_PASSWORD_SCHEMES = ("redis", "rediss", "unix", "mysql", "postgres")
_SLURM_TIME = re.compile(r"^([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}$")

Name = Annotated[str, Field(pattern=_NAME.pattern, max_length=64)]
Env = Annotated[dict[str, str], AfterValidator(lambda env: _check_env(env))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _userinfo(url: str) -> str:
    """The `user:password` part of a JuiceFS metadata URL ("" if none); mysql writes its host
    as `(host:port)`, whose colon is not a password's."""
    rest = url.partition("://")[2]
    authority = re.split(r"[/?#]", rest.split(")", 1)[0] if "(" in rest else rest, maxsplit=1)[0]
    return authority.rpartition("@")[0]


def _password_in(url: str) -> str | None:
    """Where a JuiceFS metadata URL carries a password, if it does (never the password itself)."""
    if re.search(r":.", _userinfo(url)):
        return "user:password@"
    rest = url.partition("://")[2]
    query = rest.partition("?")[2].partition("#")[0]
    for pair in re.split(r"[&;]", query):
        name = unquote_plus(pair.partition("=")[0])
        if _PASSWORD_PARAM.search(name):
            return f"query parameter {name}"
    return None


def _split_password(url: str) -> tuple[str, str | None]:
    """`url` with the password of its `user:password@` emptied, and that password, for the
    engines that read META_PASSWORD instead; `(url, None)` when there is none to move."""
    scheme, _, rest = url.partition("://")
    user, colon, password = _userinfo(url).partition(":")
    if scheme.lower() not in _META_PASSWORD_SCHEMES or not password:
        return url, None
    # Go's URL parser hands the drivers the password percent-decoded; META_PASSWORD is used as is.
    return f"{scheme}://{user}{colon}{rest[len(user) + 1 + len(password) :]}", unquote(password)


def _cache_mib(value: Any) -> int:
    """A JuiceFS cache size in MiB, as `--cache-size` takes it: a number is MiB already."""
    text = str(value).strip() if type(value) in (int, str) else ""
    if re.fullmatch(r"[0-9]+", text):
        mib = int(text)
    elif match := _CACHE_SIZE.match(text):
        power = "KMGTP".index(match[2].upper()) - 1
        mib = int(Fraction(match[1]) * Fraction(1024) ** power)
    else:
        raise ValueError(
            f"expected a size such as 100G, 512M or 1.5T (or a number of MiB), got {value!r}"
        )
    if mib < 1:
        raise ValueError(f"must be at least 1 MiB (1M), got {value!r}")
    return mib


def _catalogue_name(chip: str) -> str:
    """The catalogue's name for `chip` (which may be an alias); an unknown name as it is."""
    try:
        return get_chip(chip).name
    except UserError:
        return chip


def _check_env(env: dict[str, str]) -> dict[str, str]:
    """Environment variables: valid names, no NUL (they travel NUL-separated)."""
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise ValueError(f"environment variable name {key!r} is not a valid identifier")
        if "\0" in value:
            raise ValueError(f"value of {key} contains a NUL byte")
    return env


class Cluster(_Strict):
    """Storage shared by the hosts of one site: outputs under `root`, code and job files under `work`."""

    root: str
    work: str
    mount: str | None = None
    cache_size: int | None = None  # MiB
    cache_dir: str | None = None
    env: Env = {}

    @model_validator(mode="before")
    @classmethod
    def _password_to_env(cls, data: Any) -> Any:
        """The URL is written into the job's scripts and shown by --dry-run; its password goes
        to `juicefs mount` only as META_PASSWORD, in the environment the launcher reads on stdin."""
        if not isinstance(data, dict) or not isinstance(data.get("mount"), str):
            return data
        env = data.get("env", {})
        url, password = _split_password(data["mount"])
        if password is None or not isinstance(env, dict):
            return data
        if env.get("META_PASSWORD", password) != password:
            raise ValueError(
                "mount holds a password and env sets another META_PASSWORD; give it in one place"
            )
        return {**data, "mount": url, "env": {**env, "META_PASSWORD": password}}

    @field_validator("root", "work", "cache_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must be an absolute path, got {value!r}")
        if value is not None and ("\n" in value or "\0" in value):
            raise ValueError("must not contain newlines")
        return value

    @field_validator("mount")
    @classmethod
    def _meta_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(
                f"must be a JuiceFS metadata URL such as redis://host:6379/1, got {value!r}"
            )
        if value is not None and (where := _password_in(value)):
            raise ValueError(
                f"holds a password ({where}) that JuiceFS cannot take from META_PASSWORD, so it"
                " would be on `juicefs mount`'s command line: write it as user:PASSWORD@ in a"
                f" {', '.join(s + '://' for s in _META_PASSWORD_SCHEMES)} URL, or leave it out"
                " and set META_PASSWORD in the cluster's env (see examples/dispatch.yaml)"
            )
        return value

    @field_validator("cache_size", mode="before")
    @classmethod
    def _cache_size(cls, value: Any) -> int | None:
        return None if value is None else _cache_mib(value)


class Host(_Strict):
    """A machine (type ssh) or a SLURM login node (type slurm) that runs jobs."""

    type: Literal["ssh", "slurm"]
    cluster: Name
    chips: dict[str, Annotated[int, Field(gt=0)]]
    ssh: str | None = None
    host: str | None = None
    port: Annotated[int, Field(gt=0, lt=65536)] | None = None
    user: str | None = None
    identity: str | None = None
    uv_groups: list[str] = ["all", "cpu"]
    env: Env = {}
    # SLURM only
    partitions: list[str] | dict[str, str] | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: Annotated[int, Field(gt=0)] | None = None
    gres: dict[str, str] = {}
    exclude: list[str] = []
    directives: list[str] = []

    @field_validator("chips")
    @classmethod
    def _known_chips(cls, chips: dict[str, int]) -> dict[str, int]:
        """Keyed by catalogue name, so that a request under another name of a chip finds it."""
        named: dict[str, int] = {}
        given: dict[str, str] = {}
        for chip, count in chips.items():
            try:
                name = get_chip(chip).name
            except UserError as exc:
                raise ValueError(str(exc)) from None
            if name in named:
                raise ValueError(
                    f"{given[name]!r} and {chip!r} are both {name}; give its count once"
                )
            named[name], given[name] = count, chip
        if not named:
            raise ValueError("name at least one chip, e.g. {h100: 8}")
        return named

    @field_validator("gres", "partitions")
    @classmethod
    def _chip_keys(cls, value: Any) -> Any:
        """Looked up by the catalogue name of the chip a job asks for."""
        if not isinstance(value, dict):
            return value
        return {_catalogue_name(chip): item for chip, item in value.items()}

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: str | None) -> str | None:
        if value is not None and not _SLURM_TIME.match(value):
            raise ValueError(f"expected a SLURM time such as 2-00:00:00 or 04:00:00, got {value!r}")
        return value

    @field_validator("mem", mode="before")
    @classmethod
    def _mem_number(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("mem")
    @classmethod
    def _slurm_mem(cls, value: str | None) -> str | None:
        if value is not None and not _SIZE.match(value):
            raise ValueError(f"expected a size such as 64G or 500000M, got {value!r}")
        return value

    @field_validator("directives")
    @classmethod
    def _directives(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.startswith("--") or any(c in value for c in "\n\r\0"):
                raise ValueError(
                    f"a directive is one sbatch option such as --constraint=a100, got {value!r}"
                )
        return values

    @field_validator("uv_groups")
    @classmethod
    def _groups(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _NAME.match(value):
                raise ValueError(f"bad uv group name {value!r}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Host:
        if self.ssh is not None and self.host is not None:
            raise ValueError("give either ssh (an alias from ~/.ssh/config) or host, not both")
        if self.type == "ssh" and self.ssh is None and self.host is None:
            raise ValueError("an ssh host needs ssh (an alias from ~/.ssh/config) or host")
        slurm_only = ["partitions", "account", "qos", "time", "mem", "cpus_per_task"]
        if self.type == "ssh":
            given = [k for k in slurm_only if getattr(self, k) is not None]
            given += [k for k in ("gres", "exclude", "directives") if getattr(self, k)]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise ValueError(f"{', '.join(given)} only {verb} to slurm hosts")
        return self

    @property
    def remote(self) -> bool:
        """Reached over ssh (a SLURM host without ssh/host submits with the local sbatch)."""
        return self.ssh is not None or self.host is not None


class DispatchConfig(_Strict):
    """The whole dispatch file."""

    clusters: dict[Name, Cluster] = {}
    hosts: dict[Name, Host] = {}
    priority: list[str] = []

    @model_validator(mode="after")
    def _references(self) -> DispatchConfig:
        if LOCAL in self.hosts:
            raise ValueError(f"the host name {LOCAL!r} is reserved for this machine; rename it")
        for name, host in self.hosts.items():
            if host.cluster not in self.clusters:
                known = ", ".join(self.clusters) or "none defined"
                raise ValueError(
                    f"hosts.{name}.cluster: no cluster {host.cluster!r} (clusters: {known})"
                )
        for name in self.priority:
            if name not in self.hosts and name != LOCAL:
                raise ValueError(
                    f"priority: no host {name!r} (hosts: {', '.join(self.hosts) or 'none'})"
                )
        return self

    def local_cluster(self, home: Path) -> Cluster:
        """The cluster of the implicit `local` host: `clusters.local`, or folders under `home`."""
        if LOCAL in self.clusters:
            return self.clusters[LOCAL]
        return Cluster(root=str(Path.cwd() / "output"), work=str(home / "work"))


def check_resources(mem: str | None, cpus: int | None, targets: Sequence[str]) -> None:
    """`submit --mem/--cpus/--target` as given: refused here, not by sbatch or uv on the host."""
    if mem is not None and not _SIZE.match(mem):
        raise UserError(
            f"--mem {mem!r}: expected memory per node such as 64G or 500000M (K, M, G or T; "
            "no unit is M), or 0 for all of it"
        )
    if cpus is not None and cpus < 1:
        raise UserError(f"--cpus {cpus}: expected at least 1 CPU per task")
    for group in targets:
        if not _NAME.match(group):
            raise UserError(f"--target {group!r}: expected a dependency group name such as hf")


def _resolve(data: Any, where: str) -> Any:
    """Resolve `${oc.env:VAR}` (and only plain interpolations) from this machine's environment."""
    try:
        return OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        at = f"{key}: " if key else ""
        missing = re.search(r"Environment variable '([^']+)' not found", str(exc))
        if missing:
            raise UserError(
                f"{where}: {at}environment variable {missing[1]} is not set; export it or"
                " change the value"
            ) from None
        problem = str(exc).splitlines()[0]
        raise UserError(f"{where}: {at}cannot resolve a ${{...}} value: {problem}") from None


def _location(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))


def parse(data: Any, where: str) -> DispatchConfig:
    """Validate an already-loaded dispatch mapping; errors name the file and the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must hold a mapping with clusters:, hosts:, priority:")
    data = _resolve(data, where)
    try:
        return DispatchConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # An unknown key first: it is often a misspelt one, whose "Field required" follows from it.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        key = _location(first)
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise UserError(f"{where}: {key + ': ' if key else ''}{message}{more}") from None


def load(path: str | Path | None = None) -> DispatchConfig:
    """Read the dispatch file: `path`, else $THESEUS_DISPATCH, else ~/.theseus.yaml if it exists."""
    explicit = path or os.environ.get("THESEUS_DISPATCH")
    target = Path(explicit or DEFAULT_PATH).expanduser()
    if not target.exists():
        if explicit:
            raise UserError(f"no dispatch file {target}; see examples/dispatch.yaml for one")
        return DispatchConfig()
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror or exc
        raise UserError(f"cannot read the dispatch file {target} ({why})") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)  # refuses a key given twice
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"bad YAML in {target}{at}: {getattr(exc, 'problem', exc)}") from None
    return parse(data, str(target))
