"""Evaluations on a really trained model: perplexity and multiple-choice scoring, and `gpt/evaluate`."""

from __future__ import annotations

import json
import math
import random
import re
import shlex
import tracemalloc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.stores import write_bpe_store
from theseus.cli import main
from theseus.config import read_yaml
from theseus.data.store import TokenStore
from theseus.data.tokenizers import BytesTokenizer, load_tokenizer
from theseus.errors import UserError
from theseus.evaluation import check_evaluations, run_evaluations
from theseus.evaluation.multiple_choice import MultipleChoice, MultipleChoiceConfig
from theseus.evaluation.perplexity import Perplexity, PerplexityConfig
from theseus.evaluation.scoring import Scorer
from theseus.inference import load_model
from theseus.stages import Stage, override

README = Path(__file__).resolve().parents[2] / "README.md"

TINY = [
    "training.dataset=[{name: pystdlib}]",  # the store of the `trained` fixture
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
    """(output root, run folder) of a tiny GPT trained 150 steps on Python source (bytes), laid
    out as the README's: ./output/runs/default/default/my-gpt-run and ./output/data/pystdlib."""
    out = tmp_path_factory.mktemp("eval") / "output"
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
    assert main(["run", "my-gpt-run", str(train), str(out), *TINY]) == 0
    return out, out / "runs" / "default" / "default" / "my-gpt-run"


@pytest.fixture(scope="module")
def bpe_store(trained) -> Path:
    out, _ = trained
    return write_bpe_store(out, out / "tok.yaml")


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


def test_a_choice_longer_than_the_window_is_refused(scorer, tmp_path):
    long = "x" * (scorer.seq_len + 1)  # bytes: one token per character
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"context": "a", "choices": ["b", long], "answer": 0}) + "\n")
    with pytest.raises(UserError, match=f"is {len(long)} tokens, more than the model's window"):
        MultipleChoice(MultipleChoiceConfig(path=str(path))).run(scorer)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("multiple_choice", "is 100 tokens, more than the model's window of 64"),
        ("perplexity", "holds fewer than two tokens to score"),
    ],
)
def test_data_the_model_cannot_score_is_refused_before_training(
    trained, tmp_path, capsys, kind, message
):
    """Found before step 1, not when the first evaluation runs part-way through training."""
    out, _ = trained
    items = tmp_path / "mc.jsonl"
    items.write_text(json.dumps({"context": "a", "choices": ["b", "x" * 100], "answer": 0}) + "\n")
    text = tmp_path / "one.txt"
    text.write_text("a")
    data = {
        "multiple_choice": f"eval.multiple_choice.path={items}",
        "perplexity": f"eval.perplexity.text={text}",
    }
    capsys.readouterr()
    overrides = [*TINY, "eval.interval=3", f"eval.evaluations=[{kind}]", data[kind]]
    assert main(["run", f"unscorable-{kind}", str(out / "train.yaml"), str(out), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {kind}: ") and message in err and err.count("\n") == 1
    assert not (out / "runs" / "default" / "default" / f"unscorable-{kind}").exists()
    assert not (out / "checkpoints" / "default" / "default" / f"unscorable-{kind}").exists()


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
    _assert_learned(results)
    config = read_yaml(out / "runs" / "default" / "default" / "ev" / "eval-config.yaml")["config"]
    assert config["eval"]["perplexity"]["store"] == str(out / "data" / "pystdlib")


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
        (
            [
                "eval.evaluations=[perplexity]",
                "eval.perplexity.text=TEXT",
                "eval.batch_size=0",
            ],
            "eval.batch_size=0: must be >= 1",
        ),
        (
            ["eval.evaluations=[perplexity]", "eval.perplexity.store=/nonexistent"],
            "perplexity: no token store at /nonexistent",
        ),
    ],
)
def test_evaluate_bad_input_is_one_line(trained, tmp_path, capsys, overrides, message):
    out, run = trained
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), f"eval.checkpoint={run}"]) == 0
    (tmp_path / "t.txt").write_text("def f():\n    pass\n")
    overrides = [o.replace("TEXT", str(tmp_path / "t.txt")) for o in overrides]
    capsys.readouterr()
    assert main(["run", "bad", str(cfg), str(out), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:") and err.count("\n") == 1
    assert not (out / "runs" / "default" / "default" / "bad").exists()


def _assert_learned(results: dict[str, float]) -> None:
    """Perplexity is exp of the mean token loss, and the trained model beats guessing uniformly
    among the bytes tokenizer's 257 ids."""
    loss = results["eval/perplexity/loss"]
    assert results["eval/perplexity/perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert results["eval/perplexity/tokens"] > 0
    assert loss < math.log(257) - 0.5


def readme_evaluate_commands() -> list[list[str]]:
    """The README's `gpt/evaluate` example, one argument list per command."""
    text = README.read_text()
    rest = text[text.index("### Evaluation") :]
    block = re.search(r"```bash\n(.*?)```", rest, re.S)
    assert block is not None
    lines = block.group(1).replace("\\\n", " ").strip().splitlines()
    return [shlex.split(line, comments=True) for line in lines]


def test_readme_evaluate_commands_run_as_written(trained, monkeypatch):
    out, _ = trained
    configure, run = readme_evaluate_commands()
    assert configure[:3] == ["theseus", "configure", "gpt/evaluate"]
    assert run[:2] == ["theseus", "run"] and run[-1] == "./output"
    monkeypatch.chdir(out.parent)
    assert main(configure[1:]) == 0
    assert main(run[1:]) == 0
    folder = out / "runs" / "default" / "default" / "my-eval"
    results = json.loads((folder / "eval.json").read_text())
    _assert_learned(results)
    # the run folder says what it scored: the checkpoint step and the data
    written = read_yaml(folder / "eval-config.yaml")["config"]["eval"]
    scored = out / "checkpoints" / "default" / "default" / "my-gpt-run" / "150"
    assert Path(written["checkpoint"]) == scored.resolve()
    assert written["evaluations"] == ["perplexity"]
    # evaluated under the training run's own name, that run keeps its config.yaml
    trained_config = out / "runs" / "default" / "default" / "my-gpt-run" / "config.yaml"
    before = trained_config.read_bytes()
    assert main(["run", "my-gpt-run", *run[3:], "eval.checkpoint=my-gpt-run"]) == 0
    assert trained_config.read_bytes() == before
    # what a run folder says it ran, runs again as written
    assert main(["run", "again", str(folder / "eval-config.yaml"), str(out)]) == 0
    again = json.loads((out / "runs" / "default" / "default" / "again" / "eval.json").read_text())
    assert again == results
    assert written["perplexity"]["store"] == "output/data/pystdlib"


@pytest.mark.parametrize(
    ("checkpoint", "options"),
    [
        ("my-gpt-run", ["--group", "sweeps"]),  # a run name: this group has none, the default has
        ("runs/default/default/my-gpt-run", []),  # relative to the output root
    ],
)
def test_evaluate_finds_a_checkpoint_by_run_name_or_under_the_output_root(
    trained, tmp_path, monkeypatch, checkpoint, options
):
    out, _ = trained
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), f"eval.checkpoint={checkpoint}"]) == 0
    overrides = [
        "eval.evaluations=[perplexity]",
        f"eval.perplexity.store={out / 'data' / 'pystdlib'}",
    ]
    assert (
        main(
            [
                "run",
                "by-name",
                str(cfg),
                str(out),
                *options,
                *overrides,
                "eval.perplexity.max_tokens=200",
            ]
        )
        == 0
    )
    group = options[1] if options else "default"
    assert (out / "runs" / "default" / group / "by-name" / "eval.json").is_file()


def test_a_missing_checkpoint_lists_the_places_looked(trained, tmp_path, monkeypatch, capsys):
    out, _ = trained
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), "eval.checkpoint=nope"]) == 0
    (tmp_path / "t.txt").write_text("def f():\n    pass\n")
    capsys.readouterr()
    args = ["run", "lost", str(cfg), str(out), "-p", "p", "eval.evaluations=[perplexity]"]
    assert main([*args, f"eval.perplexity.text={tmp_path / 't.txt'}"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: eval.checkpoint=nope: no run or checkpoint at")
        and err.count("\n") == 1
    )
    root = out.resolve()
    for place in [
        tmp_path.resolve() / "nope",
        root / "nope",
        root / "runs/p/default/nope",
        root / "runs/default/default/nope",
    ]:
        assert str(place) in err


def test_perplexity_refuses_a_store_of_another_tokenizer(trained, bpe_store, tmp_path, capsys):
    out, run = trained
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), f"eval.checkpoint={run}"]) == 0
    capsys.readouterr()
    overrides = ["eval.evaluations=[perplexity]", f"eval.perplexity.store={bpe_store}"]
    assert main(["run", "other-tok", str(cfg), str(out), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: perplexity: {bpe_store} was tokenized with huggingface:")
    assert "but the model uses bytes:utf-8" in err and err.count("\n") == 1
    assert not (out / "runs" / "default" / "default" / "other-tok").exists()


def test_perplexity_reads_only_the_tokens_it_scores(trained, scorer):
    path = trained[0] / "data" / "pystdlib"
    split = TokenStore.open(path).memmaps("train")
    evaluation = Perplexity(PerplexityConfig(store=str(path), split="train", max_tokens=1000))
    tracemalloc.start()
    try:
        tokens = evaluation.tokens(scorer.tokenizer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(tokens, np.concatenate(split)[:1001])
    size = sum(m.nbytes for m in split)
    assert peak < size / 8, (peak, size)


def test_a_score_that_is_not_finite_is_an_error(trained, tmp_path, training_text):
    model, _, identity = load_model(trained[1])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    broken = nnx.merge(graphdef, jax.tree.map(lambda x: x * np.nan, params), rest)
    scorer = Scorer(broken, load_tokenizer(identity), broken.config.block_size)
    (tmp_path / "t.txt").write_text(training_text[:500])
    stage = Stage.new("gpt/evaluate")
    override(
        [stage], ["eval.evaluations=[perplexity]", f"eval.perplexity.text={tmp_path / 't.txt'}"]
    )
    with pytest.raises(
        UserError, match="perplexity: loss is nan: the model's outputs are not finite"
    ):
        run_evaluations(["perplexity"], scorer, stage.cfg)


@pytest.mark.parametrize("normalize", [False, True])
def test_an_empty_context_scores_every_continuation_token(scorer, tmp_path, normalize):
    # one-token choices: unscored first tokens would tie every pair (or divide by zero)
    common = [" ", "e", "t", "\n", "s"]
    items = [{"context": "", "choices": ["\x07", c], "answer": 1} for c in common]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    result = MultipleChoice(MultipleChoiceConfig(path=str(path), normalize=normalize)).run(scorer)
    assert result == {"accuracy": 1.0, "items": 5.0}
    with pytest.raises(ValueError, match="at least one token"):
        scorer.continuation_logprobs([([], [101])])


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            '{"context": "a", "choices": ["", "b"], "answer": 0}',
            'choice 0 must be a non-empty string, got ""',
        ),
        (
            '{"context": "a", "choices": [1, 2], "answer": 0}',
            "choice 0 must be a non-empty string, got 1",
        ),
        (
            '{"context": "a", "choices": "bc", "answer": 0}',
            'choices must be a list of 2 or more strings, got "bc"',
        ),
        (
            '{"context": "a", "choices": ["b", "c"], "answer": 1.5}',
            "answer must be an integer index from 0 to 1, got 1.5",
        ),
        ('{"context": null, "choices": ["b", "c"], "answer": 0}', "context must be a string"),
        ('{"context": "a", "choices": ["b", "c"]}', "missing answer"),
        ('["a", "b"]', 'expected an object, got ["a", "b"]'),
        ('{"context": "a",', "not JSON"),
    ],
)
def test_bad_multiple_choice_items_are_named_by_file_and_line(
    trained, tmp_path, capsys, line, problem
):
    out, run = trained
    items = tmp_path / "mc.jsonl"
    items.write_text('{"context": "a", "choices": ["b", "c"], "answer": 0}\n' + line + "\n")
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), f"eval.checkpoint={run}"]) == 0
    capsys.readouterr()
    overrides = ["eval.evaluations=[multiple_choice]", f"eval.multiple_choice.path={items}"]
    assert main(["run", "bad-mc", str(cfg), str(out), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: multiple_choice: {items}:2: {problem}") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["eval.evaluations=[multiple_choice]", "eval.multiple_choice.path=/nonexistent.jsonl"],
            "no such file",
        ),
        (["eval.evaluations=[perplexity]", "eval.perplexity.store=/nonexistent"], "no token store"),
        (
            ["eval.evaluations=[perplexity]", "eval.perplexity.store=BPE"],
            "was tokenized with huggingface:",
        ),
        (
            ["eval.evaluations=[perplexity]", "eval.perplexity.store=STORE", "eval.batch_size=0"],
            "eval.batch_size",
        ),
        (
            [
                "eval.evaluations=[perplexity]",
                "eval.perplexity.store=STORE",
                "eval.perplexity.max_tokens=0",
            ],
            "max_tokens",
        ),
        (["eval.evaluations=[perplexity]"], "set exactly one of"),
        (["eval.evaluations=[bleu]"], "unknown evaluation 'bleu'"),
    ],
)
def test_check_evaluations_refuses_bad_settings_of_a_training_run(
    trained, bpe_store, overrides, message
):
    stores = {"STORE": str(trained[0] / "data" / "pystdlib"), "BPE": str(bpe_store)}
    stage = Stage.new("gpt/train/pretrain")
    override([stage], [re.sub(r"STORE|BPE", lambda m: stores[m.group()], o) for o in overrides])
    with pytest.raises(UserError, match=message):  # as a run checks: its config, then its data
        stage.check()
        check_evaluations(list(stage.cfg.eval.evaluations), stage.cfg, BytesTokenizer(), 64)


def test_check_evaluations_accepts_good_settings(trained, tmp_path):
    items = tmp_path / "mc.jsonl"
    items.write_text('{"context": "", "choices": ["b", "c"], "answer": 1}\n')
    stage = Stage.new("gpt/train/pretrain")
    settings = [
        "eval.evaluations=[perplexity, multiple_choice]",
        f"eval.perplexity.store={trained[0] / 'data' / 'pystdlib'}",
        f"eval.multiple_choice.path={items}",
    ]
    override([stage], settings)
    check_evaluations(["perplexity", "multiple_choice"], stage.cfg, BytesTokenizer(), 64)


_forward = nnx.jit(lambda model, tokens: model(tokens))  # compiled: eager ops compile one by one


def _summed_nll(model, rows: np.ndarray) -> float:
    """-log p(next token) summed over rows [n, k + 1] of tokens, from the model's logits."""
    logits = np.asarray(_forward(model, jnp.asarray(rows[:, :-1])), np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    chosen = np.take_along_axis(logits, rows[:, 1:, None].astype(np.int64), -1)[..., 0]
    return float((log_z - chosen).sum())


@pytest.mark.slow
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
    # each equals exp of the mean next-token loss of that step's weights (its checkpoint) over
    # the first 2000 scored tokens of the val split, in windows of the 64 trained positions
    tokens = np.concatenate(TokenStore.open(store).memmaps("val"))[:2001].astype(np.int32)
    checkpoints = out / "checkpoints" / "default" / "default" / "with-eval"
    windows = [
        np.stack([tokens[i : i + 65] for i in range(0, 1984, 64)]),  # 31 windows of 64
        tokens[1984:][None],  # and the 16 tokens left
    ]
    for step, logged in evals:
        model, _, _ = load_model(checkpoints / str(step))
        total = sum(_summed_nll(model, rows) for rows in windows)
        assert logged == pytest.approx(math.exp(total / 2000), rel=1e-5), step
    assert evals[1][1] < evals[0][1]  # three more steps of training lowered it


@pytest.mark.slow
def test_evaluate_scores_in_windows_of_the_training_length(trained, tmp_path, training_text):
    """A model trained on training.seq_len=16 of its 64 learned positions is scored on windows
    of 16: positions it never saw would make its loss meaningless."""
    out = trained[0]
    short = [*TINY, "training.seq_len=16", "training.steps=4", "logging.checkpoint_interval=4"]
    assert main(["run", "short-context", str(out / "train.yaml"), str(out), *short]) == 0
    run = out / "runs" / "default" / "default" / "short-context"
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), f"eval.checkpoint={run}"]) == 0
    text = tmp_path / "t.txt"
    text.write_text(training_text[:3000])
    args = ["eval.evaluations=[perplexity]", f"eval.perplexity.text={text}"]
    assert main(["run", "score-short", str(cfg), str(tmp_path), *args]) == 0
    results = json.loads((tmp_path / "runs/default/default/score-short/eval.json").read_text())
    model, _, identity = load_model(run)
    config = PerplexityConfig(text=str(text))
    by_window = {
        n: Perplexity(config).run(Scorer(model, load_tokenizer(identity), n))["loss"]
        for n in (16, 64)
    }
    assert results["eval/perplexity/loss"] == pytest.approx(by_window[16])
    assert by_window[16] != pytest.approx(by_window[64])
