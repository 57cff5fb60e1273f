"""What the run page shows beside the charts (its config, checkpoints, samples, log) and what
the compare page lists (the config keys that differ between runs)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import yaml

from theseus.dashboard.files import TEXT_LIMIT
from theseus.dashboard.runs import Run
from theseus.dashboard.series import MetricsFile

# files of a run folder shown as samples (samples*.txt, ...) and an evaluation's eval.json
SAMPLE_SUFFIXES = (".txt", ".md", ".json", ".jsonl")


def config_text(run: Run) -> str | None:
    return run.files.text(f"{run.folder}/config.yaml")


def checkpoints(run: Run, metrics: MetricsFile) -> list[dict[str, Any]]:
    """The run's complete checkpoints with the training loss logged at (or last before) each
    step and the validation loss of exactly that step, as `theseus checkpoints` reads them."""
    found = run.files.checkpoints(run.checkpoint_folder)
    if not found:
        return []
    metrics.refresh()
    train, val = metrics.column("loss"), metrics.column("val_loss")
    rows = []
    for c in found:
        loss = None
        if train is not None:
            at = np.searchsorted(train[0], c.step, side="right") - 1
            loss = float(train[1][at]) if at >= 0 else None
        val_loss = None
        if val is not None:
            hits = np.nonzero(val[0] == c.step)[0]
            val_loss = float(val[1][hits[-1]]) if len(hits) else None
        rows.append(
            {
                "step": c.step,
                "written": c.written,
                "size": c.size,
                "loss": _finite(loss),
                "val_loss": _finite(val_loss),
            }
        )
    return rows


def samples(run: Run) -> list[dict[str, str]]:
    """Sample and evaluation files in the run folder (`samples*.txt`, `eval.json`, ...)."""
    shown = []
    for name in run.files.listing(run.folder):
        named = name.startswith(("samples", "sample")) or name == "eval.json"
        if named and name.endswith(SAMPLE_SUFFIXES):
            text = run.files.text(f"{run.folder}/{name}", TEXT_LIMIT)
            if text is not None:
                shown.append({"name": name, "text": text})
    return shown


def log_tail(run: Run) -> dict[str, str]:
    """The end of the run's log: the job log `theseus logs` reads for a submitted run, else the
    run's own log.txt."""
    path = run.record.log if run.record is not None else f"{run.folder}/log.txt"
    data = run.files.tail(path)
    text = data.decode(errors="replace")
    if len(data) >= 64 * 1024 and "\n" in text:
        text = text.split("\n", 1)[1]  # from the first whole line
    return {"path": path, "text": text}


def config_diff(texts: list[str | None]) -> list[dict[str, Any]]:
    """The dotted keys whose values are not the same in every config (a missing key counts as
    a value), each with its value in each config, in order of key."""
    flats = [_flatten(_settings(text)) for text in texts]
    keys = sorted(set().union(*flats)) if flats else []
    missing = object()
    rows = []
    for key in keys:
        values = [flat.get(key, missing) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            shown = [None if v is missing else _text(v) for v in values]
            rows.append({"key": key, "values": shown})
    return rows


def _settings(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(data, dict):
        return {}
    config = data.get("config", data)
    return config if isinstance(config, dict) else {}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _finite(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)
