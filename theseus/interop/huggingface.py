"""Hugging Face checkpoints (`config.json` + `*.safetensors`) in and out of a `Transformer`, exact.

Supported `model_type`s, each a few switches of one `TransformerConfig` (the rules per family
live in `hf_gpt2.py`, `hf_llama.py` and `hf_neox.py`):

- `gpt2`; `llama`; `mistral` (sliding window); `qwen2` / Qwen2.5 (q/k/v biases, sliding window
  on the last layers); `qwen3` (q/k norms, explicit head width); `gpt_neox` / Pythia (parallel
  residual, partial RoPE, erf GELU, fused per-head q/k/v).

Public functions:

- `import_hf(path, *, dtype="float32") -> Transformer`: a model holding a folder's weights.
- `export_hf(model, path, *, eot_id=None, dtype="float32", max_shard_bytes=5e9) -> Path`: a
  folder `AutoModelForCausalLM.from_pretrained` loads; the `model_type` follows the config.
- `hf_config_to_transformer(hf, path, dtype) -> TransformerConfig`: the architecture of a
  parsed `config.json` (`path` only names the folder in errors); `preset_for_hf(path)` reads it.
- `load_hf_weights(model, path)`: a folder's weights into a model built from that config (for
  a trainer that builds the model on its mesh first).

A `config.json` value theseus cannot build exactly (scaled RoPE, another activation, a bias
pattern it has no switch for) is a one-line `UserError` naming it; so is a config no layout
holds on export. Needs the `hf` dependency group for `safetensors`; torch and transformers are
not imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from theseus.errors import UserError
from theseus.interop import hf_gpt2, hf_llama, hf_neox
from theseus.interop.hf_common import Array, HFConfig
from theseus.model.models import Transformer, TransformerConfig

_FAMILIES: dict[str, ModuleType] = {
    kind: family for family in (hf_gpt2, hf_llama, hf_neox) for kind in family.MODEL_TYPES
}

# buffers some checkpoints carry that are not parameters
_IGNORED_SUFFIXES = (
    ".attn.bias",
    ".attn.masked_bias",
    ".attention.bias",
    ".attention.masked_bias",
    "rotary_emb.inv_freq",
)
_EXPORT_DTYPES = ("float32", "bfloat16", "float16")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")


def _safetensors() -> Any:
    try:
        import safetensors.flax  # reads bfloat16, which plain numpy cannot hold
        import safetensors.numpy
    except ImportError:
        raise UserError(
            "Hugging Face interop needs safetensors: uv sync --group all --group cpu --group hf"
        ) from None
    return safetensors


# Configs ------------------------------------------------------------------------------------------


def _family(hf: HFConfig, path: Path) -> ModuleType:
    kind = hf.get("model_type")
    if kind not in _FAMILIES:
        raise UserError(
            f"{path}: model_type {kind!r} is not supported; supported: {', '.join(_FAMILIES)}"
        )
    return _FAMILIES[kind]


def hf_config_to_transformer(
    hf: HFConfig, path: str | Path = "<config>", dtype: str = "float32"
) -> TransformerConfig:
    """The `TransformerConfig` of a Hugging Face `config.json` (parsed), in compute `dtype`.

    Raises a one-line `UserError` for any value theseus would build differently."""
    config = _family(hf, Path(path)).read(hf, Path(path), dtype)
    config.check()
    return config


def preset_for_hf(path: str | Path, *, dtype: str = "float32") -> TransformerConfig:
    """The `TransformerConfig` of the Hugging Face model folder `path` (its config.json)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model folder (no config.json)")
    hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return hf_config_to_transformer(hf, path, dtype)


def _export_type(c: TransformerConfig) -> str:
    """The model_type whose layout holds `c`, else a UserError saying what none can hold."""
    if c.positions == "learned":
        kind, why = "gpt2", hf_gpt2.unexpressed(c)
    elif c.parallel_residual or c.rope_fraction != 1 or c.norm == "layernorm" or c.mlp != "swiglu":
        kind, why = "gpt_neox", hf_neox.unexpressed(c)
    else:
        kind, why = hf_llama.export_type(c)
    if why:
        raise UserError(
            f"cannot export {', '.join(why)}: the config is nearest Hugging Face's {kind}, which "
            "cannot hold that (theseus writes gpt2, llama, mistral, qwen2, qwen3, gpt_neox)"
        )
    return kind


# Weights ------------------------------------------------------------------------------------------


def _read_tensors(path: Path) -> dict[str, Array]:
    """The model's tensors: the files its index names, else `model.safetensors`, else every
    `*.safetensors` (a repository may also hold other frameworks' copies of the weights)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, AttributeError, TypeError):
            raise UserError(f"{index} is not a safetensors index (no weight_map)") from None
        files = [path / name for name in sorted(names)]
        missing = [file.name for file in files if not file.is_file()]
        if missing:
            raise UserError(
                f"{path} lacks {', '.join(missing)}, named in its {index.name}; download every shard"
            )
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(
            f"no *.safetensors in {path}; re-save the model with save_pretrained(safe_serialization=True)"
        )
    tensors: dict[str, Array] = {}
    for file in files:
        tensors.update(_safetensors().flax.load_file(str(file)))
    return tensors


def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(k) for k in key): variable for key, variable in flat}


def _fit_vocab(ours: str, value: Array, shape: tuple[int, ...], used: int | None) -> Array:
    """A checkpoint's embedding or head, padded with zero rows up to a model whose vocab_size is
    padded for speed; its padding ids (from vocab_used on) get no probability anyway."""
    axis = {"embed.weight": 0, "lm_head.kernel": 1}.get(ours)
    if axis is None or used is None or value.shape[axis] != used or shape[axis] <= used:
        return value
    pad = [(0, 0)] * value.ndim
    pad[axis] = (0, shape[axis] - used)
    return np.pad(value, pad)


def load_hf_weights(model: Transformer, path: str | Path) -> Transformer:
    """Set `model`'s parameters from the Hugging Face folder `path`, whose config.json `model`
    was built from (`preset_for_hf`); the vocabulary may be padded (vocab_used = the folder's)."""
    path = Path(path)
    c = model.config
    hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
    family = _family(hf, path)
    tensors = {
        family.canonical(name): value
        for name, value in _read_tensors(path).items()
        if not name.endswith(_IGNORED_SUFFIXES)
    }
    rules = list(family.rules(c, hf["model_type"]))
    if c.tie_embeddings:  # a tied head is the embedding; a stored copy of it is redundant
        tensors.pop(family.canonical("lm_head.weight"), None)
    variables = _variables(model)
    used = set()
    for rule in rules:
        if rule.theirs not in tensors:
            raise UserError(f"{path}: tensor {rule.theirs!r} is missing from the safetensors files")
        parts = rule.to_ours(np.asarray(tensors[rule.theirs], dtype=np.float32))
        for ours, value in zip(rule.ours, parts, strict=True):
            if ours not in variables:
                raise UserError(
                    f"{path}: the model has no {ours} for {rule.theirs}; build it from the "
                    "folder's config.json (preset_for_hf)"
                )
            target = variables.pop(ours)
            value = _fit_vocab(ours, value, target.shape, c.vocab_used)
            if value.shape != target.shape:
                raise UserError(
                    f"{path}: {rule.theirs} has shape {value.shape}, expected {target.shape} for {ours}"
                )
            target.set_value(jnp.asarray(value, dtype=target.dtype))
        used.add(rule.theirs)
    unused = sorted(set(tensors) - used)
    # adapters (LoRA) are no base parameter a checkpoint holds; they keep their values
    unset = [name for name, v in variables.items() if type(v) is nnx.Param]
    if unused or unset:
        raise UserError(
            f"{path}: tensors not understood: {', '.join(unused[:5]) or '-'}; "
            f"unset: {', '.join(unset[:5]) or '-'}"
        )
    return model


def import_hf(path: str | Path, *, dtype: str = "float32") -> Transformer:
    """Build a `Transformer` holding the weights of a local Hugging Face model folder.

    `dtype` is the compute dtype of the result; parameters stay float32.
    """
    config = preset_for_hf(path, dtype=dtype)
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return load_hf_weights(model, path)


def _write_safetensors(tensors: dict[str, Array], path: Path, max_shard_bytes: int | float) -> None:
    """`model.safetensors`, or shards of at most `max_shard_bytes` (a larger tensor alone)
    named as `save_pretrained` names them, with their `model.safetensors.index.json`."""
    for pattern in _WEIGHT_FILES:  # an earlier export's files would shadow these
        for stale in path.glob(pattern):
            stale.unlink()
    shards: list[list[str]] = [[]]
    size = 0
    for name, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += value.nbytes
    save, meta = _safetensors().numpy.save_file, {"format": "pt"}
    if len(shards) == 1:
        save(tensors, str(path / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save({name: tensors[name] for name in names}, str(path / file), metadata=meta)
        weight_map.update(dict.fromkeys(names, file))
    index = {
        "metadata": {"total_size": sum(v.nbytes for v in tensors.values())},
        "weight_map": weight_map,
    }
    (path / "model.safetensors.index.json").write_text(
        json.dumps(index, indent=2) + "\n", encoding="utf-8"
    )


def export_hf(
    model: Transformer,
    path: str | Path,
    *,
    eot_id: int | None = None,
    dtype: str = "float32",
    max_shard_bytes: int | float = 5 * 10**9,
) -> Path:
    """Write `model` as a Hugging Face folder: `config.json` and its weights in `dtype`
    ("float32", "bfloat16" or "float16"), sharded above `max_shard_bytes` (Hugging Face's 5GB).

    The `model_type` is the one layout that holds the config: learned positions -> gpt2;
    a parallel residual, partial RoPE, LayerNorm or GELU with RoPE -> gpt_neox; q/k norms ->
    qwen3; q/k/v-only biases -> qwen2; a sliding window -> mistral; else llama. Padding ids of
    the vocabulary (from vocab_used on) are left out. LoRA adapters must be merged first."""
    if dtype not in _EXPORT_DTYPES:
        raise UserError(f"export dtype {dtype!r} is not supported; use {', '.join(_EXPORT_DTYPES)}")
    c = model.config
    model_type = _export_type(c)
    family = _FAMILIES[model_type]
    values = {name: np.asarray(v[...], dtype=np.float32) for name, v in _variables(model).items()}
    used = c.vocab_used or c.vocab_size
    # the padding ids have no probability here; a Hugging Face model has no such mask, so it
    # gets the real ids only (and the same distribution over them)
    values["embed.weight"] = values["embed.weight"][:used]
    if "lm_head.kernel" in values:
        values["lm_head.kernel"] = values["lm_head.kernel"][:, :used]
    tensors: dict[str, Array] = {}
    for rule in family.rules(c, model_type):
        joined = rule.to_theirs(*(values.pop(name) for name in rule.ours))
        tensors[rule.theirs] = np.ascontiguousarray(joined.astype(jnp.dtype(dtype)))
    if values:
        raise UserError(
            f"cannot export {', '.join(sorted(values)[:3])}: no Hugging Face tensor holds them; "
            "merge LoRA adapters into the base first (theseus.model.lora.merge)"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_safetensors(tensors, path, max_shard_bytes)
    hf = family.write(c, model_type)
    hf.update(vocab_size=used, torch_dtype=dtype, dtype=dtype)
    if eot_id is not None:
        hf.update(bos_token_id=eot_id, eos_token_id=eot_id)
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    return path
