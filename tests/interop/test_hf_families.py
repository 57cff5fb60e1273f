"""Qwen2, Qwen3, GPT-NeoX / Pythia and Mistral in and out of Hugging Face, held to the logits of
real `transformers` models (CPU torch, float32, random weights, offline) on a ragged batch:
right-padded rows of different lengths, compared at their real positions only."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import safetensors
import torch
import transformers
from flax import nnx

from theseus.interop import export_hf, hf_config_to_transformer, import_hf, load_hf_weights
from theseus.interop.huggingface import preset_for_hf
from theseus.model.models import Transformer

# each test builds torch models and converts them (about a second each)
pytestmark = pytest.mark.slow

V, T = 128, 12
LENGTHS = (12, 7, 3)  # longer than the sliding windows below, so the windows matter
SHAPE = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "hidden_size": 64,
    "intermediate_size": 96,
    "max_position_embeddings": 64,
    "vocab_size": V,
}
# Qwen configs default to 32 key/value heads: every case names its own
LLAMA_LIKE = {**SHAPE, "rms_norm_eps": 1e-5, "num_key_value_heads": 4}

# (HF config class, its settings, the theseus switches the import must set)
FAMILIES = {
    "qwen2-gqa": (
        transformers.Qwen2Config,
        {**LLAMA_LIKE, "num_key_value_heads": 2},
        {"qkv_bias": True, "bias": False, "sliding_window": None},
    ),
    "qwen2-tied-window-on-last-layer": (
        transformers.Qwen2Config,
        {
            **LLAMA_LIKE,
            "tie_word_embeddings": True,
            "use_sliding_window": True,
            "sliding_window": 4,
            "max_window_layers": 1,
        },
        {"qkv_bias": True, "sliding_window": 4, "window_from_layer": 1, "tie_embeddings": True},
    ),
    "qwen3-gqa-wide-heads": (
        transformers.Qwen3Config,
        {**LLAMA_LIKE, "num_key_value_heads": 2, "head_dim": 32},
        {"qk_norm": True, "head_width": 32, "qkv_bias": False},
    ),
    "qwen3-tied": (
        transformers.Qwen3Config,
        {**LLAMA_LIKE, "head_dim": 16, "tie_word_embeddings": True},
        {"qk_norm": True, "head_width": None, "tie_embeddings": True},
    ),
    "pythia": (
        transformers.GPTNeoXConfig,
        {**SHAPE, "rotary_pct": 0.25, "rotary_emb_base": 500.0},
        {"parallel_residual": True, "rope_fraction": 0.25, "rope_theta": 500.0},
    ),
    "neox-sequential-tanh-tied": (
        transformers.GPTNeoXConfig,
        {
            **SHAPE,
            "rotary_pct": 0.5,
            "use_parallel_residual": False,
            "hidden_act": "gelu_new",
            "tie_word_embeddings": True,
        },
        {"parallel_residual": False, "mlp": "gelu", "tie_embeddings": True},
    ),
    "mistral-window-gqa": (
        transformers.MistralConfig,
        {**LLAMA_LIKE, "num_key_value_heads": 2, "sliding_window": 4},
        {"sliding_window": 4, "window_from_layer": 0, "bias": False},
    ),
    "llama-wide-heads": (
        transformers.LlamaConfig,
        {**LLAMA_LIKE, "num_key_value_heads": 2, "head_dim": 32},
        {"head_width": 32},
    ),
}
EXPORTED_AS = {
    "qwen2-gqa": "qwen2",
    "qwen2-tied-window-on-last-layer": "qwen2",
    "qwen3-gqa-wide-heads": "qwen3",
    "qwen3-tied": "qwen3",
    "pythia": "gpt_neox",
    "neox-sequential-tanh-tied": "gpt_neox",
    "mistral-window-gqa": "mistral",
    "llama-wide-heads": "llama",
}


def hf_model(name: str) -> transformers.PreTrainedModel:
    config_class, settings, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_class(**settings))
    with torch.no_grad():  # every weight random, so biases and norm scales are exercised too
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def ragged_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded rows of LENGTHS tokens, and the mask of their real positions."""
    tokens = np.random.default_rng(seed).integers(1, V, size=(len(LENGTHS), T)).astype(np.int32)
    real = np.arange(T)[None, :] < np.array(LENGTHS)[:, None]
    return np.where(real, tokens, 0), real


def hf_logits(model: transformers.PreTrainedModel, tokens: np.ndarray, real: np.ndarray):
    with torch.no_grad():
        out = model(torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(real).long())
    return out.logits.float().numpy()


def assert_same_at_real_positions(ours, theirs, real, atol=1e-4):
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(theirs)[real], atol=atol, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_import_matches_transformers_logits(tmp_path, name):
    reference = hf_model(name)
    reference.save_pretrained(tmp_path)
    model = import_hf(tmp_path)
    for key, value in FAMILIES[name][2].items():
        assert getattr(model.config, key) == value, key
    tokens, real = ragged_batch()
    assert_same_at_real_positions(model(tokens), hf_logits(reference, tokens, real), real)


def randomized(name: str, seed: int = 1) -> Transformer:
    """A theseus model of a family's architecture (read from its config as a trainer would),
    with every parameter random."""
    config_class, settings, _ = FAMILIES[name]
    config = hf_config_to_transformer(config_class(**settings).to_dict())
    model = Transformer(config, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        variable.set_value(rng.normal(0.0, 0.2, variable.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, name):
    model = randomized(name)
    export_hf(model, tmp_path, eot_id=V - 1)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == EXPORTED_AS[name]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens, real = ragged_batch(1)
    ours = np.asarray(model(tokens))
    assert_same_at_real_positions(ours, hf_logits(loaded, tokens, real), real)
    again = import_hf(tmp_path)  # and the round trip is exact
    assert again.config == model.config
    np.testing.assert_array_equal(np.asarray(again(tokens)), ours)


def test_a_small_shard_limit_writes_shards_that_transformers_loads(tmp_path):
    model = randomized("qwen3-gqa-wide-heads")
    export_hf(model, tmp_path, max_shard_bytes=100_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens, real = ragged_batch(2)
    assert_same_at_real_positions(model(tokens), hf_logits(loaded, tokens, real), real)

    export_hf(model, tmp_path)  # exporting again in one file leaves no stale shard behind
    assert [p.name for p in tmp_path.glob("model*.safetensors*")] == ["model.safetensors"]


def test_a_bfloat16_export_stores_bfloat16_and_says_so(tmp_path):
    model = randomized("pythia")
    export_hf(model, tmp_path, dtype="bfloat16")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"
    with safetensors.safe_open(tmp_path / "model.safetensors", "np") as f:
        header = f.metadata()
        assert header == {"format": "pt"}
    raw = (tmp_path / "model.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    dtypes = {v["dtype"] for k, v in json.loads(raw[8 : 8 + size]).items() if k != "__metadata__"}
    assert dtypes == {"BF16"}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    tokens, real = ragged_batch(3)
    rounded = import_hf(tmp_path)  # the same bfloat16 weights, computed in float32
    assert_same_at_real_positions(rounded(tokens), hf_logits(loaded.eval(), tokens, real), real)
    assert_same_at_real_positions(rounded(tokens), model(tokens), real, atol=0.2)


def test_a_trainer_builds_the_architecture_then_loads_weights_into_a_padded_vocabulary(tmp_path):
    """The vocabulary padded up for speed (vocab_used = the checkpoint's): the real ids get the
    checkpoint's logits, the padding none."""
    reference = hf_model("qwen2-gqa")
    reference.save_pretrained(tmp_path)
    config = dataclasses.replace(preset_for_hf(tmp_path), vocab_size=V + 64, vocab_used=V)
    model = load_hf_weights(Transformer(config, rngs=nnx.Rngs(0)), tmp_path)
    tokens, real = ragged_batch(4)
    logits = np.asarray(model(tokens))
    assert_same_at_real_positions(logits[..., :V], hf_logits(reference, tokens, real), real)
    assert np.all(logits[..., V:] == -np.inf)
