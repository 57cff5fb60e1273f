"""Checkpoints: the one module that talks to Orbax.

A checkpoint is a step folder written by an Orbax `CheckpointManager` (asynchronously, and
atomically: it is written under a temporary name and renamed when complete, so an interrupted
save never becomes the latest). It holds three items: `params`, `opt` (the optimizer state) and
`meta` (step, seed, the full RNG key, the resolved config, the job and its spec, the vocabulary
size and the training store's tokenizer identity). With the deterministic loader that is all a
run needs to resume bitwise. Orbax's own `metrics` item holds the validation loss of the step,
when the run validated at it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from theseus.errors import UserError, first_line

FORMAT = 1


class Checkpointer:
    """Save and restore train states under one run's checkpoint folder.

    Keeps the last `keep_last` checkpoints plus every one whose step is a multiple of
    `keep_every`, and with `keep_best` the one with the lowest validation loss among those that
    recorded one. A save that fails is reported and leaves the earlier checkpoints as they were.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 3,
        keep_every: int | None = None,
        keep_best: bool = False,
        asynchronous: bool = True,
        read_only: bool = False,
    ) -> None:
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else 1,
            preservation_policy=None if read_only else _retention(keep_last, keep_every, keep_best),
            # Orbax writes a step's metrics only with a best_fn; every run records them, so that
            # one resumed with keep_best turned on knows the best of its earlier checkpoints
            best_fn=_val_loss,
            best_mode="min",
            enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        # Orbax warns at length that a read-only manager will not save; that is the point of it.
        quiet = _absl_level(logging.ERROR) if read_only else contextlib.nullcontext()
        with quiet:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={
                    "params": ocp.StandardCheckpointHandler(),
                    "opt": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(),
                },
            )
        self.failures: list[str] = []
        self._pending: int | None = None

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step (an interrupted write does not count)."""
        self._manager.reload()
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def save(
        self,
        step: int,
        params: Any,
        opt: Any,
        meta: dict[str, Any],
        val_loss: float | None = None,
    ) -> bool:
        """Start writing a checkpoint of `step` (`val_loss`: the validation loss at that step,
        if the run validated at it); False (and a report) if it could not be written.

        An error of an earlier asynchronous save surfaces here too and is reported the same way.
        """
        self._collect_errors()
        # empty rather than absent when there is none: Orbax warns at each save without metrics
        recorded = (
            {"val_loss": val_loss} if val_loss is not None and math.isfinite(val_loss) else {}
        )
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(params),
                    opt=ocp.args.StandardSave(opt),
                    meta=ocp.args.JsonSave(meta),
                ),
                metrics=recorded,
                force=True,
            )
        except Exception as exc:
            self._fail(step, exc)
            return False
        self._pending = step
        return True

    def wait(self) -> bool:
        """Block until pending saves are on disk; False if one failed (it is reported)."""
        before = len(self.failures)
        self._collect_errors()
        return len(self.failures) == before

    def _collect_errors(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as exc:
            self._fail(self._pending, exc)
        self._pending = None

    def _fail(self, step: int | None, exc: BaseException) -> None:
        try:
            self._manager.reload()
            previous = self._manager.latest_step()
            kept = (
                f"; the previous checkpoint (step {previous}) is intact"
                if previous is not None
                else "; no earlier checkpoint exists"
            )
        except Exception:  # the folder itself may be what failed: claim nothing about it
            kept = ""
        what = "finishing the checkpoint writes" if step is None else f"checkpoint of step {step}"
        message = f"{what} failed: {first_line(exc)}{kept}"
        self.failures.append(message)

    def meta(self, step: int) -> dict[str, Any]:
        """The metadata item of checkpoint `step`."""
        with self._reading(step):
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        return dict(restored["meta"])

    @contextlib.contextmanager
    def _reading(self, step: int) -> Iterator[None]:
        """A checkpoint that cannot be read (damaged, or removed meanwhile by the run writing it)
        is a one-line error naming it and the way back to the one before."""
        try:
            yield
        except UserError:
            raise
        except Exception as exc:
            where = self.directory / str(step)
            raise UserError(
                f"checkpoint {where} cannot be read ({first_line(exc)}); if it is damaged, move it "
                f"out of {self.directory} to use the checkpoint before it"
            ) from None

    def restore(self, step: int, params: Any, opt: Any | None) -> tuple[Any, Any, dict[str, Any]]:
        """Restore checkpoint `step` into the shapes, dtypes and shardings of `params` and `opt`
        (pass `opt=None` for weights only)."""
        with self._reading(step):
            stored = self._manager.item_metadata(step)
            stored_params, stored_opt = stored["params"], stored["opt"] if opt is not None else None
        self._check_fits(step, "params", stored_params, params)
        if opt is not None:
            self._check_fits(step, "opt", stored_opt, opt)
        items: dict[str, Any] = {
            "params": ocp.args.StandardRestore(_abstract(params)),
            "meta": ocp.args.JsonRestore(),
        }
        if opt is not None:
            items["opt"] = ocp.args.StandardRestore(_abstract(opt))
        with self._reading(step):  # the shapes fit (checked above): what fails here is the data
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return (
            restored["params"],
            restored.get("opt") if opt is not None else None,
            dict(restored["meta"]),
        )

    def _check_fits(self, step: int, item: str, metadata: Any, target: Any) -> None:
        """Compare the stored shapes of `item` (its Orbax `metadata`) with `target` before reading
        any array: a mismatch is named in one line (and no read is left running when the error
        surfaces)."""
        stored, wanted = _shapes(metadata), _shapes(target)
        differ = sorted(p for p in stored.keys() | wanted.keys() if stored.get(p) != wanted.get(p))
        if not differ:
            return
        name = differ[0]
        have, want = stored.get(name), wanted.get(name)
        if have is None:
            problem = f"has no {name}"
        elif want is None:
            problem = f"has {name}, which this run lacks"
        else:
            problem = f"has {name} of shape {have}, this run {want}"
        where = self.directory / str(step)
        if item == "params":
            raise UserError(
                f"checkpoint {where} does not fit this model: it {problem}; set the architecture "
                "to the checkpoint's (its run's config.yaml), or train a changed model under a new run name"
            )
        raise UserError(
            f"checkpoint {where} does not fit this optimizer: it {problem}; to change the "
            "optimizer, start a new run from its weights (--restore PATH with "
            "training.restore_weights_only=true)"
        )

    def close(self) -> None:
        """Wait for pending saves and stop the manager; a failure is recorded in `failures`, not
        raised (closing runs on every way out of a run, an error already on its way included)."""
        self._collect_errors()
        try:
            self._manager.close()
        except Exception as exc:
            self._fail(self._pending, exc)


def _val_loss(metrics: dict[str, Any]) -> float:
    return float(metrics.get("val_loss", math.inf))


def _retention(
    keep_last: int, keep_every: int | None, keep_best: bool
) -> ocp.checkpoint_managers.PreservationPolicy:
    """The checkpoints a save leaves on disk: the newest `keep_last`, every multiple of
    `keep_every`, and (`keep_best`) the one with the lowest recorded validation loss. Orbax's
    own `best_fn` retention would replace the newest-N rotation rather than add to it."""
    policies: list[ocp.checkpoint_managers.PreservationPolicy] = [
        ocp.checkpoint_managers.LatestN(n=keep_last)
    ]
    if keep_every is not None:
        policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every))
    if keep_best:
        # checkpoints without a validation loss rank last (inf): the best is one that has one,
        # unless none has, and then it is the newest, which LatestN keeps anyway
        policies.append(
            ocp.checkpoint_managers.BestN(
                get_metric_fn=_val_loss, reverse=True, n=1, keep_checkpoints_without_metrics=False
            )
        )
    return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


@contextlib.contextmanager
def _absl_level(level: int) -> Iterator[None]:
    logger = logging.getLogger("absl")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _abstract(tree: Any) -> Any:
    def spec(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(spec, tree)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{dotted path: shape} of the arrays in `tree` (arrays, abstract arrays or Orbax metadata);
    paths spelled alike whether a key is an index, a dict key or an attribute."""
    return {
        jax.tree_util.keystr(path, simple=True, separator="."): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(leaf, "shape")
    }


def key_data(key: jax.Array) -> list[int]:
    """A typed PRNG key as plain integers (lossless, JSON-friendly)."""
    return np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel().tolist()


def checkpoint_dir_of(path: str | Path) -> Path:
    """The checkpoint folder for a run folder, a checkpoint folder, or one step inside it.

    A run folder `ROOT/runs/P/G/NAME` maps to `ROOT/checkpoints/P/G/NAME`.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise UserError(f"no such run or checkpoint: {path}")
    steps = [d for d in _listdir(path) if d.isdigit() and (path / d).is_dir()]
    candidate = twin_folder(path, "checkpoints")
    if path.parts[-4:-3] == ("runs",) and not steps and candidate and candidate.is_dir():
        return candidate
    return path


def twin_folder(path: Path, kind: str) -> Path | None:
    """The same run's folder of `kind` ("runs" or "checkpoints") for a run's folder of either:
    ROOT/runs/P/G/NAME and ROOT/checkpoints/P/G/NAME name each other, whatever P, G and NAME
    are called. None for a path outside that layout."""
    parts = path.parts
    if len(parts) <= 4 or parts[-4] not in ("runs", "checkpoints"):
        return None
    return Path(*parts[:-4], kind, *parts[-3:])


def _listdir(path: Path) -> list[str]:
    return [p.name for p in path.iterdir()] if path.is_dir() else []


def complete_steps(directory: Path) -> list[int]:
    """The steps of the complete checkpoints in a checkpoint folder, oldest first."""
    return sorted(
        int(d) for d in _listdir(directory) if d.isdigit() and (directory / d / "meta").exists()
    )


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    written: datetime  # when its write completed (UTC)
    size: int  # bytes, all its files together


def stored_checkpoints(directory: Path) -> list[StoredCheckpoint]:
    """The complete checkpoints of a checkpoint folder, oldest first."""
    name_format = ocp.path.step.standard_name_format()
    found = []
    for step in complete_steps(directory):
        folder = directory / str(step)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        written = name_format.find_step(directory, step).commit_timestamp
        found.append(StoredCheckpoint(step, written, size))
    return found


def locate(path: str | Path) -> tuple[Path, int]:
    """(checkpoint folder, step) for a run folder, checkpoint folder or step folder."""
    path = checkpoint_dir_of(path)
    if path.name.isdigit() and (path / "meta").exists():
        return path.parent, int(path.name)
    steps = complete_steps(path)
    if not steps:
        raise UserError(
            f"no complete checkpoint under {path}; give a run folder or a checkpoint folder"
        )
    return path, steps[-1]
