"""`KEY=VALUE` overrides: parsed from text, read by the type of the field they land in."""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    GrammarParseError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from theseus.config.schema import Schema, type_name
from theseus.config.yaml_files import (
    DuplicateKeyError,
    StrictLoader,
    StrictTextLoader,
    yaml_problem,
)
from theseus.errors import ConfigError, first_line


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
    def parse(cls, text: str, example: str | None = None) -> Override:
        """Read `text`; `example` is the `KEY=VALUE` shown when the `=` is missing."""
        if text.startswith("~"):
            key = text[1:]
            if not key or "=" in key:
                raise ConfigError(f"bad override {text!r}: removal is written ~KEY.INDEX")
            return cls(key, "remove", text=text)
        if "=" not in text:
            example = example or "architecture.n_layers=12"
            raise ConfigError(f"bad override {text!r}: expected KEY=VALUE (e.g. {example})")
        key, _, raw = text.partition("=")
        op = "set"
        if key.endswith("+"):
            key, op = key[:-1], "append"
        key = key.strip()
        if not key or not all(part.isidentifier() or part.isdigit() for part in key.split(".")):
            raise ConfigError(f"bad override {text!r}: {key!r} is not a dotted key")
        return cls(key, op, text=text, raw=raw)


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


def _holds_text(kind: Any) -> bool:
    """Whether some field inside a value of type `kind` is a string."""
    kind = _optional(kind)[0]
    if kind is str:
        return True
    if dataclasses.is_dataclass(kind):
        return any(_holds_text(hint) for hint in typing.get_type_hints(kind).values())
    return any(_holds_text(arg) for arg in typing.get_args(kind) if arg is not Ellipsis)


def _typed(value: Any, kind: Any) -> Any:
    """`value`, read with every scalar as text, with each scalar read by the type of its field:
    text stays as written (a dataset named `no` is not False), the rest is read as YAML."""
    inner, optional = _optional(kind)
    if isinstance(value, str):
        if optional and value in _NULLS:
            return None
        if inner is str:
            return value
        return yaml.load(value, Loader=StrictLoader) if value.strip() else None
    if isinstance(value, list):
        return [_typed(item, _item_type(inner, "0")) for item in value]
    if isinstance(value, dict):
        return {key: _typed(item, _item_type(inner, str(key))) for key, item in value.items()}
    return value


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
        if text_only or not _holds_text(inner):
            return yaml.load(raw, Loader=StrictTextLoader if text_only else StrictLoader)
        # records mixing text and other fields: each scalar read by the type of its field
        return _typed(yaml.load(raw, Loader=StrictTextLoader), inner)
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"bad override {text!r}: key {exc.key!r} is given twice; keep one"
        ) from None
    except yaml.YAMLError as exc:
        hint = "; quote items that YAML reads as syntax, e.g. ['@@']" if text_only else ""
        raise ConfigError(
            f"bad override {text!r}: value is not valid YAML ({yaml_problem(exc)}){hint}"
        ) from None


def _whole(key: str, kind: Any, value: Any) -> Any:
    """A number written as a float (`1e9`, `2.0`) for an integer setting, as that integer.

    YAML reads `1e9` (no dot) as text, so text that reads as a number counts too; a number with
    a fraction is refused. Anything else is left to the type check.
    """
    inner = _optional(kind)[0]
    if _is_sequence(inner) and isinstance(value, list):
        return [_whole(key, _item_type(inner, "0"), item) for item in value]
    if inner is not int or not isinstance(value, float | str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    if not number.is_integer():
        raise ConfigError(
            f"{key}: expected int, got {value!r} ({type(value).__name__}); write a whole number"
        )
    return int(number)


def _value_of(schema: Schema, override: Override) -> Any:
    key, raw = override.key, override.raw
    kind = _type_at(schema, key)
    if override.op == "append":
        kind = _item_type(kind, "0")
    if raw is None:
        return _whole(key, kind, override.value)
    if override.op == "append" and kind is not Any and not _is_sequence(kind):
        with contextlib.suppress(yaml.YAMLError):
            if isinstance(yaml.safe_load(raw), list):
                raise ConfigError(
                    f"{override.text}: += appends one element, not a list; replace the "
                    f"list with {key}={raw.strip()}, or append one item at a time "
                    f"({key}+=ITEM; quote an item that starts with '[')"
                )
    return _whole(key, kind, _read_raw(override.text, raw, kind))


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


def _section_keys(schema: Schema, key: str) -> list[str]:
    """The keys inside `key` when it names a section of the schema rather than a value."""
    return sorted(k for k in schema.entries if k.startswith(key + "."))


def _unknown(stages: Sequence[tuple[Schema, DictConfig]], key: str) -> ConfigError:
    """The error for a key no stage owns: a section set as a whole, or the nearest keys."""
    inside = sorted({k for schema, _ in stages for k in _section_keys(schema, key)})
    if inside:
        example = ", ".join(f"{k}=..." for k in inside[:3])
        return ConfigError(
            f"{key!r} is a section, not a value: set its keys one by one (e.g. {example})"
        )
    near: list[str] = []
    for schema, cfg in stages:
        near += _near(schema, cfg, key)
    near = difflib.get_close_matches(key, near, n=3, cutoff=0.0) or near[:3]
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _example(stages: Sequence[tuple[Schema, DictConfig]], text: str) -> str | None:
    """For override text without `=`, a `KEY=VALUE` these stages accept: `text=VALUE` if `text`
    is one of their keys, else their key nearest to `text`."""
    if "=" in text or text.startswith("~"):
        return None
    key = text.strip()
    if any(_owned(schema, cfg, key) for schema, cfg in stages):
        return f"{key}=VALUE"
    near = [k for schema, _ in stages for k in schema.suggest(key, n=1)]
    return f"{near[0]}=VALUE" if near else None


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
        expected = type_name(kind)
    else:
        expected = f"an element of {type_name(entry.type)}" if entry else "another type"
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
    except GrammarParseError:
        raise ConfigError(
            f"{key}: {value!r} holds a ${{ that opens no valid interpolation; write \\${{ for "
            "a literal ${, or close it (${other.key})"
        ) from None
    except (ValidationError, ConfigTypeError) as exc:
        raise _type_error(schema, key, value, exc) from None
    except (ConfigAttributeError, ConfigKeyError, IndexError, InterpolationResolutionError) as exc:
        glued = re.search(r"Key '([^':]+):([^']*)' not in", first_line(exc))
        hint = (
            f"; write `{glued[1]}: {glued[2]}` with a space after the colon (YAML reads "
            f"`{glued[1]}:{glued[2]}` as one key)"
            if glued
            else ""
        )
        raise ConfigError(f"{key}: {first_line(exc)}{hint}") from None


def apply_overrides(stages: Sequence[tuple[Schema, DictConfig]], overrides: Sequence[str]) -> None:
    """Apply each override to every stage whose schema owns its key.

    An override no stage owns is an error listing the three nearest valid keys.
    """
    for text in overrides:
        override = Override.parse(text, _example(stages, text))
        owners = [(s, c) for s, c in stages if _owned(s, c, override.key)]
        if not owners:
            raise _unknown(stages, override.key)
        for schema, cfg in owners:
            apply_override(schema, cfg, override)


def flatten(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The leaves of a nested mapping as (dotted key, value)."""
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, dotted + ".")
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
    for key, value in flatten(values):
        if value in (None, {}) and _section_keys(schema, key):
            continue  # a section emptied by hand (`logging:`): its defaults
        if not _owned(schema, cfg, key):
            if strict:
                raise _unknown([(schema, cfg)], key)
            dropped.append(key)
            continue
        try:
            apply_override(schema, cfg, Override(key, "set", value))
        except ConfigError:
            if strict:
                raise
            dropped.append(key)
    return dropped


def changed_settings(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`KEY OLD -> NEW` for every leaf that differs between two configs (as plain data)."""
    old, new = dict(flatten(before)), dict(flatten(after))
    return [
        f"{key} {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]
