"""Rebuilding a trained model (and its tokenizer) from a run or checkpoint folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from omegaconf import OmegaConf

from theseus.checkpoint import Checkpointer, locate
from theseus.data.store import MANIFEST
from theseus.data.tokenizers import load_tokenizer
from theseus.errors import UserError
from theseus.model import lora
from theseus.parallel.mesh import Layout
from theseus.parallel.rules import abstract_on_mesh
from theseus.registry import JOBS


def trained_context(model: Any, cfg: Any) -> int:
    """The sequence length a loaded model was trained on (training.seq_len, else its block size)."""
    return int(OmegaConf.select(cfg, "training.seq_len") or model.config.block_size)


def load_model(
    run_or_checkpoint_path: str | Path, root: str | Path | None = None
) -> tuple[Any, Any, dict[str, Any] | None]:
    """Build a trained model from a run or checkpoint folder: `(model, cfg, tokenizer identity)`.

    `root`, when given, resolves a relative path against the output folder. A LoRA run's model
    is its base (`architecture.init_from`, checked to be the one it trained on) with the
    checkpoint's adapters attached: `theseus.model.lora.merge(model)` folds them in (export);
    `cfg.finetune.lora` and the checkpoint's `lora` and `base` records describe them.
    """
    model, meta = _load(run_or_checkpoint_path, root)
    return model, _config(meta), meta.get("tokenizer")


def load_trained(run_or_checkpoint_path: str | Path) -> tuple[Any, Any, Any]:
    """`(model, cfg, tokenizer)` of a run or checkpoint folder. A Hugging Face tokenizer file that
    is gone since training is read from the copy its training store keeps."""
    model, meta = _load(run_or_checkpoint_path, None)
    identity = meta.get("tokenizer")
    if not identity:
        raise UserError(
            f"{run_or_checkpoint_path}: the checkpoint does not record its tokenizer, so text "
            "cannot be encoded for it"
        )
    cfg = _config(meta)
    return model, cfg, load_tokenizer(identity, fallback=_store_tokenizer_copy(meta))


def _store_tokenizer_copy(meta: dict[str, Any]) -> Path | None:
    """Where the first training store keeps its copy of the tokenizer file, if the run had one."""
    store = _training_store(meta)
    return None if store is None else store / "tokenizer.json"


def _training_store(meta: dict[str, Any]) -> Path | None:
    """The folder of a run's first training store (it may be gone since)."""
    root = meta.get("spec", {}).get("root")
    datasets = meta.get("config", {}).get("training", {}).get("dataset") or []
    if not root or not datasets or not datasets[0].get("name"):
        return None
    return Path(root) / "data" / datasets[0]["name"]


def training_store_settings(run_or_checkpoint_path: str | Path) -> dict[str, Any] | None:
    """The settings its manifest records of the first training store of a run or checkpoint
    folder (its chat template, say), or None when the store is gone."""
    directory, step = locate(Path(run_or_checkpoint_path))
    checkpointer = Checkpointer(directory, read_only=True, asynchronous=False)
    try:
        store = _training_store(checkpointer.meta(step))
    finally:
        checkpointer.close()
    manifest = None if store is None else store / MANIFEST
    if manifest is None or not manifest.is_file():
        return None
    settings = json.loads(manifest.read_text(encoding="utf-8")).get("settings")
    return settings if isinstance(settings, dict) else None


def _config(meta: dict[str, Any]) -> Any:
    return OmegaConf.create(meta["config"])


def _load(
    run_or_checkpoint_path: str | Path, root: str | Path | None
) -> tuple[Any, dict[str, Any]]:
    path = Path(run_or_checkpoint_path)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    directory, step = locate(path)
    checkpointer = Checkpointer(directory, read_only=True, asynchronous=False)
    try:
        meta = checkpointer.meta(step)
        trainer = JOBS[meta["job"]]
        create = trainer.model_factory(
            _config(meta),
            vocab_size=int(meta["vocab_size"]),
            vocab_used=meta.get("vocab_used"),  # absent: written before padding was masked
            seed=int(meta["seed"]),
        )
        graphdef, params, rest = abstract_on_mesh(create, Layout(1, 1, 1).mesh(jax.devices()[:1]))
        if meta.get("lora"):  # the checkpoint holds the adapters; the base is init_from's
            adapters, base = nnx.split_state(params, lora.Adapted, ...)
            adapters, _, _ = checkpointer.restore(step, adapters, None)
            where = f"checkpoint {directory}/{step}"
            base = trainer.base_weights(_config(meta), meta, base, where)
            model = nnx.merge(graphdef, adapters, base, rest)
        else:
            params, _, _ = checkpointer.restore(step, params, None)
            model = nnx.merge(graphdef, params, rest)
    finally:
        checkpointer.close()
    return model, meta
