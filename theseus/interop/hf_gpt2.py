"""GPT-2 (`model_type: gpt2`, GPT2LMHeadModel) <-> the GPT2 preset: learned positions,
LayerNorm, GELU, biases everywhere, q/k/v in one Conv1D."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from theseus.interop.hf_common import (
    HFConfig,
    Rule,
    act,
    layernorm_unexpressed,
    need,
    one,
    refuse,
    transpose,
)
from theseus.model.models import GPT2, TransformerConfig

MODEL_TYPES = ("gpt2",)

# GPT-2's Conv1D activations: tanh-approximated GELU ("gelu_new") first, as the default
_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}


def canonical(name: str) -> str:
    """The original GPT-2 checkpoints name tensors without the `transformer.` prefix."""
    return (
        name
        if name.startswith("transformer.") or name == "lm_head.weight"
        else "transformer." + name
    )


def read(hf: HFConfig, path: Path, dtype: str) -> TransformerConfig:
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise refuse(path, "scale_attn_by_inverse_layer_idx", True, "attention scaled by 1/sqrt(d)")
    if not hf.get("scale_attn_weights", True):
        raise refuse(path, "scale_attn_weights", False, "attention scaled by 1/sqrt(d)")
    return dataclasses.replace(
        GPT2,
        n_layers=need(hf, "n_layer", path),
        n_heads=need(hf, "n_head", path),
        d_model=need(hf, "n_embd", path),
        d_ff=hf.get("n_inner"),
        block_size=need(hf, "n_positions", path),
        vocab_size=need(hf, "vocab_size", path),
        mlp=act(hf, path, "activation_function", _ACTIVATIONS),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        dtype=dtype,
    )


def rules(c: TransformerConfig, model_type: str) -> Iterator[Rule]:
    n, h, d = c.n_heads, c.head_dim, c.d_model

    def thirds(w: Any) -> tuple[Any, ...]:
        """q, k and v out of the fused c_attn (Conv1D: [d, 3d], in x out), side by side."""
        return tuple(w[..., j * d : (j + 1) * d].reshape(*w.shape[:-1], n, h) for j in range(3))

    def joined(*parts: Any) -> Any:
        return np.concatenate([p.reshape(*p.shape[:-2], d) for p in parts], axis=-1)

    t = "transformer."
    yield one("embed.weight", t + "wte.weight")
    yield one("position_embed.weight", t + "wpe.weight")
    for i in range(c.n_layers):
        p, b = f"blocks.{i}.", f"{t}h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            yield one(p + ours + ".scale", b + theirs + ".weight")
            yield one(p + ours + ".bias", b + theirs + ".bias")
        yield Rule(tuple(p + f"attn.{x}" for x in "qkv"), b + "attn.c_attn.weight", thirds, joined)
        yield Rule(
            tuple(p + f"attn.{x}_bias" for x in "qkv"), b + "attn.c_attn.bias", thirds, joined
        )
        yield one(
            p + "attn.o",
            b + "attn.c_proj.weight",
            lambda w: w.reshape(n, h, d),
            lambda x: x.reshape(d, d),
        )
        yield one(p + "attn.o_bias", b + "attn.c_proj.bias")
        yield one(p + "mlp.fc.kernel", b + "mlp.c_fc.weight")
        yield one(p + "mlp.fc.bias", b + "mlp.c_fc.bias")
        yield one(p + "mlp.down.kernel", b + "mlp.c_proj.weight")
        yield one(p + "mlp.down.bias", b + "mlp.c_proj.bias")
    yield one("final_norm.scale", t + "ln_f.weight")
    yield one("final_norm.bias", t + "ln_f.bias")
    if not c.tie_embeddings:
        yield one("lm_head.kernel", "lm_head.weight", transpose, transpose)


def unexpressed(c: TransformerConfig) -> list[str]:
    """What of `c` GPT2LMHeadModel cannot hold (empty: it exports as gpt2)."""
    return layernorm_unexpressed(c) + (["parallel_residual"] if c.parallel_residual else [])


def write(c: TransformerConfig, model_type: str) -> HFConfig:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_embd": c.d_model,
        "n_inner": c.hidden,
        "n_positions": c.block_size,
        "layer_norm_epsilon": c.norm_eps,
        "activation_function": "gelu_new" if c.mlp == "gelu" else "gelu",
        "tie_word_embeddings": c.tie_embeddings,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }
