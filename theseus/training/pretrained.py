"""Starting a run from pretrained weights: `architecture.init_from`, a Hugging Face model folder
(`config.json` + `*.safetensors`) or a hub id (`org/name`, downloaded when the hub answers).

The folder fixes the architecture (every `architecture.*` value but the run's own: dropout, compute
and parameter dtypes, attention kernel) and the weights. A run records the folder it started from
and a fingerprint of it (`Pretrained.fingerprint`), so that a LoRA run, whose checkpoints hold only
its adapters, refuses to resume on another base.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from theseus.config import field
from theseus.config.schema import key_of
from theseus.errors import UserError, first_line

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# what a run takes from the folder; the rest of a repository (other frameworks' weights) stays
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*"]
# architecture settings that are the run's choice, not the checkpoint's
RUN_OWN = ("dropout", "dtype", "param_dtype", "attention")
SAMPLES, SAMPLE_BYTES = 16, 4096


@dataclass
class InitConfig:
    """Where the model's architecture and weights come from."""

    init_from: str | None = field(
        "architecture/init_from",
        default=None,
        help="a Hugging Face model folder, or hub id (org/name), whose architecture and weights "
        "the run starts from; null = random initialization",
    )


def resolve_folder(init_from: str) -> Path:
    """The local folder of `init_from`: a path, or a hub id's snapshot (the local cache first;
    downloaded when the hub answers, with HF_TOKEN from the environment, if set)."""
    path = Path(init_from).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"architecture.init_from={init_from} is a file; give the model's folder "
                "(config.json + *.safetensors)"
            )
        return path.resolve()
    if not HUB_ID.fullmatch(init_from):
        raise UserError(
            f"architecture.init_from={init_from}: no such folder, nor a hub id (org/name)"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(
            f"architecture.init_from={init_from} (a hub id) needs huggingface_hub: "
            "uv sync --group hf, or give a local folder"
        ) from None
    token = os.environ.get("HF_TOKEN") or False  # the environment's token only (False: none)
    try:
        cached = snapshot_download(
            init_from, allow_patterns=HUB_FILES, local_files_only=True, token=token
        )
        return Path(cached)
    except Exception:  # not in the local cache
        pass
    from theseus.data.hub import require_hub

    require_hub(
        f"architecture.init_from={init_from}",
        "download the model where the hub is reachable and set architecture.init_from to its folder",
    )
    try:
        return Path(snapshot_download(init_from, allow_patterns=HUB_FILES, token=token))
    except Exception as exc:
        raise UserError(
            f"architecture.init_from={init_from}: the download failed ({first_line(exc)}); "
            "check the id (and HF_TOKEN for a gated model)"
        ) from None


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files, sorted."""
    return sorted(folder.glob("*.safetensors"))


def fingerprint(folder: Path) -> str:
    """sha256 of what defines the weights: config.json and the safetensors index, and for each
    safetensors file its name, size, header (names, dtypes, shapes, offsets) and SAMPLES chunks
    spread over its data (a changed weight moves them: a fine-tuned copy, another checkpoint),
    without reading gigabytes."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        file = folder / name
        digest.update(name.encode() + b"\0" + (file.read_bytes() if file.is_file() else b""))
    for file in weight_files(folder):
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as f:
            head = f.read(8)
            header = int.from_bytes(head, "little") if len(head) == 8 else 0
            digest.update(head + f.read(min(header, size)))
            for k in range(SAMPLES):
                f.seek(k * max(0, size - SAMPLE_BYTES) // max(1, SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _folder_architecture(folder: Path, hf: dict[str, Any], dtype: str) -> Any:
    """The TransformerConfig that `import_hf` builds for `folder`, without building the model
    (JAX must not start before the run has set up its devices)."""
    from theseus.interop.huggingface import hf_config_to_transformer

    return hf_config_to_transformer(hf, folder, dtype)


@dataclass(frozen=True)
class Pretrained:
    """The folder a run starts from, its fingerprint, and the architecture it fixes."""

    source: str
    """`architecture.init_from`: a hub id, or a local folder's absolute path."""
    folder: Path
    model_type: str
    fingerprint: str
    architecture: Any
    """The run's architecture: the folder's, with the run's own settings (RUN_OWN) kept."""
    replaced: tuple[tuple[str, Any, Any], ...]
    """(key, the config's value, the folder's) for each architecture value the folder changed."""

    @classmethod
    def open(cls, init_from: str, asked: Any) -> Pretrained:
        """The folder of `init_from`; `asked` is the config's architecture."""
        folder = resolve_folder(init_from)
        config = folder / "config.json"
        if not config.is_file():
            raise UserError(
                f"architecture.init_from={init_from}: {folder} is not a Hugging Face model "
                "folder (no config.json)"
            )
        try:
            hf = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{config} is not valid JSON ({first_line(exc)})") from None
        if not isinstance(hf, dict):
            raise UserError(f"{config} is not a JSON object")
        found = _folder_architecture(folder, hf, asked.dtype)
        if not weight_files(folder):
            raise UserError(
                f"architecture.init_from={init_from}: no *.safetensors in {folder}; re-save "
                "the model with save_pretrained(safe_serialization=True)"
            )
        own = {name: getattr(asked, name) for name in RUN_OWN if hasattr(asked, name)}
        # every id of the folder's embedding is the model's: none is padding
        found = dataclasses.replace(found, **own, vocab_used=found.vocab_size)
        replaced = tuple(
            (key_of(f), getattr(asked, f.name), getattr(found, f.name))
            for f in dataclasses.fields(found)
            if getattr(asked, f.name, None) != getattr(found, f.name)
        )
        # a local folder by its absolute path: the run's config then names it from anywhere
        source = str(folder) if Path(init_from).expanduser().exists() else init_from
        return cls(source, folder, str(hf["model_type"]), fingerprint(folder), found, replaced)

    def record(self) -> dict[str, str]:
        """What a checkpoint says of its base."""
        return {
            "init_from": self.source,
            "model_type": self.model_type,
            "fingerprint": self.fingerprint,
        }

    def weights(self, abstract: Any) -> Any:
        """The folder's weights in the shapes, dtypes and shardings of `abstract` (the model's
        base parameters, as `jax.ShapeDtypeStruct`s)."""
        import jax
        from flax import nnx

        from theseus.interop import import_hf

        model = import_hf(self.folder, dtype=self.architecture.dtype)
        found = {
            jax.tree_util.keystr(path): value
            for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
        }

        def place(path: Any, target: Any) -> Any:
            value = found.get(jax.tree_util.keystr(path))
            if value is None or value.shape != target.shape:
                raise UserError(
                    f"architecture.init_from={self.source}: no weight of shape {target.shape} "
                    f"for {jax.tree_util.keystr(path, simple=True, separator='.')}"
                )
            return jax.device_put(value.astype(target.dtype), target.sharding)

        return jax.tree_util.tree_map_with_path(place, abstract)

    def applied_to(self, cfg: Any) -> Any:
        """`cfg` (a job's config tree) with the architecture values the folder fixes (and the
        folder's absolute path): the run's config.yaml and checkpoints then describe the model
        it trains."""
        from omegaconf import OmegaConf

        section = OmegaConf.select(cfg, "architecture", default=None)
        known = set(section.keys()) if section is not None else set()
        for key, _, value in (*self.replaced, ("architecture.init_from", None, self.source)):
            if key.removeprefix("architecture.") in known:
                OmegaConf.update(cfg, key, value, merge=False)
        return cfg

    def describe(self) -> list[str]:
        """Start-report lines: the folder, and the architecture values it replaced."""
        lines = [
            f"weights from architecture.init_from={self.source} ({self.model_type}; "
            f"base fingerprint {self.fingerprint[:12]})"
        ]
        if self.replaced:
            changes = ", ".join(
                f"{key.removeprefix('architecture.')} {_shown(old)} -> {_shown(new)}"
                for key, old, new in self.replaced
            )
            lines.append(
                f"architecture fixed by init_from (the config's values replaced): {changes}"
            )
        return lines


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def check_base(meta: dict[str, Any], pretrained: Pretrained | None, where: str) -> None:
    """A LoRA checkpoint's adapters fit only the base they were trained on."""
    theirs = meta.get("base") or {}
    if not theirs.get("fingerprint") or not meta.get("lora"):
        return
    if pretrained is None:
        raise UserError(
            f"{where}: its LoRA adapters were trained on architecture.init_from="
            f"{theirs.get('init_from')}, which this run does not set; set it to that base"
        )
    if theirs["fingerprint"] != pretrained.fingerprint:
        raise UserError(
            f"{where}: its LoRA adapters were trained on base {theirs['fingerprint'][:12]} "
            f"(architecture.init_from={theirs.get('init_from')}), but "
            f"{pretrained.source} is now {pretrained.fingerprint[:12]}; restore that base, or "
            "start a new run"
        )
