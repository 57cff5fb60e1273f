"""Hugging Face `config.json` -> `TransformerConfig`, and back at export: what theseus cannot
build exactly is a one-line UserError naming the field and its value, never another model.
(No torch here: these run in the fast loop.)"""

from __future__ import annotations

import dataclasses

import pytest
from flax import nnx

from theseus.errors import UserError
from theseus.interop import export_hf, hf_config_to_transformer
from theseus.model.models import GPT2, LLAMA, Transformer

SHAPE = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 64,
    "intermediate_size": 96,
    "max_position_embeddings": 64,
    "vocab_size": 128,
}


def test_qwen_sliding_layers_follow_transformers_rule():
    """transformers slides the layers from max_window_layers on, only with use_sliding_window;
    explicit layer_types win."""
    qwen2 = {**SHAPE, "model_type": "qwen2", "sliding_window": 8, "max_window_layers": 1}
    assert hf_config_to_transformer(qwen2).sliding_window is None  # use_sliding_window is off
    on = hf_config_to_transformer({**qwen2, "use_sliding_window": True})
    assert (on.sliding_window, on.window_from_layer) == (8, 1)
    assert [on.window(i) for i in range(2)] == [None, 8]
    every = {**qwen2, "use_sliding_window": True, "layer_types": ["sliding_attention"] * 2}
    assert hf_config_to_transformer(every).window_from_layer == 0
    # the window on, but from a layer past the last one: no layer slides
    past_the_end = {**qwen2, "use_sliding_window": True, "max_window_layers": 28}
    assert hf_config_to_transformer(past_the_end).sliding_window is None


def test_qwen3_head_dim_defaults_to_128_as_in_transformers():
    config = hf_config_to_transformer({**SHAPE, "model_type": "qwen3"})
    assert (config.head_dim, config.head_width, config.qk_norm) == (128, 128, True)


@pytest.mark.parametrize(
    ("hf", "message"),
    [
        (
            {"model_type": "llama", "rope_parameters": {"rope_type": "linear", "factor": 2.0}},
            r"rope_parameters\.rope_type='linear' is not supported",
        ),
        (
            {"model_type": "qwen2", "rope_scaling": {"type": "yarn", "factor": 4.0}},
            r"rope_parameters\.rope_type='yarn' is not supported",
        ),
        ({"model_type": "gpt_neox", "hidden_act": "gelu_fast"}, r"hidden_act='gelu_fast'"),
        ({"model_type": "mistral", "hidden_act": "gelu"}, r"hidden_act='gelu'"),
        ({"model_type": "qwen3", "attention_bias": True}, r"attention_bias=True"),
        ({"model_type": "gpt_neox", "attention_bias": False}, r"attention_bias=False"),
        ({"model_type": "llama", "attention_bias": True}, r"mlp_bias=False"),
        (
            {
                "model_type": "qwen2",
                "use_sliding_window": True,
                "sliding_window": 4,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            r"layer_types=\['sliding_attention', 'full_attention'\]",
        ),
        ({"model_type": "llama", "partial_rotary_factor": 0.5}, r"partial_rotary_factor=0.5"),
        ({"model_type": "gpt_neox", "rotary_pct": 0.1}, r"rotary_pct=0.1"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["model_type"],
)
def test_what_theseus_cannot_build_is_a_one_line_error_naming_the_field(hf, message):
    with pytest.raises(UserError, match=message) as caught:
        hf_config_to_transformer({**SHAPE, **hf}, "folder")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("folder/config.json")


def tiny(preset, **overrides):
    config = dataclasses.replace(
        preset, n_layers=2, n_heads=4, d_model=32, block_size=32, vocab_size=64, **overrides
    )
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: tiny(GPT2, norm="rmsnorm"), r"cannot export norm=rmsnorm: .* gpt2"),
        (lambda: tiny(LLAMA, qk_norm=True, qkv_bias=True), r"qk_norm with biases: .* qwen3"),
        (
            lambda: tiny(LLAMA, sliding_window=4, window_from_layer=1),
            r"window_from_layer=1 without qkv_bias: .* mistral",
        ),
        (lambda: tiny(GPT2, positions="rope", n_kv_heads=2), r"n_kv_heads=2: .* gpt_neox"),
    ],
    ids=["gpt2-rmsnorm", "qk-norm-with-biases", "mistral-window-from-1", "neox-gqa"],
)
def test_a_config_no_layout_holds_is_refused_on_export(tmp_path, model, message):
    with pytest.raises(UserError, match=message):
        export_hf(model(), tmp_path)
    assert not any(tmp_path.iterdir())
