"""Fields, schemas and the value checks a whole tree must pass before a job runs."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from theseus.errors import ConfigError, UserError, first_line

T = TypeVar("T")

MISSING = "???"
FIELD_PATH = "theseus_path"  # the metadata key of a field's place in the tree
_NO_DEFAULT: Any = object()


def field(
    path: str,
    *,
    default: Any = _NO_DEFAULT,
    default_factory: Callable[[], Any] | None = None,
    help: str = "",
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    registry: str | None = None,
) -> Any:
    """A dataclass field that lives at `path` ("section/key") in the job's config tree.

    Without a default the value is required (`???`) and must be set before the job runs.
    `choices` restricts the value to a fixed set; `minimum`/`maximum` bound a number inclusively
    and `above`/`below` strictly (a bounded number must also be finite; null stays allowed where
    the type is optional). All are checked whenever the tree is validated, as is a component's
    `check()` method, for rules that join several fields; it must depend on those fields alone
    (`theseus configure` remembers its verdicts). `registry` ("dataset", "evaluation") says the
    value, or each item of a list, names an entry registered as that kind: a name that is not
    is refused when the config is written or run.
    """
    metadata = {
        FIELD_PATH: path,
        "help": help,
        "choices": tuple(choices) if choices else None,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "registry": registry,
    }
    if default_factory is not None:
        if default is not _NO_DEFAULT:
            raise TypeError(f"field {path!r}: give default or default_factory, not both")
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(
        default=MISSING if default is _NO_DEFAULT else default, metadata=metadata
    )


@dataclasses.dataclass
class Entry:
    """One leaf of a schema: where it lives, its type, default, help and who declared it."""

    key: str
    type: Any
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    owners: list[str]
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    registry: str | None = None  # the registry kind whose names the value must be

    def bounds(self) -> list[tuple[str, float]]:
        """The declared limits as (comparison, limit), e.g. [(">=", 0), ("<", 1)]."""
        limits = (">=", self.minimum), ("<=", self.maximum), (">", self.above), ("<", self.below)
        return [(op, limit) for op, limit in limits if limit is not None]


_HOLDS = {
    ">=": lambda value, limit: value >= limit,
    "<=": lambda value, limit: value <= limit,
    ">": lambda value, limit: value > limit,
    "<": lambda value, limit: value < limit,
}


def key_of(f: dataclasses.Field) -> str:
    """The dotted key a `field(...)` lives at."""
    return f.metadata[FIELD_PATH].strip("/").replace("/", ".")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp).replace("typing.", ""))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in args)}]"


class Schema:
    """The merged settings of a job's components, and the rules for changing them."""

    def __init__(self, *components: type) -> None:
        # by identity: a preset instance need not be hashable
        self.components = list({id(c): c for c in components}.values())
        self.entries: dict[str, Entry] = {}
        for component in self.components:
            self._add(component)
        self._check_prefixes()
        self._root = self._make_dataclass("config", sorted(self.entries))

    def _add(self, component: Any) -> None:
        # a job's or model's config class, often the user's own: its mistakes are theirs to fix.
        # An instance of one (a preset) declares the same keys with its values as defaults.
        if not dataclasses.is_dataclass(component):
            raise UserError(f"config component {component!r} is not a dataclass; decorate it")
        cls = _class_of(component)
        hints = typing.get_type_hints(cls)
        owner = f"{cls.__module__}.{cls.__qualname__}"
        for f in dataclasses.fields(component):
            if FIELD_PATH not in f.metadata:
                raise UserError(
                    f'{owner}.{f.name} must be declared with theseus.config.field("section/'
                    f'{f.name}", default=..., help=...)'
                )
            key = key_of(f)
            entry = Entry(
                key,
                hints[f.name],
                _default_of(f) if component is cls else getattr(component, f.name),
                f.metadata["help"],
                f.metadata["choices"],
                [owner],
                f.metadata.get("minimum"),
                f.metadata.get("maximum"),
                f.metadata.get("above"),
                f.metadata.get("below"),
                f.metadata.get("registry"),
            )
            known = self.entries.get(key)
            if known is None:
                self.entries[key] = entry
                continue
            if known.default != entry.default or known.type != entry.type:
                raise ConfigError(
                    f"config key {key!r} is declared twice with different defaults: "
                    f"{known.owners[0]} has {known.default!r} ({type_name(known.type)}), "
                    f"{owner} has {entry.default!r} ({type_name(entry.type)})"
                )
            known.owners.append(owner)
            known.help = known.help or entry.help
            known.registry = known.registry or entry.registry

    def _check_prefixes(self) -> None:
        keys = sorted(self.entries)
        for a, b in itertools.pairwise(keys):
            if b.startswith(a + "."):
                raise ConfigError(
                    f"config key {a!r} ({self.entries[a].owners[0]}) is both a value and the "
                    f"section of {b!r} ({self.entries[b].owners[0]})"
                )

    def _make_dataclass(self, name: str, keys: list[str], prefix: str = "") -> type:
        leaves: list[tuple[str, Any, Any]] = []
        sections: dict[str, list[str]] = {}
        for key in keys:
            head, _, rest = key[len(prefix) :].partition(".")
            if rest:
                sections.setdefault(head, []).append(key)
            else:
                entry = self.entries[key]
                if isinstance(entry.default, list | dict) or dataclasses.is_dataclass(
                    entry.default
                ):
                    value = dataclasses.field(
                        default_factory=lambda d=entry.default: copy.deepcopy(d)
                    )
                else:
                    value = dataclasses.field(default=entry.default)
                leaves.append((head, entry.type, value))
        for head, sub in sections.items():
            section = self._make_dataclass(head, sub, prefix + head + ".")
            leaves.append((head, section, dataclasses.field(default_factory=section)))
        return dataclasses.make_dataclass(name, leaves)

    def tree(self) -> DictConfig:
        """A fresh config tree holding every default; typed and closed to unknown keys."""
        cfg = OmegaConf.structured(self._root)
        OmegaConf.set_struct(cfg, True)
        return cfg

    def keys(self) -> list[str]:
        return sorted(self.entries)

    def entry_for(self, key: str) -> Entry | None:
        """The schema entry that owns `key` (a leaf, or an index/field below a list leaf)."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            entry = self.entries.get(".".join(parts[:n]))
            if entry is not None:
                return entry
        return None

    def suggest(self, key: str, n: int = 3) -> list[str]:
        """The `n` valid keys nearest to `key`."""
        keys = self.keys()
        close = difflib.get_close_matches(key, keys, n=n, cutoff=0.0)
        return close or keys[:n]

    def validate(self, cfg: DictConfig) -> None:
        """Check the value constraints OmegaConf cannot express: choices, bounds, and each
        component's `check()` once all of its values are set."""
        self.check_choices_and_bounds(cfg)
        for component in self.components:
            if callable(getattr(component, "check", None)):
                settings = _read_if_complete(component, cfg)
                if settings is not None:
                    settings.check()

    def check_choices_and_bounds(self, cfg: DictConfig) -> None:
        for key, entry in self.entries.items():
            bounds = entry.bounds()
            if not entry.choices and not bounds:
                continue
            value = OmegaConf.select(
                cfg, key, throw_on_missing=False, throw_on_resolution_failure=False
            )
            if value is None or value == MISSING:
                continue
            if entry.choices and value not in entry.choices:
                options = ", ".join(repr(c) for c in entry.choices)
                raise ConfigError(f"{key}: {value!r} is not one of {options}")
            if bounds and isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}={value}: must be a finite number")
            for op, limit in bounds:
                if not _HOLDS[op](value, limit):
                    shown = f"{limit:g}" if isinstance(limit, float) else limit
                    raise ConfigError(f"{key}={value}: must be {op} {shown}")


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_object(value)
    return value


def configure(component: type[T], cfg: DictConfig) -> T:
    """Read the typed dataclass `component` (its class or a preset instance) from `cfg`."""
    values = {}
    for f in dataclasses.fields(component):  # type: ignore[arg-type]
        key = key_of(f)
        try:
            value = OmegaConf.select(cfg, key, default=_NO_DEFAULT, throw_on_missing=True)
        except MissingMandatoryValue:
            raise ConfigError(f"required config value missing: {key}") from None
        if value is _NO_DEFAULT:  # a tree written before the setting existed: its default
            value = (
                getattr(component, f.name)
                if component is not _class_of(component)
                else _default_of(f)
            )
            if value == MISSING:
                raise ConfigError(f"required config value missing: {key}")
        values[f.name] = _plain(value)
    return _class_of(component)(**values)


def _class_of(component: Any) -> type:
    return component if isinstance(component, type) else type(component)


def _read_if_complete(component: type, cfg: DictConfig) -> Any:
    """`component` read from `cfg`, or None while one of its values is still unset."""
    try:
        return configure(component, cfg)
    except (ConfigError, OmegaConfBaseException):
        return None


def build(*components: type) -> DictConfig:
    """Merge the components' dataclasses into one config tree holding their defaults."""
    return Schema(*components).tree()


def missing_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys whose value is still required (`???`)."""
    return sorted(OmegaConf.missing_keys(cfg))


def _of_missing(exc: BaseException) -> bool:
    """Whether a resolution failed only because it reached a value still required (`???`)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, InterpolationToMissingValueError | MissingMandatoryValue):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _check_interpolations(node: DictConfig | ListConfig) -> None:
    for key in range(len(node)) if isinstance(node, ListConfig) else list(node.keys()):
        child = node._get_node(key)
        if child._is_interpolation():
            try:
                node[key]
            except InterpolationResolutionError as exc:
                if not _of_missing(exc):
                    # OmegaConf writes list indices as a[0]; overrides write a.0
                    where = node._get_full_key(key).replace("[", ".").replace("]", "")
                    raise ConfigError(
                        f"{where}: interpolation {child._value()} does not resolve "
                        f"({first_line(exc)}); fix the reference or set {where}=VALUE"
                    ) from None
        elif isinstance(child, DictConfig | ListConfig) and not (
            child._is_missing() or child._is_none()
        ):
            _check_interpolations(child)


def check_values(schema: Schema, cfg: DictConfig) -> None:
    """Fail if an interpolation does not resolve or a choice is invalid (required values may
    still be unset)."""
    _check_interpolations(cfg)
    schema.validate(cfg)


def check_complete(schema: Schema, cfg: DictConfig, job: str = "") -> None:
    """Fail before any work if an interpolation does not resolve, a choice is invalid, or a
    required value is unset."""
    check_values(schema, cfg)
    missing = missing_keys(cfg)
    if missing:
        where = f" for {job}" if job else ""
        sets = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(
            f"required config values missing{where}: {', '.join(missing)} (set them: {sets})"
        )
