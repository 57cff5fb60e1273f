"""A schema as JSON, read back without importing the classes it was built from.

`theseus configure` keeps each job's schema this way (`theseus/schema_cache.py`): importing a
trainer imports JAX, and writing its config should not. Keys, types, defaults, help, choices and
bounds are data. The types are those settings use: bool, int, float, str, None, Any, unions,
list/tuple/dict of them, and plain dataclasses (rebuilt under their own module and name);
anything else raises `Unstorable`, and the caller keeps the real schema.

A component's `check()` is code, not data, so its verdicts are remembered instead: the error it
raised (or none) and the values it read, traced on a run of the real class. A later config that
agrees on those values gets the same verdict, since a check depends on its component's values
alone (see `field`); any other config imports the class and runs the check again.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import operator
import types
import typing
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from theseus.config.schema import Entry, Schema, _class_of, _plain, key_of
from theseus.errors import ConfigError, UserError

_SCALARS: dict[str, Any] = {
    "bool": bool,
    "int": int,
    "float": float,
    "str": str,
    "None": type(None),
    "Any": Any,
}
_GENERICS: dict[str, type] = {"list": list, "tuple": tuple, "dict": dict}
_ERRORS: dict[str, type[UserError]] = {"UserError": UserError, "ConfigError": ConfigError}
_VERDICTS_KEPT = 32  # per check: enough for the configs one person writes, small to read


class Unstorable(Exception):
    """A type or value the JSON form of a schema cannot hold."""


class _Writer:
    """Types and values as JSON, with a table of the dataclasses they use."""

    def __init__(self) -> None:
        self.classes: dict[str, Any] = {}

    def type(self, tp: Any) -> Any:
        for name, known in _SCALARS.items():
            if tp is known:
                return name
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is types.UnionType or origin is typing.Union:
            # `int | None` and `Optional[int]` are equal but print differently: keep which
            return {"|" if origin is types.UnionType else "Union": [self.type(a) for a in args]}
        if type(tp) is types.GenericAlias and origin in _GENERICS.values() and Ellipsis not in args:
            return {origin.__name__: [self.type(a) for a in args]}
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return {"class": self.dataclass(tp)}
        raise Unstorable(f"type {tp!r}")

    def dataclass(self, cls: type) -> str:
        name = f"{cls.__module__}:{cls.__qualname__}"
        if name in self.classes:
            if self.classes[name] is None:
                raise Unstorable(f"{name} contains itself")
            return name
        # a rebuilt class has fields only: nothing may run when OmegaConf or a check makes one,
        # and the real one must be importable by its name
        if hasattr(cls, "__post_init__") or "<locals>" in cls.__qualname__:
            raise Unstorable(f"dataclass {name}")
        self.classes[name] = None
        hints = typing.get_type_hints(cls)
        fields = []
        for f in dataclasses.fields(cls):
            if not f.init or f.kw_only is True or f.metadata:
                raise Unstorable(f"field {name}.{f.name}")
            if f.default_factory is not dataclasses.MISSING:
                default: list[Any] = ["factory", self.value(f.default_factory())]
            elif f.default is not dataclasses.MISSING:
                default = ["value", self.value(f.default)]
            else:
                default = []
            fields.append([f.name, self.type(hints[f.name]), *default])
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        self.classes[name] = {
            "fields": fields,
            "params": {p: getattr(params, p) for p in ("eq", "order", "unsafe_hash", "frozen")},
        }
        return name

    def value(self, value: Any) -> Any:
        if value is None or type(value) in (bool, int, float, str):
            return value
        if type(value) is list:
            return [self.value(item) for item in value]
        if type(value) is tuple:
            return {"tuple": [self.value(item) for item in value]}
        if type(value) is dict:
            return {"dict": [[self.value(k), self.value(v)] for k, v in value.items()]}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                "object": self.dataclass(type(value)),
                "fields": {
                    f.name: self.value(getattr(value, f.name)) for f in dataclasses.fields(value)
                },
            }
        raise Unstorable(f"value {value!r}")


class _Reader:
    """JSON back into types and values. Dataclasses are rebuilt from the writer's table, or,
    given `real_class`, are the real ones it imports (module, qualname)."""

    def __init__(
        self,
        classes: dict[str, Any],
        real_class: Callable[[str, str], type] | None = None,
    ) -> None:
        self._classes = classes
        self._real_class = real_class
        self._built: dict[str, type] = {}

    def dataclass(self, name: str) -> type:
        if name in self._built:
            return self._built[name]
        module, _, qualname = name.partition(":")
        if self._real_class is not None:
            self._built[name] = self._real_class(module, qualname)
            return self._built[name]
        spec = self._classes[name]
        fields: list[Any] = []
        for field_name, tp, *default in spec["fields"]:
            if not default:
                fields.append((field_name, self.type(tp)))
                continue
            kind, value = default[0], self.value(default[1])
            made = (
                dataclasses.field(default_factory=functools.partial(copy.deepcopy, value))
                if kind == "factory"
                else dataclasses.field(default=value)
            )
            fields.append((field_name, self.type(tp), made))
        cls = dataclasses.make_dataclass(qualname.rpartition(".")[2], fields, **spec["params"])
        cls.__module__, cls.__qualname__ = module, qualname
        self._built[name] = cls
        return cls

    def type(self, data: Any) -> Any:
        if isinstance(data, str):
            return _SCALARS[data]
        ((kind, args),) = data.items()
        if kind == "class":
            return self.dataclass(args)
        parts = [self.type(a) for a in args]
        if kind == "|":
            return functools.reduce(operator.or_, parts)
        if kind == "Union":
            return typing.Union[tuple(parts)]  # noqa: UP007 - rebuilds the form it was written in
        return types.GenericAlias(_GENERICS[kind], tuple(parts))

    def value(self, data: Any) -> Any:
        if isinstance(data, list):
            return [self.value(item) for item in data]
        if not isinstance(data, dict):
            return data
        if "tuple" in data:
            return tuple(self.value(item) for item in data["tuple"])
        if "dict" in data:
            return {self.value(k): self.value(v) for k, v in data["dict"]}
        fields = {name: self.value(v) for name, v in data["fields"].items()}
        return self.dataclass(data["object"])(**fields)


def schema_to_json(schema: Schema) -> dict[str, Any]:
    """`schema` as JSON data; raises `Unstorable` when a type or default has no JSON form."""
    writer = _Writer()
    entries = [
        {
            "key": e.key,
            "type": writer.type(e.type),
            "default": writer.value(e.default),
            "help": e.help,
            "choices": None if e.choices is None else [writer.value(c) for c in e.choices],
            "owners": e.owners,
            "bounds": [writer.value(b) for b in (e.minimum, e.maximum, e.above, e.below)],
            "registry": e.registry,
        }
        for e in schema.entries.values()
    ]
    checks = []
    for component in schema.components:
        cls = _class_of(component)
        if not callable(getattr(cls, "check", None)):
            continue
        if "<locals>" in cls.__qualname__:
            raise Unstorable(f"{cls.__qualname__} cannot be imported by name to run its check")
        checks.append(
            {
                "class": [cls.__module__, cls.__qualname__],
                "fields": {f.name: key_of(f) for f in dataclasses.fields(cls)},
                # what __post_init__ derives from which value is not traced: all of them count
                "reads_all": hasattr(cls, "__post_init__"),
                "verdicts": [],
            }
        )
    return {"classes": writer.classes, "entries": entries, "checks": checks}


class StoredSchema(Schema):
    """A schema read back from `schema_to_json`: the same entries and tree, and the components'
    checks answered by remembered verdicts.

    `real_class(module, qualname)` imports a class whose check must run; `remember()` is told
    when a new verdict joined the data this schema was read from.
    """

    def __init__(
        self,
        data: dict[str, Any],
        real_class: Callable[[str, str], type],
        remember: Callable[[], None],
    ) -> None:
        self.components = []
        self._checks: list[dict[str, Any]] = data["checks"]
        self._real_class, self._remember = real_class, remember
        reader = _Reader(data["classes"])
        self.entries = {}
        for item in data["entries"]:
            choices = item["choices"]
            self.entries[item["key"]] = Entry(
                item["key"],
                reader.type(item["type"]),
                reader.value(item["default"]),
                item["help"],
                None if choices is None else tuple(reader.value(c) for c in choices),
                item["owners"],
                *(reader.value(b) for b in item["bounds"]),
                registry=item["registry"],
            )
        self._root = self._make_dataclass("config", sorted(self.entries))

    def validate(self, cfg: DictConfig) -> None:
        self.check_choices_and_bounds(cfg)
        for check in self._checks:
            values = _read(check["fields"], cfg)
            if values is None:
                continue
            encoded = {name: _Writer().value(value) for name, value in values.items()}
            seen = {name: json.dumps(value, sort_keys=True) for name, value in encoded.items()}
            verdict = next(
                (
                    v
                    for v in check["verdicts"]
                    if all(seen[name] == text for name, text in v["read"].items())
                ),
                None,
            )
            if verdict is None:
                self._judge(check, encoded, seen)
            elif verdict["error"] is not None:
                kind, message = verdict["error"]
                raise _ERRORS[kind](message)

    def _judge(self, check: dict[str, Any], encoded: dict[str, Any], seen: dict[str, str]) -> None:
        """Run the check on the real class, remember its verdict, and raise its error."""
        cls = self._real_class(*check["class"])
        real = _Reader({}, self._real_class)  # nested dataclasses as the real ones, too
        values = {name: real.value(value) for name, value in encoded.items()}
        reads, error = _traced_check(cls, values, check["reads_all"])
        remembered = error is None or (type(error) in _ERRORS.values() and len(error.args) == 1)
        if remembered:
            verdict = {
                "read": {name: seen[name] for name in sorted(reads)},
                "error": None if error is None else [type(error).__name__, str(error)],
            }
            check["verdicts"] = [*check["verdicts"][1 - _VERDICTS_KEPT :], verdict]
            self._remember()
        if error is not None:
            raise error


def _read(fields: dict[str, str], cfg: DictConfig) -> dict[str, Any] | None:
    """A component's values as `configure` reads them, or None while one is still unset."""
    try:
        return {
            name: _plain(OmegaConf.select(cfg, key, throw_on_missing=True))
            for name, key in fields.items()
        }
    except (ConfigError, OmegaConfBaseException):
        return None


def _traced_check(
    cls: type, values: dict[str, Any], reads_all: bool
) -> tuple[set[str], UserError | None]:
    """`cls(**values).check()`: the fields it read, and the UserError it raised (or None)."""
    fields = set(values)
    reads = set(fields) if reads_all else set()
    tracing = False  # what the constructor reads is not the check's doing

    class Traced(cls):  # type: ignore[misc, valid-type]
        def __getattribute__(self, name: str) -> Any:
            if tracing:
                if name in fields:
                    reads.add(name)
                elif name.startswith("__") and name != "__class__":
                    # dataclasses.fields(self), vars(self), copies: every value may count
                    reads.update(fields)
            return super().__getattribute__(name)

    Traced.__name__, Traced.__qualname__ = cls.__name__, cls.__qualname__
    Traced.__module__ = cls.__module__
    try:
        settings = Traced(**values)
    except (ConfigError, OmegaConfBaseException):
        return fields, None  # a component that cannot be read is not checked (`validate`)
    tracing = True
    try:
        settings.check()
    except UserError as exc:
        return reads, exc
    return reads, None
