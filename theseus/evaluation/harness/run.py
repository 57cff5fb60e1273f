"""Harness tasks loaded (with their datasets) and run on a `TheseusLM`, and their results.

With a network, a task's dataset comes from the Hugging Face hub as in the harness. Without
one, a dataset already in the local cache still loads, and any other is a one-line error that
says how to point the task at local files; tasks whose `dataset_path` is `json`, `csv` or
`parquet` with local `data_files` never need the network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from theseus.errors import UserError, first_line
from theseus.evaluation.harness.tasks import (
    builtin_index,
    check_folder,
    needs_hub,
    read_task_yaml,
    resolve_tasks,
    task_folders,
)

LOCAL_FILES = (
    "copy its data to files and point a task YAML of your own at them (dataset_path: json, "
    "dataset_kwargs: {data_files: {test: FILE.jsonl}}), in a folder given as --include-path "
    "(eval.harness.include_path)"
)
# loaded tasks, by what was asked: a training run's evaluations load their datasets once
_LOADED: dict[tuple[Any, ...], dict[str, Any]] = {}


def load_tasks(names: list[str], include_path: str | None) -> dict[str, Any]:
    """The harness's TaskDict ({tasks, groups, group_map}) of `names`, datasets loaded."""
    key = (tuple(names), include_path)
    if key in _LOADED:
        return _LOADED[key]
    resolved = resolve_tasks(names, include_path)
    user = Path(include_path).expanduser().resolve() if include_path else None
    user_index = check_folder(user) if user else {}
    wanted = [n for n in resolved if n not in user_index and not n.endswith((".yaml", ".yml"))]
    # only the folders that define what is asked: indexing all of the harness takes seconds
    members = [m for entry in user_index.values() for m in entry["members"] if m not in user_index]
    builtin = builtin_index() if wanted or members else {}
    folders = task_folders([*wanted, *members], builtin)
    hub = _hub_datasets(resolved, {**builtin, **user_index})
    offline = bool(hub) and not _hub_reachable()

    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=[str(f) for f in folders] + ([str(user)] if user else []) or None,
        include_defaults=False,
    )
    loaded: dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
    with _offline(offline), _quiet():
        for name in resolved:
            try:
                one = manager.load([name])
            except Exception as exc:
                raise _load_error(name, exc, hub.get(name), offline) from exc
            for part in loaded:
                loaded[part].update(one[part])
    _LOADED[key] = loaded
    return loaded


def _hub_datasets(names: list[str], index: dict[str, dict[str, Any]]) -> dict[str, str]:
    """name -> the first hub dataset its tasks read (none for names reading only local files)."""
    found: dict[str, str] = {}
    for name in names:
        pending, seen = [name], set()
        while pending and name not in found:
            item = pending.pop()
            if item in seen:
                continue
            seen.add(item)
            entry = index.get(item)
            path = item if item.endswith((".yaml", ".yml")) else entry and entry["path"]
            if entry is not None:
                pending += entry["members"]
            if not path:
                continue
            try:
                cfg = read_task_yaml(Path(path))
            except ValueError:
                continue
            if "group" not in cfg and needs_hub(cfg.get("dataset_path")):
                found[name] = str(cfg["dataset_path"])
    return found


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub answers (quickly: offline, `datasets` retries for a minute)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _offline(offline: bool) -> Iterator[None]:
    """`datasets` and the hub client in offline mode: a cached dataset loads, others fail fast."""
    if not offline:
        yield
        return
    import datasets
    from huggingface_hub import constants

    before = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = before


def _load_error(name: str, exc: Exception, dataset: str | None, offline: bool) -> UserError:
    if offline and dataset is not None:
        return UserError(
            f"harness: task {name} reads {dataset} from the Hugging Face hub, which cannot be "
            "reached from here and has no copy in the local cache; run it once where the hub "
            f"can be reached (datasets caches it), or {LOCAL_FILES}"
        )
    return UserError(f"harness: task {name} could not be loaded: {first_line(exc)}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The harness's warnings about defaults it fills in (a task without higher_is_better, ...)
    left out of theseus's output: its errors still show."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """The harness's seeds for the tasks that draw at random; the caller's generators resume."""
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED

    python, numpy = random.getstate(), np.random.get_state()
    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    # bootstrapped standard errors in this process: the harness would fork a pool, and a fork
    # of a process running JAX's threads can hang
    multiproc = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        if multiproc is None:
            del os.environ["DISABLE_MULTIPROC"]
        else:
            os.environ["DISABLE_MULTIPROC"] = multiproc


def run_tasks(
    lm: Any,
    loaded: dict[str, Any],
    *,
    num_fewshot: int | None,
    limit: int | None,
    bootstrap_iters: int,
) -> dict[str, Any]:
    """The harness's results dict for `loaded` tasks, as `lm_eval.simple_evaluate` makes it."""
    from lm_eval.defaults import DEFAULT_OTHER_SEED
    from lm_eval.evaluator import evaluate

    for task in loaded["tasks"].values():
        # as the harness does: a task that fixes 0 shots keeps them, one that says none gets 0
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    with _seeded(), _quiet():
        try:
            results = evaluate(
                lm=lm,
                task_dict=loaded,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=False,
            )
        except ValueError as exc:  # what the harness refuses (an unsafe task, a multimodal one)
            raise UserError(f"harness: {first_line(exc)}") from exc
    results["config"] = {
        "model": str(lm.tokenizer_name),
        "batch_size": lm.engine.rows,
        "devices": lm.engine.mesh.size,
        "max_length": lm.max_length,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "bootstrap_iters": bootstrap_iters,
    }
    return results


def metrics(results: dict[str, Any]) -> dict[str, float]:
    """`<task>/<metric>` -> value of every task and group: a metric of a filter other than the
    default one is `<metric>,<filter>`, as the harness names it; standard errors are left out."""
    flat: dict[str, float] = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, _, kind = key.partition(",")
            if not kind or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                flat[f"{task}/{metric if kind == 'none' else key}"] = float(value)
    return flat


def table(results: dict[str, Any]) -> str:
    """The harness's Markdown tables: one row per task and metric, then the groups'."""
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


def results_json(results: dict[str, Any]) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"
