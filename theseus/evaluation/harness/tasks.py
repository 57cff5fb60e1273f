"""Which lm-evaluation-harness tasks exist, checked without importing the harness.

The harness indexes its 14,000 task YAMLs each time it starts (seconds), and importing it takes
seconds more: too slow for `theseus configure`. The names are read here with plain YAML (the
harness's rules: `task` / `group` / `tag` keys, `include` merged) once per installed harness
version, and kept in a file under $XDG_CACHE_HOME/theseus/harness. A user's own task folder
(`include_path`) is read each time, and its files checked for what a task needs.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from theseus.errors import UserError, first_line

_FORMAT = 1  # of a cached index; a change of its layout must change it
# the `output_type`s the harness knows, and the fields every task YAML must have
OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until")
REQUIRED = ("dataset_path", "doc_to_text", "doc_to_target")
# `datasets` builders that read local files: a task naming one needs no network
LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "pandas"})


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """YAML as the harness reads it: `!function module.name` kept as text, not imported."""


_Loader.add_constructor(
    "!function", lambda loader, node: f"!function {loader.construct_scalar(node)}"
)


@functools.lru_cache(maxsize=4096)
def _parsed(path: Path) -> Any:
    with path.open("rb") as f:
        return yaml.load(f, Loader=_Loader)


def read_task_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A task YAML with its `include`s merged (the file's own keys win), as the harness reads it.
    A ValueError says what is wrong."""
    path = path.expanduser().resolve()
    if path in _seen:
        raise ValueError(f"includes itself through {', '.join(p.name for p in _seen)}")
    try:
        cfg = _parsed(path)
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"does not parse as YAML ({first_line(exc)})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"holds a {type(cfg).__name__}, not a mapping of task settings")
    if "include" not in cfg:
        return dict(cfg)
    merged: dict[str, Any] = {}
    includes = cfg["include"]
    for name in includes if isinstance(includes, list) else [includes]:
        included = Path(name) if Path(name).is_absolute() else path.parent / str(name)
        try:
            merged.update(read_task_yaml(included, (*_seen, path)))
        except ValueError as exc:
            raise ValueError(f"include {name}: {exc}") from None
    merged.update({k: v for k, v in cfg.items() if k != "include"})
    return merged


def index_folder(folder: Path) -> dict[str, dict[str, Any]]:
    """name -> {"kind": task | group | tag, "path": YAML (none for a tag), "members": names}
    of every task YAML under `folder`; the first of a name wins, as in the harness. Files that
    do not parse are passed over, as the harness does (`check_folder` names them)."""
    index: dict[str, dict[str, Any]] = {}
    for path in _yaml_files(folder):
        try:
            cfg = read_task_yaml(path)
        except ValueError:
            continue
        if "group" in cfg and "class" not in cfg:
            index.setdefault(str(cfg["group"]), _entry("group", path, _members(cfg.get("task"))))
        elif "task" in cfg and isinstance(cfg["task"], str):
            index.setdefault(cfg["task"], _entry("task", path, []))
            tags = cfg.get("tag") or []
            for tag in [tags] if isinstance(tags, str) else tags:
                entry = index.setdefault(str(tag), _entry("tag", None, []))
                if entry["kind"] == "tag":
                    entry["members"].append(cfg["task"])
    return index


def _entry(kind: str, path: Path | None, members: list[str]) -> dict[str, Any]:
    return {"kind": kind, "path": None if path is None else str(path), "members": members}


def _members(spec: Any) -> list[str]:
    """The names a group's `task` list refers to (inline configs: their own names)."""
    found: list[str] = []
    for item in spec if isinstance(spec, list) else [spec]:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            inner = item.get("group") and item.get("task")
            found += _members(inner) if inner else [str(item["task"])] if "task" in item else []
    return found


def _yaml_files(folder: Path) -> list[Path]:
    skip = {"__pycache__", ".ipynb_checkpoints"}
    return sorted(
        (p for p in folder.glob("**/*.yaml") if not skip & set(p.parts)), key=lambda p: p.as_posix()
    )


def harness_folder() -> Path:
    """The installed harness's own task folder, found without importing it."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "harness tasks need lm-evaluation-harness: install it with `uv sync --group all` "
            "(or pip install lm-eval)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def builtin_index() -> dict[str, dict[str, Any]]:
    """The harness's own tasks, groups and tags, read once per installed version."""
    folder = harness_folder()
    version = importlib.metadata.version("lm-eval")
    key = hashlib.sha256(f"{_FORMAT} {version} {folder}".encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    cached = Path(base) / "theseus" / "harness" / f"tasks-{version}-{key}.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    index = index_folder(folder)
    try:  # a cache that cannot be written only costs the next run the same seconds
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_name(f".{cached.name}.{os.getpid()}")
        temporary.write_text(json.dumps(index), encoding="utf-8")
        temporary.replace(cached)
    except OSError:
        pass
    return index


def check_folder(folder: Path) -> dict[str, dict[str, Any]]:
    """The index of a user's task folder; a YAML in it that does not parse is an error."""
    if not folder.is_dir():
        raise UserError(f"harness: include path {folder} is not a folder of task YAMLs")
    for path in _yaml_files(folder):
        try:
            read_task_yaml(path)
        except ValueError as exc:
            raise UserError(f"harness: task file {path} {exc}") from None
    return index_folder(folder)


def check_task_file(path: Path, cfg: dict[str, Any]) -> None:
    """Refuse a task YAML without what the harness needs to run it, naming the missing field."""
    if "group" in cfg or "class" in cfg:
        return  # a group names its tasks (checked by name); a Python task defines itself
    missing = [key for key in REQUIRED if key not in cfg]
    if "custom_dataset" in cfg and "dataset_path" in missing:
        missing.remove("dataset_path")
    output_type = cfg.get("output_type", "generate_until")
    if output_type == "multiple_choice" and "doc_to_choice" not in cfg:
        missing.append("doc_to_choice")
    if not any(cfg.get(split) for split in ("test_split", "validation_split")):
        missing.append("test_split (or validation_split)")
    if missing:
        raise UserError(
            f"harness: task file {path} has no {', '.join(missing)}; a task needs "
            f"{', '.join(REQUIRED)} and a test_split or validation_split (see the harness's "
            "docs/task_guide.md)"
        )
    if output_type not in OUTPUT_TYPES:
        raise UserError(
            f"harness: task file {path}: output_type {output_type!r} is not one of "
            f"{', '.join(OUTPUT_TYPES)}"
        )


def resolve_tasks(names: Iterable[str], include_path: str | None) -> list[str]:
    """Check every requested name (a task, group or tag, a glob of them, or a YAML file) and the
    user's task files it uses; returns the names with globs expanded."""
    user = check_folder(Path(include_path).expanduser()) if include_path else {}
    resolved: list[str] = []
    builtin: dict[str, dict[str, Any]] | None = None
    for name in names:
        if name.endswith((".yaml", ".yml")):
            path = Path(name).expanduser()
            if not path.is_file():
                raise UserError(f"harness: no task file {path}")
            try:
                check_task_file(path, read_task_yaml(path))
            except ValueError as exc:
                raise UserError(f"harness: task file {path} {exc}") from None
            resolved.append(str(path.resolve()))
            continue
        if builtin is None and not (name in user and not _is_glob(name)):
            builtin = builtin_index()
        known = {**(builtin or {}), **user}
        matches = (
            sorted(fnmatch.filter(known, name)) if _is_glob(name) else [name] * (name in known)
        )
        if not matches:
            raise UserError(_unknown(name, known, include_path))
        for match in matches:
            _check_entry(match, user, set())
        resolved += matches
    return list(dict.fromkeys(resolved))


def _check_entry(name: str, user: dict[str, dict[str, Any]], seen: set[str]) -> None:
    """Check the user's task files `name` uses (the harness's own are its business)."""
    entry = user.get(name)
    if entry is None or name in seen:
        return
    seen.add(name)
    if entry["path"] is not None:
        check_task_file(Path(entry["path"]), read_task_yaml(Path(entry["path"])))
    for member in entry["members"]:
        _check_entry(member, user, seen)


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _unknown(name: str, known: dict[str, Any], include_path: str | None) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    where = f"the harness or {include_path}" if include_path else "the harness"
    return (
        f"harness: unknown task {name!r} ({where} defines no task, group or tag of that name); "
        f"{hint}list them with `lm-eval ls tasks`, or give your own task YAML's folder "
        "(eval.harness.include_path, --include-path)"
    )


def task_folders(names: Iterable[str], index: dict[str, dict[str, Any]]) -> list[Path]:
    """The harness folders that define `names` and everything their groups and tags use: the
    harness indexes only these (seconds less than all of its tasks)."""
    folders: set[Path] = set()
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        entry = index.get(name)
        if entry is None or name in seen:
            continue
        seen.add(name)
        if entry["path"] is not None:
            folders.add(Path(entry["path"]).parent)
        pending += entry["members"]
    ordered = sorted(folders, key=lambda p: p.as_posix())
    # a folder inside another is indexed with it already
    return [f for f in ordered if not any(o != f and o in f.parents for o in ordered)]


def needs_hub(path: Any) -> bool:
    """Whether a task's dataset_path names a hub dataset (not a local builder or folder)."""
    return (
        isinstance(path, str)
        and path not in LOCAL_BUILDERS
        and not Path(path).expanduser().exists()
    )
