"""Typed configuration: dataclass fields placed in one OmegaConf tree.

A component declares its settings as a dataclass whose fields say where they live::

    @dataclass
    class OptimizerConfig:
        lr: float = field("optimization/lr", default=3e-4, help="peak learning rate")

A job's schema is the union of its components (`Schema(*classes)` / `build(*classes)`); the tree is
an OmegaConf structured config, so assignments are type-checked and unknown keys are refused.
While a job runs, `configuration(cfg)` makes the tree current and `configure(Cls)` reads a
component's typed dataclass out of it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import copy
import dataclasses
import difflib
import itertools
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from theseus.errors import ConfigError, UserError, first_line

MISSING = "???"
_PATH = "theseus_path"
_NO_DEFAULT: Any = object()
T = TypeVar("T")


def field(
    path: str,
    *,
    default: Any = _NO_DEFAULT,
    default_factory: Callable[[], Any] | None = None,
    help: str = "",
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
) -> Any:
    """A dataclass field that lives at `path` ("section/key") in the job's config tree.

    Without a default the value is required (`???`) and must be set before the job runs.
    `choices` restricts the value to a fixed set and `minimum` bounds a number from below (null
    stays allowed where the type is optional), checked whenever the tree is validated.
    """
    metadata = {
        _PATH: path,
        "help": help,
        "choices": tuple(choices) if choices else None,
        "minimum": minimum,
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


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp).replace("typing.", ""))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"


class Schema:
    """The merged settings of a job's components, and the rules for changing them."""

    def __init__(self, *components: type) -> None:
        self.components = list(dict.fromkeys(components))
        self.entries: dict[str, Entry] = {}
        for component in self.components:
            self._add(component)
        self._check_prefixes()
        self._root = self._make_dataclass("config", sorted(self.entries))

    def _add(self, component: type) -> None:
        if not dataclasses.is_dataclass(component):
            raise TypeError(f"{component!r} is not a dataclass")
        hints = typing.get_type_hints(component)
        owner = f"{component.__module__}.{component.__qualname__}"
        for f in dataclasses.fields(component):
            if _PATH not in f.metadata:
                raise TypeError(f"{owner}.{f.name} must be declared with theseus.config.field()")
            key = f.metadata[_PATH].strip("/").replace("/", ".")
            entry = Entry(
                key,
                hints[f.name],
                _default_of(f),
                f.metadata["help"],
                f.metadata["choices"],
                [owner],
                f.metadata.get("minimum"),
            )
            known = self.entries.get(key)
            if known is None:
                self.entries[key] = entry
                continue
            if known.default != entry.default or known.type != entry.type:
                raise ConfigError(
                    f"config key {key!r} is declared twice with different defaults: "
                    f"{known.owners[0]} has {known.default!r} ({_type_name(known.type)}), "
                    f"{owner} has {entry.default!r} ({_type_name(entry.type)})"
                )
            known.owners.append(owner)
            known.help = known.help or entry.help

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
        """Check the value constraints OmegaConf cannot express (choices, minimums)."""
        for key, entry in self.entries.items():
            if not entry.choices and entry.minimum is None:
                continue
            value = OmegaConf.select(
                cfg, key, throw_on_missing=False, throw_on_resolution_failure=False
            )
            if value is None or value == MISSING:
                continue
            if entry.choices and value not in entry.choices:
                options = ", ".join(repr(c) for c in entry.choices)
                raise ConfigError(f"{key}: {value!r} is not one of {options}")
            if entry.minimum is not None and value < entry.minimum:
                raise ConfigError(f"{key}={value}: must be >= {entry.minimum:g}")


def build(*components: type) -> DictConfig:
    """Merge the components' dataclasses into one config tree holding their defaults."""
    return Schema(*components).tree()


# Overrides ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Override:
    """One `KEY=VALUE` (set), `KEY+=VALUE` (append to a list) or `~KEY.N` (remove from a list).

    Parsed from text, the value stays `raw` until it is applied: how to read it depends on the
    type of the field it lands in.
    """

    key: str
    op: str
    value: Any = None
    text: str = ""
    raw: str | None = None

    @classmethod
    def parse(cls, text: str) -> Override:
        if text.startswith("~"):
            key = text[1:]
            if not key or "=" in key:
                raise ConfigError(f"bad override {text!r}: removal is written ~KEY.INDEX")
            return cls(key, "remove", text=text)
        if "=" not in text:
            raise ConfigError(f"bad override {text!r}: expected KEY=VALUE (e.g. model.n_layers=12)")
        key, _, raw = text.partition("=")
        op = "set"
        if key.endswith("+"):
            key, op = key[:-1], "append"
        key = key.strip()
        if not key or not all(part.isidentifier() or part.isdigit() for part in key.split(".")):
            raise ConfigError(f"bad override {text!r}: {key!r} is not a dotted key")
        return cls(key, op, text=text, raw=raw)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


_NULLS = ("", "~", "null", "Null", "NULL")


def _optional(kind: Any) -> tuple[Any, bool]:
    """`kind` without its `| None`, and whether it had one."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
        return kind, len(rest) < len(args)
    return kind, False


def _is_sequence(kind: Any) -> bool:
    return typing.get_origin(_optional(kind)[0]) in (list, tuple, collections.abc.Sequence)


def _item_type(kind: Any, part: str) -> Any:
    """The type of `part` (an index or a field name) inside a value of type `kind`."""
    kind = _optional(kind)[0]
    args = typing.get_args(kind)
    if _is_sequence(kind) and args:
        return args[0]
    if typing.get_origin(kind) is dict and len(args) == 2:
        return args[1]
    if dataclasses.is_dataclass(kind):
        return typing.get_type_hints(kind).get(part, Any)
    return Any


def _type_at(schema: Schema, key: str) -> Any:
    entry = schema.entry_for(key)
    if entry is None:
        return Any
    kind = entry.type
    for part in key[len(entry.key) :].split(".")[1:]:
        kind = _item_type(kind, part)
    return kind


def _is_text(kind: Any) -> bool:
    """Whether every scalar inside a value of type `kind` is a string."""
    kind = _optional(kind)[0]
    if kind is str:
        return True
    args = [a for a in typing.get_args(kind) if a is not Ellipsis]
    if _is_sequence(kind):
        return bool(args) and all(_is_text(a) for a in args)
    return typing.get_origin(kind) is dict and len(args) == 2 and _is_text(args[1])


def _unquoted(raw: str) -> str:
    """A quoted string as YAML reads it (`'it''s'` -> `it's`); any other text as written."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        with contextlib.suppress(yaml.YAMLError):
            value = yaml.safe_load(text)
            if isinstance(value, str):
                return value
    return raw


def _read_raw(text: str, raw: str, kind: Any) -> Any:
    """The value of override text for a field of type `kind`.

    A string field takes the text as written, because YAML would turn `no` into False, `#...`
    into None and refuse `@@`; lists of strings keep every item a string for the same reason.
    """
    inner, optional = _optional(kind)
    if optional and raw.strip() in _NULLS:
        return None
    if inner is str:
        return _unquoted(raw)
    if not raw.strip():
        return None
    text_only = _is_text(inner)
    try:
        return yaml.load(raw, Loader=yaml.BaseLoader if text_only else yaml.SafeLoader)
    except yaml.YAMLError as exc:
        hint = "; quote items that YAML reads as syntax, e.g. ['@@']" if text_only else ""
        raise ConfigError(
            f"bad override {text!r}: value is not valid YAML ({_yaml_problem(exc)}){hint}"
        ) from None


def _value_of(schema: Schema, override: Override) -> Any:
    if override.raw is None:
        return override.value
    key, raw = override.key, override.raw
    kind = _type_at(schema, key)
    if override.op == "append":
        kind = _item_type(kind, "0")
        if kind is not Any and not _is_sequence(kind):
            with contextlib.suppress(yaml.YAMLError):
                if isinstance(yaml.safe_load(raw), list):
                    raise ConfigError(
                        f"{override.text}: += appends one element, not a list; replace the "
                        f"list with {key}={raw.strip()}, or append one item at a time "
                        f"({key}+=ITEM; quote an item that starts with '[')"
                    )
    return _read_raw(override.text, raw, kind)


def _exists(cfg: DictConfig, key: str) -> bool:
    """Whether `key` names a node of `cfg`; a bad list index counts (`_check_indices` explains)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig | ListConfig):
            return False
        if node._is_missing() or node._is_none() or node._is_interpolation():
            return True  # nothing below to look at; OmegaConf says what is wrong
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                return True
            node = node._get_node(int(part))
        elif part in node.keys():  # noqa: SIM118 - `part in node` is False for a `???` value
            node = node._get_node(part)
        else:
            return False
    return True


def _owned(schema: Schema, cfg: DictConfig, key: str) -> bool:
    return schema.entry_for(key) is not None and _exists(cfg, key)


def _near(schema: Schema, cfg: DictConfig, key: str) -> list[str]:
    """Valid keys near `key`: the schema's, and the fields beside it inside a list element."""
    near = schema.suggest(key)
    entry = schema.entry_for(key)
    parent = key.rpartition(".")[0]
    if entry is not None and entry.key != key and _exists(cfg, parent):
        with contextlib.suppress(OmegaConfBaseException, ValueError):
            node = OmegaConf.select(cfg, parent)
            if isinstance(node, DictConfig):
                near += [f"{parent}.{k}" for k in node]
    return difflib.get_close_matches(key, near, n=3, cutoff=0.0) or near[:3]


def _check_indices(cfg: DictConfig, key: str) -> None:
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, ListConfig):
            if not part.isdigit():
                raise ConfigError(f"{key}: {'.'.join(parts[:i])} is a list; index it with a number")
            if int(part) >= len(node):
                raise ConfigError(
                    f"{key}: index {part} is out of range ({'.'.join(parts[:i])} has {len(node)}; append with +=)"
                )
        if not isinstance(node, DictConfig | ListConfig):
            return
        node = node._get_node(int(part) if isinstance(node, ListConfig) else part)


def _type_error(schema: Schema, key: str, value: Any, exc: Exception) -> ConfigError:
    entry = schema.entry_for(key)
    kind = _type_at(schema, key)
    if kind is not Any:
        expected = _type_name(kind)
    else:
        expected = f"an element of {_type_name(entry.type)}" if entry else "another type"
    return ConfigError(
        f"{key}: expected {expected}, got {value!r} ({type(value).__name__})"
        + (f" [{first_line(exc)}]" if not isinstance(exc, ValidationError) else "")
    )


def _as_structured(kind: Any, value: Any) -> Any:
    """A mapping meant for a dataclass-typed node becomes that dataclass (unknown keys fail)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
        return OmegaConf.merge(OmegaConf.structured(kind), value)
    return value


def _coerce(node: Any, value: Any) -> Any:
    if isinstance(node, ListConfig) and isinstance(value, list):
        return [_as_structured(node._metadata.element_type, v) for v in value]
    if isinstance(node, DictConfig):
        return _as_structured(node._metadata.object_type, value)
    return value


def apply_override(schema: Schema, cfg: DictConfig, override: Override) -> None:
    """Apply one override to `cfg`; errors name the key and the fix."""
    key = override.key
    value = _value_of(schema, override)
    try:
        _check_indices(cfg, key if override.op != "remove" else key.rpartition(".")[0])
        if override.op == "set":
            # the current value may be the broken interpolation this override replaces
            node = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
            OmegaConf.update(cfg, key, _coerce(node, value), merge=False, force_add=False)
            return
        parent_key, _, last = key.rpartition(".")
        if override.op == "append":
            node = OmegaConf.select(cfg, key)
            if not isinstance(node, ListConfig):
                raise ConfigError(f"{key}: += appends to a list, but {key} is not a list")
            node.append(_as_structured(node._metadata.element_type, value))
            return
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, ListConfig) or not last.isdigit():
            raise ConfigError(f"{key}: ~ removes a list element, written ~LIST.INDEX")
        if int(last) >= len(parent):
            raise ConfigError(f"{key}: index {last} is out of range (the list has {len(parent)})")
        del parent[int(last)]
    except (ValidationError, ConfigTypeError) as exc:
        raise _type_error(schema, key, value, exc) from None
    except (ConfigAttributeError, ConfigKeyError, IndexError, InterpolationResolutionError) as exc:
        raise ConfigError(f"{key}: {first_line(exc)}") from None


def apply_overrides(stages: Sequence[tuple[Schema, DictConfig]], overrides: Sequence[str]) -> None:
    """Apply each override to every stage whose schema owns its key.

    An override no stage owns is an error listing the three nearest valid keys.
    """
    for text in overrides:
        override = Override.parse(text)
        owners = [(s, c) for s, c in stages if _owned(s, c, override.key)]
        if not owners:
            near: list[str] = []
            for schema, cfg in stages:
                near += _near(schema, cfg, override.key)
            near = difflib.get_close_matches(override.key, near, n=3, cutoff=0.0) or near[:3]
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"unknown config key {override.key!r}{hint}")
        for schema, cfg in owners:
            apply_override(schema, cfg, override)


def _flatten(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def merge_values(
    schema: Schema, cfg: DictConfig, values: dict[str, Any], *, strict: bool = True
) -> list[str]:
    """Set every leaf of a nested mapping (as read from YAML) on `cfg`.

    Strict: an unknown key is an error. Lenient: unknown or ill-typed keys are skipped and
    returned, so a previous YAML can be carried into a changed schema.
    """
    dropped = []
    for key, value in _flatten(values):
        if not _owned(schema, cfg, key):
            if strict:
                near = ", ".join(_near(schema, cfg, key))
                raise ConfigError(f"unknown config key {key!r}; did you mean {near}?")
            dropped.append(key)
            continue
        try:
            apply_override(schema, cfg, Override(key, "set", value))
        except ConfigError:
            if strict:
                raise
            dropped.append(key)
    return dropped


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


# YAML --------------------------------------------------------------------------------------------


def _dump_value(key: str, value: Any, indent: str) -> str:
    text = yaml.safe_dump(
        {key: value}, default_flow_style=False, sort_keys=False, width=1 << 30, allow_unicode=True
    )
    return "".join(indent + line + "\n" for line in text.splitlines())


def _dump_tree(schema: Schema | None, node: dict[str, Any], prefix: str, indent: str) -> str:
    out = []
    for key, value in node.items():
        dotted = prefix + key
        entry = schema.entries.get(dotted) if schema else None
        if entry is not None and entry.help:
            out += [f"{indent}# {line}\n" for line in entry.help.strip().splitlines()]
        if isinstance(value, dict) and value and entry is None:
            out.append(f"{indent}{key}:\n")
            out.append(_dump_tree(schema, value, dotted + ".", indent + "  "))
        else:
            out.append(_dump_value(key, value, indent))
    return "".join(out)


def to_yaml(
    cfg: DictConfig, schema: Schema | None = None, header: dict[str, Any] | None = None
) -> str:
    """YAML text of `cfg` under `config:`, each field preceded by its help as a comment."""
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    text = _dump_tree(None, header or {}, "", "")
    return text + "config:\n" + _dump_tree(schema, container, "", "  ")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing files and syntax errors become one-line errors."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, expected a YAML file") from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"bad YAML in {path}: {_yaml_problem(exc)}") from None
    if data is None:
        raise UserError(f"{path} is empty; write one with `theseus configure JOB {path}`")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping (job:, config:), not {type(data).__name__}")
    return data


def atomic_write(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        why = unwritable(path.parent) or exc.strerror or str(exc)
        raise UserError(f"cannot write {path}: {why}; choose another path") from None


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written under `folder` (made if need be), or None; creates nothing."""
    existing = next(p for p in [folder.absolute(), *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            return None
    except OSError as exc:
        return f"{existing} is not writable ({exc.strerror or exc})"


# The current configuration -----------------------------------------------------------------------

_CURRENT: contextvars.ContextVar[DictConfig | None] = contextvars.ContextVar(
    "theseus_config", default=None
)


@contextlib.contextmanager
def configuration(cfg: DictConfig) -> Iterator[DictConfig]:
    """Make `cfg` the configuration `configure()` reads from, for the duration of the block."""
    token = _CURRENT.set(cfg)
    try:
        yield cfg
    finally:
        _CURRENT.reset(token)


def current() -> DictConfig:
    cfg = _CURRENT.get()
    if cfg is None:
        raise RuntimeError(
            "no active configuration: call configure() inside `with configuration(cfg):`"
        )
    return cfg


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_object(value)
    return value


def configure(component: type[T], cfg: DictConfig | None = None) -> T:
    """Read the typed dataclass `component` from `cfg` (default: the active configuration)."""
    cfg = current() if cfg is None else cfg
    values = {}
    for f in dataclasses.fields(component):  # type: ignore[arg-type]
        key = f.metadata[_PATH].strip("/").replace("/", ".")
        try:
            values[f.name] = _plain(OmegaConf.select(cfg, key, throw_on_missing=True))
        except MissingMandatoryValue:
            raise ConfigError(f"required config value missing: {key}") from None
    return component(**values)
