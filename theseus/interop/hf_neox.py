"""GPT-NeoX / Pythia (`model_type: gpt_neox`, GPTNeoXForCausalLM): LayerNorm, a parallel
residual (`use_parallel_residual`), RoPE on a fraction of each head (`rotary_pct`, 0.25 by
default), erf GELU, biases everywhere, q/k/v fused per head, an untied `embed_out` head."""

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
    heads_out,
    layernorm_unexpressed,
    need,
    one,
    refuse,
    rope,
    transpose,
)
from theseus.model.models import GPT2, TransformerConfig

MODEL_TYPES = ("gpt_neox",)

_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


def canonical(name: str) -> str:
    """transformers 5 calls the head `lm_head`; checkpoints (and its save_pretrained) `embed_out`."""
    return "embed_out.weight" if name == "lm_head.weight" else name


def read(hf: HFConfig, path: Path, dtype: str) -> TransformerConfig:
    d, n = need(hf, "hidden_size", path), need(hf, "num_attention_heads", path)
    if not hf.get("attention_bias", True):
        raise refuse(path, "attention_bias", False, "GPT-NeoX's MLP keeps its biases")
    theta, fraction = rope(hf, path, fraction=0.25)
    if int(d // n * fraction) % 2 or int(d // n * fraction) == 0:
        raise refuse(
            path, "rotary_pct", fraction, f"rotates {int(d // n * fraction)} dims; needs even"
        )
    return dataclasses.replace(
        GPT2,
        n_layers=need(hf, "num_hidden_layers", path),
        n_heads=n,
        d_model=d,
        d_ff=need(hf, "intermediate_size", path),
        block_size=need(hf, "max_position_embeddings", path),
        vocab_size=need(hf, "vocab_size", path),
        positions="rope",
        rope_theta=theta,
        rope_fraction=fraction,
        mlp=act(hf, path, "hidden_act", _ACTIVATIONS),
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        parallel_residual=hf.get("use_parallel_residual", True),
        dtype=dtype,
    )


def rules(c: TransformerConfig, model_type: str) -> Iterator[Rule]:
    n, h, d = c.n_heads, c.head_dim, c.d_model

    # query_key_value's output is laid out per head as [n_heads, 3 (q, k, v), head_dim]
    def qkv_weight(w: Any) -> tuple[Any, ...]:
        w = w.reshape(n, 3, h, d)
        return tuple(np.ascontiguousarray(w[:, j].transpose(2, 0, 1)) for j in range(3))

    def qkv_weight_back(*parts: Any) -> Any:
        return np.stack([p.transpose(1, 2, 0) for p in parts], axis=1).reshape(3 * n * h, d)

    def qkv_bias(w: Any) -> tuple[Any, ...]:
        return tuple(w.reshape(n, 3, h)[:, j] for j in range(3))

    def qkv_bias_back(*parts: Any) -> Any:
        return np.stack(parts, axis=1).reshape(-1)

    g = "gpt_neox."
    yield one("embed.weight", g + "embed_in.weight")
    for i in range(c.n_layers):
        p, b = f"blocks.{i}.", f"{g}layers.{i}."
        for ours, theirs in (
            ("attn_norm", "input_layernorm"),
            ("mlp_norm", "post_attention_layernorm"),
        ):
            yield one(p + ours + ".scale", b + theirs + ".weight")
            yield one(p + ours + ".bias", b + theirs + ".bias")
        fused = b + "attention.query_key_value."
        yield Rule(
            tuple(p + f"attn.{x}" for x in "qkv"), fused + "weight", qkv_weight, qkv_weight_back
        )
        yield Rule(
            tuple(p + f"attn.{x}_bias" for x in "qkv"), fused + "bias", qkv_bias, qkv_bias_back
        )
        yield one(p + "attn.o", b + "attention.dense.weight", *heads_out(n, h))
        yield one(p + "attn.o_bias", b + "attention.dense.bias")
        for ours, theirs in (("fc", "dense_h_to_4h"), ("down", "dense_4h_to_h")):
            yield one(p + f"mlp.{ours}.kernel", b + f"mlp.{theirs}.weight", transpose, transpose)
            yield one(p + f"mlp.{ours}.bias", b + f"mlp.{theirs}.bias")
    yield one("final_norm.scale", g + "final_layer_norm.weight")
    yield one("final_norm.bias", g + "final_layer_norm.bias")
    if not c.tie_embeddings:
        yield one("lm_head.kernel", "embed_out.weight", transpose, transpose)


def unexpressed(c: TransformerConfig) -> list[str]:
    """What of `c` GPTNeoXForCausalLM cannot hold (empty: it exports as gpt_neox)."""
    return layernorm_unexpressed(c)


def write(c: TransformerConfig, model_type: str) -> HFConfig:
    return {
        "model_type": "gpt_neox",
        "architectures": ["GPTNeoXForCausalLM"],
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "hidden_size": c.d_model,
        "intermediate_size": c.hidden,
        "max_position_embeddings": c.block_size,
        "layer_norm_eps": c.norm_eps,
        "hidden_act": "gelu" if c.mlp == "gelu_exact" else "gelu_new",
        "use_parallel_residual": c.parallel_residual,
        "attention_bias": True,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": c.rope_theta,
            "partial_rotary_factor": c.rope_fraction,
        },
        # the keys transformers 4 reads
        "rotary_pct": c.rope_fraction,
        "rotary_emb_base": c.rope_theta,
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }
