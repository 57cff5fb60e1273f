"""The YAML a job's configuration is written to and read from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from theseus.config.schema import Schema
from theseus.errors import UserError


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


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that gives the same key twice (plain YAML loaders keep the last one silently)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        self.key, self.line, self.first = key, again.line + 1, first.line + 1
        super().__init__(
            None,
            None,
            f"duplicate key {key!r} (first at line {self.first}); merge the two into one",
            again,
        )


def _refuse_duplicates(constructor: yaml.constructor.BaseConstructor, node: yaml.Node) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base` merges may be overridden by the keys written beside them
        key = constructor.construct_object(key_node)
        if key in seen:
            raise DuplicateKeyError(key, seen[key], key_node.start_mark)
        seen[key] = key_node.start_mark


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping giving the same key twice, and reads numbers as
    people write them: `0100` is 100 (not YAML 1.1's octal 64) and `1:30` is text (not base 60)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        _refuse_duplicates(self, node)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]

    def construct_decimal_int(self, node: yaml.Node) -> Any:
        text = str(self.construct_scalar(node))  # type: ignore[arg-type]
        if ":" in text:
            return text
        digits = text.replace("_", "")
        if re.fullmatch(r"[-+]?0[0-9]+", digits):
            return int(digits, 10)
        return self.construct_yaml_int(node)

    def construct_plain_float(self, node: yaml.Node) -> Any:
        text = str(self.construct_scalar(node))  # type: ignore[arg-type]
        return text if ":" in text else self.construct_yaml_float(node)


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_decimal_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_plain_float)


class StrictTextLoader(yaml.BaseLoader):
    """`yaml.BaseLoader` (every scalar a string) that refuses a key given twice."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        _refuse_duplicates(self, node)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing files, syntax errors and keys given twice become one-line
    errors."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, expected a YAML file") from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except DuplicateKeyError as exc:
        raise UserError(
            f"{path}: duplicate key {exc.key!r} at line {exc.line} (first at line {exc.first}); "
            "merge the two into one"
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(f"bad YAML in {path}: {yaml_problem(exc)}") from None
    if data is None:
        raise UserError(f"{path} is empty; write one with `theseus configure JOB {path}`")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping (job:, config:), not {type(data).__name__}")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem
