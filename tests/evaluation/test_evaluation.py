"""Evaluations on a really trained model: perplexity and multiple-choice scoring, and `gpt/evaluate`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from theseus.checkpoint import load_model
from theseus.cli import main
from theseus.data.store import TokenStore
from theseus.data.tokenizers import load_tokenizer
from theseus.evaluation.multiple_choice import MultipleChoice, MultipleChoiceConfig
from theseus.evaluation.perplexity import Perplexity, PerplexityConfig
from theseus.evaluation.scoring import Scorer

TINY = [
    "architecture.n_layers=2",
    "architecture.d_model=64",
    "architecture.n_heads=4",
    "architecture.block_size=64",
    "architecture.dtype=float32",
    "training.batch_size=16",
    "training.steps=150",
    "optimization.warmup_steps=10",
    "optimization.lr=0.003",
    "logging.val_interval=0",
    "logging.checkpoint_interval=150",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(output root, run folder) of a tiny GPT trained 150 steps on Python source (bytes)."""
    out = tmp_path_factory.mktemp("out")
    tok, train = out / "tok.yaml", out / "train.yaml"
    assert (
        main(["configure", "data/tokenize_variable_dataset", str(tok), "data.name=pystdlib"]) == 0
    )
    assert (
        main(
            [
                "run",
                "tok",
                str(tok),
                str(out),
                "tokenizer.backend=bytes",
                "data.max_tokens=200000",
                "data.val_pct=10",
            ]
        )
        == 0
    )
    assert main(["configure", "gpt/train/pretrain", str(train)]) == 0
    assert main(["run", "tiny", str(train), str(out), *TINY]) == 0
    return out, out / "runs" / "default" / "default" / "tiny"


@pytest.fixture(scope="module")
def scorer(trained) -> Scorer:
    model, _, identity = load_model(trained[1])
    return Scorer(model, load_tokenizer(identity), model.config.block_size, batch_size=8)


@pytest.fixture(scope="module")
def training_text(trained) -> str:
    store = TokenStore.open(trained[0] / "data" / "pystdlib")
    tokens = np.concatenate(store.memmaps("train"))[:20000]
    return store.tokenizer().decode(tokens.tolist())


def test_scores_agree_between_windows_and_continuations(scorer):
    tokens = scorer.tokenizer.encode("def add(a, b):\n    return a + b\n")
    nll, count = scorer.nll([np.asarray(tokens)])
    ((logp, n),) = scorer.continuation_logprobs([(tokens[:1], tokens[1:])])
    assert count == n == len(tokens) - 1
    assert logp == pytest.approx(-nll, rel=1e-5)


def test_perplexity_lower_on_training_text_than_on_shuffled_text(scorer, training_text, tmp_path):
    chars = list(training_text)
    random.Random(0).shuffle(chars)
    (tmp_path / "own.txt").write_text(training_text)
    (tmp_path / "shuffled.txt").write_text("".join(chars))
    own = Perplexity(PerplexityConfig(text=str(tmp_path / "own.txt"), max_tokens=8000)).run(scorer)
    shuffled = Perplexity(
        PerplexityConfig(text=str(tmp_path / "shuffled.txt"), max_tokens=8000)
    ).run(scorer)
    assert own["tokens"] == shuffled["tokens"] == 8000
    assert own["perplexity"] < 0.6 * shuffled["perplexity"], (own, shuffled)


def test_multiple_choice_picks_the_planted_answer(scorer, training_text, tmp_path):
    rng = random.Random(1)
    alphabet = "QZXJKVWqzxjkvw#@!~^|"
    items = []
    for _ in range(24):
        start = rng.randrange(0, len(training_text) - 80)
        context, answer = training_text[start : start + 48], training_text[start + 48 : start + 64]
        distractors = ["".join(rng.choice(alphabet) for _ in answer) for _ in range(3)]
        position = rng.randrange(4)
        choices = [*distractors[:position], answer, *distractors[position:]]
        items.append({"context": context, "choices": choices, "answer": position})
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    result = MultipleChoice(MultipleChoiceConfig(path=str(path))).run(scorer)
    assert result == {"accuracy": 1.0, "items": 24.0}


def test_evaluate_job_writes_results_to_its_run_folder(trained, tmp_path, training_text):
    out, run = trained
    text = tmp_path / "t.txt"
    text.write_text(training_text[:3000])
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), f"eval.checkpoint={run}"]) == 0
    code = main(
        [
            "run",
            "ev",
            str(cfg),
            str(out),
            "eval.evaluations=[perplexity]",
            f"eval.perplexity.store={out / 'data' / 'pystdlib'}",
        ]
    )
    assert code == 0
    results = json.loads((out / "runs" / "default" / "default" / "ev" / "eval.json").read_text())
    assert set(results) == {
        "eval/perplexity/loss",
        "eval/perplexity/perplexity",
        "eval/perplexity/tokens",
    }
    assert 1.0 < results["eval/perplexity/perplexity"] < 256


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "nothing to evaluate"),
        (["eval.evaluations=[perplexity]"], "set exactly one of"),
        (
            ["eval.evaluations=[multiple_choice]", "eval.multiple_choice.path=/nonexistent.jsonl"],
            "no such file",
        ),
        (["eval.evaluations=[bleu]"], "unknown evaluation 'bleu'"),
    ],
)
def test_evaluate_bad_input_is_one_line(trained, tmp_path, capsys, overrides, message):
    out, run = trained
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), f"eval.checkpoint={run}"]) == 0
    capsys.readouterr()
    assert main(["run", "bad", str(cfg), str(out), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and err.count("\n") == 1


def test_evaluations_run_during_training_and_are_logged(trained, tmp_path):
    out, _ = trained
    train = tmp_path / "train.yaml"
    assert main(["configure", "gpt/train/pretrain", str(train)]) == 0
    store = out / "data" / "pystdlib"
    short = [o for o in TINY if not o.startswith(("training.steps", "logging.checkpoint_interval"))]
    overrides = [
        *short,
        "training.steps=6",
        "logging.checkpoint_interval=6",
        "eval.evaluations=[perplexity]",
        "eval.interval=3",
        f"eval.perplexity.store={store}",
        "eval.perplexity.max_tokens=2000",
    ]
    assert main(["run", "with-eval", str(train), str(out), *overrides]) == 0
    metrics = (out / "runs" / "default" / "default" / "with-eval" / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in metrics.splitlines()]
    evals = [
        (r["step"], r["eval/perplexity/perplexity"])
        for r in rows
        if "eval/perplexity/perplexity" in r
    ]
    assert [step for step, _ in evals] == [3, 6]
    assert all(1.0 < ppl < 512 for _, ppl in evals)
