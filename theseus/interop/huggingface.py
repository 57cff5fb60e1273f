"""Hugging Face checkpoints (`config.json` + `*.safetensors`) in and out of a `Transformer`.

Supported layouts: `gpt2` (GPT2LMHeadModel) <-> the GPT-2 preset, and `llama` (LlamaForCausalLM,
also Mistral-style configs without sliding windows or RoPE scaling) <-> the Llama one. Needs the `hf`
dependency group for `safetensors`; torch and transformers are not imported here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from theseus.errors import UserError
from theseus.model.models import GPT2, LLAMA, Transformer

# buffers some checkpoints carry that are not parameters
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")

Array = np.ndarray
Rule = tuple[str, str, Callable[[Array], Array], Callable[[Array], Array]]
"""(theseus parameter path, HF tensor name, HF -> theseus, theseus -> HF)."""


def _safetensors() -> Any:
    try:
        import safetensors.flax  # reads bfloat16, which plain numpy cannot hold
        import safetensors.numpy
    except ImportError:
        raise UserError(
            "Hugging Face interop needs safetensors: uv sync --group all --group cpu --group hf"
        ) from None
    return safetensors


def _same(x: Array) -> Array:
    return x


def _transpose(x: Array) -> Array:
    return np.ascontiguousarray(x.T)


def _heads_in(n: int, h: int) -> Callable[[Array], Array]:
    """torch Linear [n*h, d] -> kernel [d, n, h]."""
    return lambda w: np.ascontiguousarray(w.T.reshape(-1, n, h))


def _heads_in_back(x: Array) -> Array:
    return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)


def _gpt2_rules(c: Any) -> Iterator[Rule]:
    n, h, d = c.n_heads, c.d_model // c.n_heads, c.d_model

    def third(j: int, w: Array) -> Array:
        """q, k or v (j = 0, 1, 2) out of the fused c_attn, which holds them side by side."""
        return w[..., j * d : (j + 1) * d]

    yield "embed.weight", "wte.weight", _same, _same
    yield "position_embed.weight", "wpe.weight", _same, _same
    for i in range(c.n_layers):
        p, b = f"blocks.{i}.", f"h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            yield p + ours + ".scale", b + theirs + ".weight", _same, _same
            yield p + ours + ".bias", b + theirs + ".bias", _same, _same
        # c_attn is one [d, 3d] Conv1D (in x out) holding q, k and v side by side
        for j, name in enumerate("qkv"):
            yield (
                p + f"attn.{name}",
                b + "attn.c_attn.weight",
                lambda w, j=j: third(j, w).reshape(d, n, h),
                lambda x: x.reshape(d, d),
            )
            yield (
                p + f"attn.{name}_bias",
                b + "attn.c_attn.bias",
                lambda w, j=j: third(j, w).reshape(n, h),
                lambda x: x.reshape(d),
            )
        yield (
            p + "attn.o",
            b + "attn.c_proj.weight",
            lambda w: w.reshape(n, h, d),
            lambda x: x.reshape(d, d),
        )
        yield p + "attn.o_bias", b + "attn.c_proj.bias", _same, _same
        yield p + "mlp.fc.kernel", b + "mlp.c_fc.weight", _same, _same
        yield p + "mlp.fc.bias", b + "mlp.c_fc.bias", _same, _same
        yield p + "mlp.down.kernel", b + "mlp.c_proj.weight", _same, _same
        yield p + "mlp.down.bias", b + "mlp.c_proj.bias", _same, _same
    yield "final_norm.scale", "ln_f.weight", _same, _same
    yield "final_norm.bias", "ln_f.bias", _same, _same
    if not c.tie_embeddings:
        yield "lm_head.kernel", "lm_head.weight", _transpose, _transpose


def _llama_rules(c: Any) -> Iterator[Rule]:
    n, k, h, d = c.n_heads, c.kv_heads, c.d_model // c.n_heads, c.d_model
    yield "embed.weight", "model.embed_tokens.weight", _same, _same
    for i in range(c.n_layers):
        p, b = f"blocks.{i}.", f"model.layers.{i}."
        yield p + "attn_norm.scale", b + "input_layernorm.weight", _same, _same
        yield p + "mlp_norm.scale", b + "post_attention_layernorm.weight", _same, _same
        for name, heads in (("q", n), ("k", k), ("v", k)):
            yield (
                p + f"attn.{name}",
                b + f"self_attn.{name}_proj.weight",
                _heads_in(heads, h),
                _heads_in_back,
            )
            if c.bias:
                yield (
                    p + f"attn.{name}_bias",
                    b + f"self_attn.{name}_proj.bias",
                    lambda w, heads=heads: w.reshape(heads, h),
                    lambda x: x.reshape(-1),
                )
        yield (
            p + "attn.o",
            b + "self_attn.o_proj.weight",
            lambda w: np.ascontiguousarray(w.T.reshape(n, h, d)),
            lambda x: np.ascontiguousarray(x.reshape(n * h, d).T),
        )
        if c.bias:
            yield p + "attn.o_bias", b + "self_attn.o_proj.bias", _same, _same
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            yield p + f"mlp.{ours}.kernel", b + f"mlp.{theirs}.weight", _transpose, _transpose
            if c.bias:
                yield p + f"mlp.{ours}.bias", b + f"mlp.{theirs}.bias", _same, _same
    yield "final_norm.scale", "model.norm.weight", _same, _same
    if not c.tie_embeddings:
        yield "lm_head.kernel", "lm_head.weight", _transpose, _transpose


# Configs ------------------------------------------------------------------------------------------


def _need(hf: dict[str, Any], key: str, path: Path) -> Any:
    if key not in hf:
        raise UserError(
            f"{path}/config.json has no {key!r}; is this a complete Hugging Face model folder?"
        )
    return hf[key]


def _gpt2_config(hf: dict[str, Any], path: Path, dtype: str) -> Any:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(
            f"{path}: activation_function {act!r} is not supported (GPT uses tanh-approximated GELU)"
        )
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise UserError(f"{path}: non-standard GPT-2 attention scaling is not supported")
    return dataclasses.replace(
        GPT2,
        n_layers=_need(hf, "n_layer", path),
        n_heads=_need(hf, "n_head", path),
        d_model=_need(hf, "n_embd", path),
        d_ff=hf.get("n_inner"),
        block_size=_need(hf, "n_positions", path),
        vocab_size=_need(hf, "vocab_size", path),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dtype=dtype,
    )


def _rope_theta(hf: dict[str, Any], path: Path) -> float:
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise UserError(f"{path}: RoPE scaling {kind!r} is not supported (only plain RoPE)")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _llama_config(hf: dict[str, Any], path: Path, dtype: str) -> Any:
    d, n = _need(hf, "hidden_size", path), _need(hf, "num_attention_heads", path)
    if hf.get("head_dim") not in (None, d // n):
        raise UserError(
            f"{path}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads is not supported"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(
            f"{path}: hidden_act {hf['hidden_act']!r} is not supported (Llama uses silu)"
        )
    if hf.get("sliding_window"):
        raise UserError(f"{path}: sliding-window attention is not supported")
    bias = bool(hf.get("attention_bias", False))
    if bool(hf.get("mlp_bias", False)) != bias:
        raise UserError(
            f"{path}: attention_bias != mlp_bias is not supported (theseus has one bias switch)"
        )
    return dataclasses.replace(
        LLAMA,
        n_layers=_need(hf, "num_hidden_layers", path),
        n_heads=n,
        n_kv_heads=hf.get("num_key_value_heads") or n,
        d_model=d,
        d_ff=_need(hf, "intermediate_size", path),
        block_size=_need(hf, "max_position_embeddings", path),
        vocab_size=_need(hf, "vocab_size", path),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf, path),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        bias=bias,
        dtype=dtype,
    )


_LAYOUTS = {"gpt2": (_gpt2_config, _gpt2_rules), "llama": (_llama_config, _llama_rules)}
_LAYOUTS["mistral"] = _LAYOUTS["llama"]


# Import / export ----------------------------------------------------------------------------------


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


def import_hf(path: str | Path, *, dtype: str = "float32") -> Transformer:
    """Build a `Transformer` (GPT-2 or Llama layout) holding the weights of a local Hugging Face model folder.

    `dtype` is the compute dtype of the result; parameters stay float32.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model folder (no config.json)")
    hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
    kind = hf.get("model_type")
    if kind not in _LAYOUTS:
        raise UserError(
            f"{path}: model_type {kind!r} is not supported; supported: {', '.join(_LAYOUTS)}"
        )
    make_config, rules = _LAYOUTS[kind]
    config = make_config(hf, path, dtype)
    tensors = {
        name.removeprefix("transformer."): value
        for name, value in _read_tensors(path).items()
        if not name.endswith(_IGNORED_SUFFIXES)
    }
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    variables = _variables(model)
    used = set()
    for ours, theirs, to_ours, _ in rules(config):
        if theirs not in tensors:
            raise UserError(f"{path}: tensor {theirs!r} is missing from the safetensors files")
        value = to_ours(np.asarray(tensors[theirs], dtype=np.float32))
        target = variables.pop(ours)
        if value.shape != target.shape:
            raise UserError(
                f"{path}: {theirs} has shape {value.shape}, expected {target.shape} for {ours}"
            )
        target.set_value(jnp.asarray(value, dtype=target.dtype))
        used.add(theirs)
    unused = sorted(set(tensors) - used)
    if unused or variables:
        raise UserError(
            f"{path}: tensors not understood: {', '.join(unused[:5]) or '-'}; unset: {', '.join(list(variables)[:5]) or '-'}"
        )
    return model


def _layout_of(model: Transformer) -> str:
    c = model.config
    if (
        (c.positions, c.norm, c.mlp) == ("learned", "layernorm", "gelu")
        and c.bias
        and c.kv_heads == c.n_heads
    ):
        return "gpt2"
    if (c.positions, c.norm, c.mlp) == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    raise UserError(
        f"cannot export positions={c.positions}, norm={c.norm}, mlp={c.mlp}, bias={c.bias}: Hugging Face "
        "export needs the GPT-2 layout (learned, layernorm, gelu, biases) or the Llama one (rope, rmsnorm, swiglu)"
    )


def _hf_config(layout: str, c: Any, eot_id: int | None) -> dict[str, Any]:
    tokens = {} if eot_id is None else {"bos_token_id": eot_id, "eos_token_id": eot_id}
    if layout == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "n_layer": c.n_layers,
            "n_head": c.n_heads,
            "n_embd": c.d_model,
            "n_inner": c.hidden,
            "n_positions": c.block_size,
            "vocab_size": c.vocab_used or c.vocab_size,
            "layer_norm_epsilon": c.norm_eps,
            "activation_function": "gelu_new",
            "tie_word_embeddings": c.tie_embeddings,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            **tokens,
        }
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "hidden_size": c.d_model,
        "head_dim": c.d_model // c.n_heads,
        "intermediate_size": c.hidden,
        "max_position_embeddings": c.block_size,
        "vocab_size": c.vocab_used or c.vocab_size,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "hidden_act": "silu",
        "attention_bias": c.bias,
        "mlp_bias": c.bias,
        "tie_word_embeddings": c.tie_embeddings,
        **tokens,
    }


def export_hf(model: Transformer, path: str | Path, *, eot_id: int | None = None) -> Path:
    """Write `model` as a Hugging Face folder (`config.json`, `model.safetensors`, float32)."""
    layout = _layout_of(model)
    c = model.config
    rules = _gpt2_rules if layout == "gpt2" else _llama_rules
    variables = _variables(model)
    tensors: dict[str, Array] = {}
    fused: dict[str, list[Array]] = {}
    for ours, theirs, _, to_theirs in rules(c):
        value = to_theirs(np.asarray(variables[ours][...], dtype=np.float32))
        if ".c_attn." in theirs:  # q, k, v come one by one and are concatenated
            fused.setdefault(theirs, []).append(value)
            continue
        tensors[
            ("transformer." if layout == "gpt2" and theirs != "lm_head.weight" else "") + theirs
        ] = value
    for name, parts in fused.items():
        tensors["transformer." + name] = np.concatenate(parts, axis=-1)
    if c.vocab_used and c.vocab_used < c.vocab_size:
        # the padding ids have no probability here; a Hugging Face model has no such mask, so
        # it gets the real ids only (and the same distribution over them)
        for name in ("transformer.wte.weight", "model.embed_tokens.weight", "lm_head.weight"):
            if name in tensors:
                tensors[name] = tensors[name][: c.vocab_used]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    _safetensors().numpy.save_file(
        tensors, str(path / "model.safetensors"), metadata={"format": "pt"}
    )
    (path / "config.json").write_text(
        json.dumps(_hf_config(layout, c, eot_id), indent=2) + "\n", encoding="utf-8"
    )
    return path
