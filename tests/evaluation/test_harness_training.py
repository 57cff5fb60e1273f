"""Harness tasks and the generation evaluation during training: logged at eval.interval as
eval/<task>/<metric>, once each across a resume, drawn by `theseus plot`; and `gpt/evaluate`
with harness tasks, which writes the harness's results beside eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.evaluation.tiny_harness import write_tasks
from theseus.cli import main

# training runs and their compiles
pytestmark = pytest.mark.slow

TINY = [
    "training.dataset=[{name: pystdlib}]",
    "architecture.n_layers=2",
    "architecture.d_model=32",
    "architecture.n_heads=4",
    "architecture.block_size=48",
    "architecture.dtype=float32",
    "training.batch_size=8",
    "optimization.warmup_steps=2",
    "logging.interval=2",
    "logging.val_interval=0",
    "logging.checkpoint_interval=100",
]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder with a small bytes store of the standard library, a train config and
    the tiny tasks."""
    out = tmp_path_factory.mktemp("train") / "output"
    tok = out / "tok.yaml"
    assert (
        main(["configure", "data/tokenize_variable_dataset", str(tok), "data.name=pystdlib"]) == 0
    )
    overrides = ["tokenizer.backend=bytes", "data.max_tokens=30000", "data.val_pct=10"]
    assert main(["run", "tok", str(tok), str(out), *overrides]) == 0
    assert main(["configure", "gpt/train/pretrain", str(out / "train.yaml")]) == 0
    write_tasks(out / "tasks", docs=6)
    (out / "gen.jsonl").write_text('{"prompt": "def f(", "pattern": "."}\n')
    return out


def evals(out: Path, name: str) -> list[dict]:
    lines = (out / "runs" / "default" / "default" / name / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if any(k.startswith("eval/") for k in r)]


def test_harness_tasks_are_logged_at_the_interval_and_once_across_a_resume(out, tmp_path):
    settings = [
        *TINY,
        "eval.evaluations=[harness, generation]",
        "eval.interval=4",
        "eval.harness.tasks=[tiny_mc, tiny_roll]",
        f"eval.harness.include_path={out / 'tasks'}",
        "eval.harness.limit=4",
        "eval.harness.bootstrap_iters=0",
        f"eval.generation.path={out / 'gen.jsonl'}",
        "eval.generation.max_new=4",
    ]
    train = str(out / "train.yaml")
    assert main(["run", "with-evals", train, str(out), *settings, "training.steps=8"]) == 0
    first = evals(out, "with-evals")
    assert [r["step"] for r in first] == [4, 8]
    for record in first:
        assert 0 <= record["eval/tiny_mc/acc"] <= 1 and record["eval/tiny_mc/acc_norm"] >= 0
        assert record["eval/tiny_roll/word_perplexity"] > 1
        assert record["eval/generation/exact_match"] == 1.0  # any character matches "."
    # a longer run of the same name resumes at step 8: its evaluations follow, none repeated
    assert main(["run", "with-evals", train, str(out), *settings, "training.steps=12"]) == 0
    again = evals(out, "with-evals")
    assert [r["step"] for r in again] == [4, 8, 12] and again[:2] == first
    png = tmp_path / "curves.png"
    assert (
        main(["plot", str(out / "runs" / "default" / "default" / "with-evals"), "-o", str(png)])
        == 0
    )
    assert png.stat().st_size > 0


def test_a_missing_task_stops_a_run_before_its_first_step(out, capsys):
    settings = [*TINY, "eval.evaluations=[harness]", "eval.harness.tasks=[no_such_task]"]
    capsys.readouterr()
    assert main(["run", "bad-task", str(out / "train.yaml"), str(out), *settings]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: harness: unknown task 'no_such_task'") and err.count("\n") == 1
    assert not (out / "runs" / "default" / "default" / "bad-task").exists()


def test_evaluate_job_writes_the_harness_results(out, tmp_path):
    run = out / "runs" / "default" / "default" / "with-evals"
    if not run.exists():  # this test alone
        assert (
            main(
                ["run", "with-evals", str(out / "train.yaml"), str(out), *TINY, "training.steps=4"]
            )
            == 0
        )
    cfg = tmp_path / "eval.yaml"
    settings = [
        f"eval.checkpoint={run}",
        "eval.evaluations=[harness]",
        "eval.harness.tasks=[tiny_all]",
        f"eval.harness.include_path={out / 'tasks'}",
        "eval.harness.bootstrap_iters=0",
    ]
    assert main(["configure", "gpt/evaluate", str(cfg), *settings]) == 0
    assert main(["run", "harness-eval", str(cfg), str(out)]) == 0
    folder = out / "runs" / "default" / "default" / "harness-eval"
    results = json.loads((folder / "eval.json").read_text())
    assert {"eval/tiny_mc/acc", "eval/tiny_roll/bits_per_byte", "eval/tiny_gen/exact_match"} <= set(
        results
    )
    harness = json.loads((folder / "harness.json").read_text())
    assert harness["results"]["tiny_mc"]["acc,none"] == results["eval/tiny_mc/acc"]
    assert harness["group_subtasks"]["tiny_all"]
    assert "tiny_mc" in (folder / "harness.md").read_text()
