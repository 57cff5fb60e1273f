"""`theseus sample` on a real run: tokenize (bytes) -> train a tiny GPT -> sample from its folder."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from theseus.cli import main
from theseus.data.datasets import SourceConfig, open_source
from theseus.data.tokenizer_training import train_bpe
from theseus.data.tokenizers import load_tokenizer, make_tokenizer
from theseus.inference import load_model, sample

# its fixture trains a model first, and each test samples from trained runs
pytestmark = pytest.mark.slow

TINY = [
    "training.dataset=[{name: pystdlib}]",  # the store of the `run` fixture
    "architecture.n_layers=2",
    "architecture.d_model=32",
    "architecture.n_heads=4",
    "architecture.block_size=48",
    "architecture.dtype=float32",
    "training.batch_size=8",
    "training.steps=10",
    "optimization.warmup_steps=3",
    "optimization.lr=0.003",
    "logging.val_interval=0",
    "logging.checkpoint_interval=10",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a tiny GPT trained for 10 steps on a bytes-tokenized store."""
    out = tmp_path_factory.mktemp("out")
    tok, train = out / "tok.yaml", out / "train.yaml"
    assert (
        main(["configure", "data/tokenize_variable_dataset", str(tok), "data.name=pystdlib"]) == 0
    )
    assert (
        main(["run", "tok", str(tok), str(out), "tokenizer.backend=bytes", "data.max_tokens=60000"])
        == 0
    )
    assert main(["configure", "gpt/train/pretrain", str(train)]) == 0
    assert main(["run", "tiny", str(train), str(out), *TINY]) == 0
    return out / "runs" / "default" / "default" / "tiny"


def test_sample_prints_each_prompt_with_its_continuation(run, capsys):
    prompts = ["def ", "import"]
    capsys.readouterr()
    assert main(["sample", str(run), *prompts, "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    model, _, identity = load_model(run)
    tokenizer = load_tokenizer(identity)
    # no --max-new: as many tokens as the context of 48 leaves after the longest prompt, plus
    # the last one, predicted at the last position
    expected = sample(model, tokenizer, prompts, 48 - 6 + 1, temperature=0)
    for prompt, text in zip(prompts, expected, strict=True):
        assert prompt + text in printed
    assert sum(len(t) for t in expected) > 0

    seeded = [sample(model, tokenizer, prompts, 16, temperature=1.0, seed=s) for s in (1, 1, 2)]
    assert seeded[0] == seeded[1] != seeded[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "/nonexistent/run", "hi"], "no such run or checkpoint"),
        (["sample", "RUN", "hi", "--top-p", "0"], "--top-p"),
        (["sample", "RUN", "hi", "--max-new", "100"], "max_new can be at most 47,"),
        (
            ["sample", "RUN", "x" * 60, "--max-new", "1"],
            "(60 tokens) is longer than the model's context of 48",
        ),
        (["sample", "RUN", "x" * 60], "(60 tokens) is longer than the model's context of 48"),
        (["sample", "RUN", "hi", "--temperature", "inf"], "finite temperature"),
        (["sample", "RUN", "hi", "--temperature", "nan"], "finite temperature"),
        (["sample", "RUN", "hi", "--seed", str(2**64)], "--seed"),
    ],
)
def test_bad_input_is_one_line_exit_2(run, capsys, args, message):
    capsys.readouterr()
    assert main([str(run) if a == "RUN" else a for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and err.count("\n") == 1


def test_a_rotary_model_samples_200_tokens_past_its_training_context(run, capsys):
    """Rotary positions have no last one: without --max-new a prompt longer than the training
    context still gets the default 200 new tokens."""
    out = run.parents[3]
    rope = [*TINY, "architecture.positions=rope", "architecture.block_size=16", "training.steps=2"]
    assert main(["run", "tiny-rope", str(out / "train.yaml"), str(out), *rope]) == 0
    folder = out / "runs" / "default" / "default" / "tiny-rope"
    prompt = "import os, sys\nimport json\n"  # 27 tokens
    capsys.readouterr()
    assert main(["sample", str(folder), prompt, "--temperature", "0"]) == 0
    model, _, identity = load_model(folder)
    tokenizer = load_tokenizer(identity)
    [expected] = sample(model, tokenizer, [prompt], 200, temperature=0)
    assert len(tokenizer.encode(expected)) == 200
    assert prompt + expected in capsys.readouterr().out


def test_a_run_samples_after_its_tokenizer_file_is_gone(run, tmp_path, capsys):
    """The training store keeps a copy of a Hugging Face tokenizer file; sampling uses it when
    the original has been deleted since."""
    out = run.parents[3]
    bpe = train_bpe(open_source(SourceConfig(name="pystdlib")), 20, 300, 2, tmp_path / "bpe.json")
    tokenize = ["tokenizer.backend=huggingface", f"tokenizer.name={bpe}", "data.store=bpe"]
    assert main(["run", "tok-bpe", str(out / "tok.yaml"), str(out), *tokenize]) == 0
    train = [*TINY, "training.dataset=[{name: bpe}]", "training.steps=2"]
    assert main(["run", "tiny-bpe", str(out / "train.yaml"), str(out), *train]) == 0
    bpe.unlink()
    capsys.readouterr()
    folder = out / "runs" / "default" / "default" / "tiny-bpe"
    assert main(["sample", str(folder), "def ", "--max-new", "5", "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    # the store's copy, read directly, and the model's own argmax over the whole sequence at
    # each new token (no cache): what greedy sampling must have printed
    copy = make_tokenizer("huggingface", str(out / "data" / "bpe" / "tokenizer.json"))
    model, _, identity = load_model(folder)
    assert copy.identity["hash"] == identity["hash"]
    forward = nnx.jit(lambda model, tokens: model(tokens))
    prompt = copy.encode("def ")
    row = np.zeros((1, model.config.block_size), np.int32)  # causal: what follows is not seen
    row[0, : len(prompt)], n = prompt, len(prompt)
    for _ in range(5):
        logits = np.asarray(forward(model, jnp.asarray(row)))[0, n - 1, : copy.vocab_size]
        if int(np.argmax(logits)) == copy.eot_id:
            break
        row[0, n], n = int(np.argmax(logits)), n + 1
    new = row[0, len(prompt) : n].tolist()
    assert new and printed == "def " + copy.decode(new) + "\n\n"
