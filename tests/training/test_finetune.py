"""Fine-tuning from a Hugging Face folder (`architecture.init_from`): the architecture and weights
are the folder's, supervised fine-tuning counts only the masked-in (assistant) targets, and bad
input is refused in one line with nothing written.

Hugging Face folders are written by `export_hf` from random theseus models (no torch) for the
fast tests, and by transformers' `save_pretrained` where the model must be someone else's.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.training.conftest import ckpt_dir, losses, run_dir
from theseus.cli import main
from theseus.model.models import GPT2, LLAMA, Transformer

TINY_LLAMA = dataclasses.replace(
    LLAMA,
    n_layers=2,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,
    d_ff=128,
    block_size=64,
    vocab_size=384,
    dtype="float32",
)
TINY_GPT2 = dataclasses.replace(
    GPT2, n_layers=2, d_model=64, n_heads=4, block_size=64, vocab_size=384, dtype="float32"
)
FINETUNE = [
    "training.dataset=[{name: pystdlib}]",  # the bytes store of the `root` fixture (257 ids)
    "architecture.dtype=float32",
    "training.batch_size=8",
    "training.seq_len=32",
    "optimization.warmup_steps=2",
    "logging.interval=1",
    "logging.val_interval=0",
]


def hf_folder(path: Path, config=TINY_LLAMA, seed: int = 0) -> Path:
    """A random model of `config` written as a Hugging Face folder."""
    from theseus.interop import export_hf

    return export_hf(Transformer(config, rngs=nnx.Rngs(seed)), path)


def finetune_args(name: str, yaml: Path, root: Path, init_from: Path | str, *more: str) -> list:
    return [
        "run",
        name,
        str(yaml),
        str(root),
        *FINETUNE,
        f"architecture.init_from={init_from}",
        *more,
    ]


@pytest.fixture(scope="session")
def finetune_yaml(root: Path) -> Path:
    path = root / "finetune.yaml"  # test_lora.py shares it, so it may be written already
    assert main(["configure", "llama/train/finetune", str(path), "--force"]) == 0
    return path


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_folder(tmp_path_factory.mktemp("hf") / "llama")


def test_the_loss_counts_exactly_the_masked_in_targets():
    """The train step's loss on a hand-made batch is the mean cross-entropy over the targets
    whose mask is 1, computed here from the model's logits in float64."""
    from theseus.training.step import make_train_step

    config = dataclasses.replace(TINY_LLAMA, d_model=32, vocab_size=64, block_size=16)
    model = Transformer(config, rngs=nnx.Rngs(3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=(2, 9)).astype(np.int32)
    # a chat-like mask: prompt tokens out, the reply in, padding out
    mask = np.zeros((2, 8), np.float32)
    mask[0, 3:6] = 1
    mask[1, 5:8] = 1
    mask[1, 1] = 1
    positions = np.broadcast_to(np.arange(8, dtype=np.int32), (2, 8))
    batch = {
        "inputs": tokens[None, :, :-1],
        "targets": tokens[None, :, 1:],
        "loss_mask": mask[None],
        "positions": positions[None],
    }
    tx = optax.sgd(0.0)
    step = make_train_step(graphdef, rest, tx, seed=0, accumulation=1)
    _, metrics = jax.jit(step)({"params": params, "opt": tx.init(params)}, batch, 0, 0.0)
    logits = np.asarray(model(jnp.asarray(tokens[:, :-1])))
    expected = _masked_ce(logits, {"targets": tokens[:, 1:], "loss_mask": mask})
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-6)
    everything = _masked_ce(logits, {"targets": tokens[:, 1:], "loss_mask": np.ones_like(mask)})
    assert not math.isclose(float(metrics["loss"]), everything, rel_tol=1e-3)


def _refused(args: list, root: Path, name: str, capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not run_dir(root, name).exists() and not ckpt_dir(root, name).exists()
    return err


def test_a_folder_without_config_json_is_refused(root, finetune_yaml, tmp_path, capsys):
    args = finetune_args("no-config", finetune_yaml, root, tmp_path)
    err = _refused(args, root, "no-config", capsys)
    assert f"{tmp_path} is not a Hugging Face model folder (no config.json)" in err, err


def test_an_unsupported_model_type_is_refused(root, finetune_yaml, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 512}))
    err = _refused(finetune_args("bert", finetune_yaml, root, tmp_path), root, "bert", capsys)
    assert "model_type 'bert' is not supported; supported: gpt2, llama" in err, err
    assert err.startswith(f"error: {tmp_path}: "), err


def test_a_store_vocabulary_larger_than_the_model_is_refused(root, finetune_yaml, tmp_path, capsys):
    folder = hf_folder(tmp_path / "small-vocab", dataclasses.replace(TINY_LLAMA, vocab_size=200))
    err = _refused(finetune_args("vocab", finetune_yaml, root, folder), root, "vocab", capsys)
    assert "the token store pystdlib has a vocabulary of 257 ids, more than the 200" in err, err
    assert "tokenize with that model's tokenizer" in err


def test_a_lora_target_that_matches_no_layer_is_refused(root, tmp_path, capsys):
    yaml = tmp_path / "gpt.yaml"
    assert main(["configure", "gpt/train/finetune", str(yaml)]) == 0
    folder = hf_folder(tmp_path / "gpt2", TINY_GPT2)
    lora = ["finetune.lora.rank=4", "finetune.lora.targets=[q, gate]"]
    err = _refused(finetune_args("gate", yaml, root, folder, *lora), root, "gate", capsys)
    assert "finetune.lora.targets: gate matches no layer of this model" in err, err
    assert "its projections: q, k, v, o, fc, down" in err


def test_a_hub_id_offline_is_refused(root, finetune_yaml, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "theseus-tests/no-such-model"
    err = _refused(finetune_args("hub", finetune_yaml, root, hub_id), root, "hub", capsys)
    assert f"architecture.init_from={hub_id} needs the Hugging Face hub (HF_HUB_OFFLINE" in err


def test_a_hub_id_is_downloaded_with_the_environments_token_only(tmp_path, monkeypatch):
    """The local cache first; then, the hub answering, a download of the files a run reads,
    with HF_TOKEN from the environment (no token at all without it)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from theseus.data import hub
    from theseus.training.pretrained import HUB_FILES, resolve_folder

    calls = []

    def snapshot_download(repo_id, **options):
        calls.append((repo_id, options))
        if options.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=5.0: None)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert resolve_folder("org/model") == tmp_path
    assert [c[1]["local_files_only"] for c in calls if "local_files_only" in c[1]] == [True]
    assert calls[-1] == ("org/model", {"allow_patterns": HUB_FILES, "token": "hf_secret"})
    monkeypatch.delenv("HF_TOKEN")
    calls.clear()
    resolve_folder("org/model")
    assert calls[-1][1]["token"] is False


def test_finetune_jobs_are_listed_and_need_init_from(tmp_path, capsys):
    assert main(["jobs"]) == 0
    listed = capsys.readouterr().out
    for name in ("llama", "qwen", "gpt_neox", "gpt"):
        assert f"{name}/train/finetune" in listed
    path = tmp_path / "ft.yaml"
    assert main(["configure", "qwen/train/finetune", str(path)]) == 0
    assert "still required: architecture.init_from" in capsys.readouterr().err
    text = path.read_text()
    assert "init_from: ???" in text and "rank: 0" in text and "lr: 5.0e-05" in text


@pytest.mark.slow
def test_continued_pretraining_starts_from_the_folders_weights_and_architecture(
    root, finetune_yaml, llama_folder, capsys
):
    """The first step's loss is the Hugging Face model's on that batch (here: the imported
    model's), the config names the folder's architecture, and every weight trains."""
    from theseus.inference import load_model
    from theseus.interop import import_hf

    capsys.readouterr()
    args = finetune_args("cpt", finetune_yaml, root, llama_folder, "training.steps=3")
    assert main([*args, "architecture.n_layers=7"]) == 0
    err = capsys.readouterr().err
    assert "weights from architecture.init_from=" in err and "n_layers 7 -> 2" in err, err
    assert "LoRA" not in err
    config = (run_dir(root, "cpt") / "config.yaml").read_text()
    assert "n_layers: 2" in config and "d_model: 64" in config
    batch = _first_batch(root, "pystdlib", 8, 32)
    base = import_hf(llama_folder)
    expected = _masked_ce(np.asarray(base(jnp.asarray(batch["inputs"]))), batch)
    assert abs(losses(root, "cpt")[0][1] - expected) < 1e-5
    trained, _, _ = load_model(run_dir(root, "cpt"))
    before, after = nnx.state(base, nnx.Param), nnx.state(trained, nnx.Param)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
    assert all(jax.tree.leaves(changed))


@pytest.mark.slow
def test_sft_on_a_blockwise_chat_store_learns_only_the_assistant_tokens(
    root, finetune_yaml, tmp_path, capsys
):
    """A transformers Llama saved with save_pretrained, a blockwise chat store (bytes tokenizer):
    the first step's loss equals the mean cross-entropy transformers' own model gives the
    assistant targets of that batch, and no other."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=320,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    folder = tmp_path / "hf-llama"
    LlamaForCausalLM(hf).save_pretrained(folder)
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} times three?"},
                {"role": "assistant", "content": f"{i} times three is {3 * i}."},
            ]
        }
        for i in range(40)
    ]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    tok = tmp_path / "sft-tok.yaml"
    assert main(["configure", "data/tokenize_blockwise_dataset", str(tok)]) == 0
    tokenize = [
        "data.name=files",
        f"data.paths=[{tmp_path / 'chats.jsonl'}]",
        "data.store=chats",
        "tokenizer.backend=bytes",
        "data.seq_len=96",
        "data.val_pct=0",
    ]
    assert main(["run", "tok-chats", str(tok), str(root), *tokenize]) == 0
    sft = [
        "training.dataset=[{name: chats}]",
        "training.seq_len=null",  # the store's examples (96)
        "training.steps=2",
        "finetune.lora.rank=4",
    ]
    capsys.readouterr()
    assert main(finetune_args("sft", finetune_yaml, root, folder, *sft)) == 0
    assert "x 96 tokens" in capsys.readouterr().err
    batch = _first_batch(root, "chats", 8, 96)
    assert 0 < batch["loss_mask"].sum() < batch["loss_mask"].size / 2  # replies only
    reference = LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = reference(torch.tensor(batch["inputs"], dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(losses(root, "sft")[0][1], _masked_ce(logits, batch), atol=2e-5)


def _first_batch(root: Path, store: str, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """The batch of step 0 the trainer reads (seed 0), by the loader's contract."""
    from theseus.data.loader import Loader
    from theseus.data.store import TokenStore

    return Loader([TokenStore.open(root / "data" / store)], [1.0], seq_len, batch).batch(0)


def _masked_ce(logits: np.ndarray, batch: dict[str, np.ndarray]) -> float:
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
    mask = batch["loss_mask"]
    return float((nll * mask).sum() / mask.sum())
