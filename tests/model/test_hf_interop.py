"""Hugging Face interop against real `transformers` models (CPU torch, random weights, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx

from theseus.errors import UserError
from theseus.inference import generate
from theseus.interop import export_hf, import_hf
from theseus.model.models import GPT2, LLAMA, Transformer

from .tiny import tiny

# each test loads transformers and torch, or converts whole models (1 to 5 s each)
pytestmark = pytest.mark.slow

V = 120
torch.manual_seed(0)


def hf_model(kind: str, **overrides) -> transformers.PreTrainedModel:
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2,
            n_head=4,
            n_embd=32,
            n_positions=64,
            vocab_size=V,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **overrides,
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=80,
            max_position_embeddings=64,
            vocab_size=V,
            rms_norm_eps=1e-5,
            **overrides,
        )
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # every weight random, so biases and norm scales are exercised too
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.numpy()


def tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(2, 17)).astype(np.int32)


@pytest.mark.parametrize(
    ("kind", "overrides", "cls"),
    [("gpt2", {}, GPT2), ("gpt2", {"tie_word_embeddings": False}, GPT2), ("llama", {}, LLAMA)],
    ids=["gpt2", "gpt2-untied", "llama-gqa"],
)
def test_import_matches_transformers_logits(tmp_path, kind, overrides, cls):
    reference = hf_model(kind, **overrides)
    reference.save_pretrained(tmp_path)
    model = import_hf(tmp_path)
    layout = ("positions", "mlp", "norm", "bias")
    assert type(model) is Transformer
    assert [getattr(model.config, k) for k in layout] == [getattr(cls, k) for k in layout]
    x = tokens()
    np.testing.assert_allclose(np.asarray(model(x)), hf_logits(reference, x), atol=1e-4, rtol=0)


def randomized(cls, **config):
    model = tiny(cls, V, block_size=64, **config)
    rng = np.random.default_rng(1)
    for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        variable.set_value(rng.normal(0.0, 0.2, variable.shape).astype(np.float32))
    return model


@pytest.mark.parametrize(
    ("model_fn", "hf_class"),
    [
        (lambda: randomized(GPT2), transformers.GPT2LMHeadModel),
        (lambda: randomized(LLAMA, n_kv_heads=2, d_ff=80), transformers.LlamaForCausalLM),
    ],
    ids=["gpt2", "llama-gqa"],
)
def test_export_loads_in_transformers_with_the_same_logits_and_greedy_tokens(
    tmp_path, model_fn, hf_class
):
    model = model_fn()
    export_hf(model, tmp_path, eot_id=V - 1)
    loaded = hf_class.from_pretrained(tmp_path).eval()
    x = tokens(1)
    np.testing.assert_allclose(hf_logits(loaded, x), np.asarray(model(x)), atol=1e-4, rtol=0)

    prompt = x[:1, :5]
    with torch.no_grad():
        theirs = loaded.generate(
            torch.from_numpy(prompt).long(),
            attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, 5:].tolist()
    ours = generate(model, prompt.tolist(), 10, temperature=0)[0]
    assert ours == theirs and len(ours) == 10

    again = import_hf(tmp_path)  # and the round trip is exact
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))


@pytest.mark.parametrize("shard", [None, "2KB"], ids=["one-file", "sharded"])
def test_import_reads_only_the_weights_the_model_files_name(tmp_path, shard):
    """Repositories may ship other frameworks' copies of the weights next to the model's
    files (`consolidated.safetensors`); only `model.safetensors` or the index's shards count."""
    reference = hf_model("llama")
    reference.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").is_file() == bool(shard)
    other = {"layers.0.attention.wq.weight": torch.zeros(3)}
    safetensors.torch.save_file(other, tmp_path / "consolidated.safetensors")
    x = tokens()
    np.testing.assert_allclose(
        np.asarray(import_hf(tmp_path)(x)), hf_logits(reference, x), atol=1e-4, rtol=0
    )
    if shard:
        next(tmp_path.glob("model-00002-of-*.safetensors")).unlink()
        with pytest.raises(UserError, match=r"lacks model-00002-of-\d+\.safetensors, named in"):
            import_hf(tmp_path)


def test_unsupported_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"no config\.json"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="model_type 'bert' is not supported"):
        import_hf(tmp_path)
    with pytest.raises(UserError, match="cannot export norm=rmsnorm"):
        export_hf(randomized(GPT2, norm="rmsnorm"), tmp_path / "out")


@pytest.mark.parametrize(
    ("cls", "hf_class"),
    [(GPT2, transformers.GPT2LMHeadModel), (LLAMA, transformers.LlamaForCausalLM)],
    ids=["gpt2", "llama"],
)
def test_a_padded_vocabulary_exports_its_real_ids_only(tmp_path, cls, hf_class):
    """Padding ids have no probability in theseus; the exported model has no padding at all, so
    Hugging Face gives the real ids the same distribution."""
    used = V - 16
    model = randomized(cls, vocab_used=used)
    export_hf(model, tmp_path, eot_id=used - 1)
    loaded = hf_class.from_pretrained(tmp_path).eval()
    assert loaded.config.vocab_size == used
    x = tokens(2) % used
    ours = np.asarray(model(x))
    np.testing.assert_allclose(hf_logits(loaded, x), ours[..., :used], atol=1e-4, rtol=0)
    assert np.all(ours[..., used:] == -np.inf)
