"""The Llama family: RoPE, RMSNorm, SwiGLU, separate q/k/v/o projections, grouped-query heads.

- `llama` (LlamaForCausalLM): the LLAMA preset; one `bias` switch (attention_bias == mlp_bias).
- `mistral` (MistralForCausalLM): Llama with a sliding window over every layer.
- `qwen2` (Qwen2 / Qwen2.5): biases on q, k and v only (`qkv_bias`); a sliding window over the
  layers from `max_window_layers` on, when `use_sliding_window`.
- `qwen3`: Qwen2's window, no q/k/v biases, an RMSNorm on each q and k head (`qk_norm`), and an
  explicit `head_dim` (128 when config.json omits it, as in transformers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from theseus.interop.hf_common import (
    HFConfig,
    Rule,
    act,
    full_rope,
    heads_in,
    heads_out,
    need,
    one,
    qwen_window,
    refuse,
    split_heads,
    transpose,
)
from theseus.model.models import LLAMA, TransformerConfig

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def canonical(name: str) -> str:
    return name


def read(hf: HFConfig, path: Path, dtype: str) -> TransformerConfig:
    kind = hf["model_type"]
    d, n = need(hf, "hidden_size", path), need(hf, "num_attention_heads", path)
    layers = need(hf, "num_hidden_layers", path)
    head_dim = hf.get("head_dim") or (128 if kind == "qwen3" else d // n)
    act(hf, path, "hidden_act", {"silu": "swiglu"})
    bias = qkv_bias = False
    window, window_from = None, 0
    if kind == "llama":
        bias = bool(hf.get("attention_bias", False))
        if bool(hf.get("mlp_bias", False)) != bias:
            raise refuse(
                path,
                "mlp_bias",
                hf.get("mlp_bias", False),
                f"with attention_bias={bias}: theseus has one bias switch for both",
            )
    elif kind == "mistral":
        window = hf.get("sliding_window", 4096)  # transformers' default when the key is absent
    else:
        window, window_from = qwen_window(hf, path, layers)
        qkv_bias = kind == "qwen2"
        if kind == "qwen3" and hf.get("attention_bias", False):
            raise refuse(
                path, "attention_bias", True, "Qwen3's o bias without MLP biases has no switch"
            )
    return dataclasses.replace(
        LLAMA,
        n_layers=layers,
        n_heads=n,
        n_kv_heads=hf.get("num_key_value_heads") or n,
        d_model=d,
        head_width=None if head_dim * n == d else head_dim,
        d_ff=need(hf, "intermediate_size", path),
        block_size=need(hf, "max_position_embeddings", path),
        vocab_size=need(hf, "vocab_size", path),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=full_rope(hf, path),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        bias=bias,
        qkv_bias=qkv_bias,
        qk_norm=kind == "qwen3",
        sliding_window=window,
        window_from_layer=window_from,
        dtype=dtype,
    )


def rules(c: TransformerConfig, model_type: str) -> Iterator[Rule]:
    n, kv, h = c.n_heads, c.kv_heads, c.head_dim
    yield one("embed.weight", "model.embed_tokens.weight")
    for i in range(c.n_layers):
        p, b = f"blocks.{i}.", f"model.layers.{i}."
        yield one(p + "attn_norm.scale", b + "input_layernorm.weight")
        yield one(p + "mlp_norm.scale", b + "post_attention_layernorm.weight")
        for name, heads in (("q", n), ("k", kv), ("v", kv)):
            theirs = b + f"self_attn.{name}_proj."
            yield one(p + f"attn.{name}", theirs + "weight", *heads_in(heads, h))
            if c.bias or c.qkv_bias:
                yield one(p + f"attn.{name}_bias", theirs + "bias", *split_heads(heads, h))
        yield one(p + "attn.o", b + "self_attn.o_proj.weight", *heads_out(n, h))
        if c.bias:
            yield one(p + "attn.o_bias", b + "self_attn.o_proj.bias")
        if c.qk_norm:
            yield one(p + "attn.q_norm.scale", b + "self_attn.q_norm.weight")
            yield one(p + "attn.k_norm.scale", b + "self_attn.k_norm.weight")
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            yield one(p + f"mlp.{ours}.kernel", b + f"mlp.{theirs}.weight", transpose, transpose)
            if c.bias:
                yield one(p + f"mlp.{ours}.bias", b + f"mlp.{theirs}.bias")
    yield one("final_norm.scale", "model.norm.weight")
    if not c.tie_embeddings:
        yield one("lm_head.kernel", "lm_head.weight", transpose, transpose)


def export_type(c: TransformerConfig) -> tuple[str, list[str]]:
    """The model_type that holds `c` (RoPE, RMSNorm, SwiGLU), and what of `c` it cannot hold."""
    if c.qk_norm:
        return "qwen3", ["qk_norm with biases"] if c.bias or c.qkv_bias else []
    if c.qkv_bias and not c.bias:
        return "qwen2", []
    if any(c.window(i) for i in range(c.n_layers)):
        why = ["a sliding window with biases"] if c.bias else []
        if c.window_from_layer:  # Qwen2 would hold it, but always with q/k/v biases
            why.append(f"window_from_layer={c.window_from_layer} without qkv_bias")
        return "mistral", why
    return "llama", []


def write(c: TransformerConfig, model_type: str) -> HFConfig:
    hf: HFConfig = {
        "model_type": model_type,
        "architectures": [_ARCHITECTURES[model_type]],
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "hidden_size": c.d_model,
        "head_dim": c.head_dim,
        "intermediate_size": c.hidden,
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "hidden_act": "silu",
        "tie_word_embeddings": c.tie_embeddings,
        "attention_dropout": 0.0,
    }
    windows = [c.window(i) for i in range(c.n_layers)]
    if model_type == "llama":
        hf.update(attention_bias=c.bias, mlp_bias=c.bias)
    elif model_type == "mistral":
        hf.update(sliding_window=c.sliding_window)
    else:
        slides = any(windows)
        hf.update(
            use_sliding_window=slides,
            sliding_window=c.sliding_window if slides else None,
            max_window_layers=c.window_from_layer if slides else c.n_layers,
            layer_types=["sliding_attention" if w else "full_attention" for w in windows],
        )
        if model_type == "qwen3":
            hf.update(attention_bias=False)
    return hf
