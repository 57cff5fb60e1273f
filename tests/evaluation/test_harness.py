"""lm-evaluation-harness tasks in theseus, the fast part: names and task files checked without
the harness, bad input refused in one line, and the engine that batches the requests."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from tests.evaluation.tiny_harness import write_tasks
from theseus.cli import main
from theseus.data.tokenizers import BytesTokenizer
from theseus.errors import UserError
from theseus.evaluation import engine as engine_module
from theseus.evaluation.engine import Engine
from theseus.evaluation.generation import Generation, GenerationConfig
from theseus.evaluation.harness.run import metrics
from theseus.evaluation.harness.tasks import builtin_index, resolve_tasks, task_folders
from theseus.evaluation.scoring import Scorer
from theseus.evaluation.shapes import ladder
from theseus.model.models import GPT2, LLAMA, Transformer, TransformerConfig


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_names_resolve_to_tasks_groups_tags_and_globs(tasks):
    assert resolve_tasks(["tiny_mc", "tiny_all"], str(tasks)) == ["tiny_mc", "tiny_all"]
    assert resolve_tasks(["tiny_*"], str(tasks)) == ["tiny_all", "tiny_gen", "tiny_mc", "tiny_roll"]
    assert resolve_tasks(["arc_easy", "ai2_arc", "mmlu"], None) == ["arc_easy", "ai2_arc", "mmlu"]
    file = tasks / "tiny_mc.yaml"
    assert resolve_tasks([str(file)], None) == [str(file.resolve())]


def test_only_the_folders_a_task_uses_are_indexed():
    index = builtin_index()
    (arc,) = task_folders(["arc_easy", "arc_challenge"], index)
    assert arc.name == "arc" and (arc / "arc_easy.yaml").is_file()
    # a tag reaches the folders of its tasks
    assert task_folders(["ai2_arc"], index) == [arc]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--tasks", "no_such_task"], ["harness: unknown task 'no_such_task'"]),
        (["--tasks", "tiny_mcc", "--include-path", "TASKS"], ["did you mean tiny_mc"]),
        (["--tasks", "broken", "--include-path", "BROKEN"], ["has no dataset_path"]),
        (["--tasks", "tiny_mc", "--include-path", "UNPARSED"], ["does not parse as YAML"]),
        (["--tasks", "tiny_mc", "--include-path", "TASKS", "--limit", "0"], ["--limit"]),
        (["--tasks", ",", "--include-path", "TASKS"], ["name at least one task"]),
    ],
)
def test_eval_bad_input_is_one_line(tasks, tmp_path, capsys, args, fragments):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "b.yaml").write_text(
        'task: broken\ndoc_to_text: "q"\ndoc_to_target: "a"\ntest_split: t\n'
    )
    unparsed = tmp_path / "unparsed"
    unparsed.mkdir()
    (unparsed / "u.yaml").write_text("task: [unclosed\n")
    places = {"TASKS": str(tasks), "BROKEN": str(broken), "UNPARSED": str(unparsed)}
    args = [places.get(a, a) for a in args]
    _one_line_error(capsys, main(["eval", str(tmp_path), *args]), *fragments)


def test_eval_refuses_a_folder_without_a_checkpoint(tasks, tmp_path, capsys):
    run = tmp_path / "runs" / "default" / "default" / "empty"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    code = main(["eval", str(run), "--tasks", "tiny_mc", "--include-path", str(tasks)])
    _one_line_error(capsys, code, "no complete checkpoint")
    code = main(["eval", str(tmp_path / "nowhere"), "--tasks", "tiny_mc"])
    _one_line_error(capsys, code, "no such run, checkpoint or Hugging Face folder")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["eval.harness.tasks=[mmlu, hellaswag_nope]"], "unknown task 'hellaswag_nope'"),
        (["eval.harness.tasks=[broken]", "eval.harness.include_path=BROKEN"], "no dataset_path"),
        (["eval.harness.tasks=[tiny_mc]", "eval.harness.include_path=/nowhere"], "not a folder"),
        (["eval.harness.limit=0"], "eval.harness.limit=0: must be >= 1"),
        (["eval.evaluations=[mmlu]"], "unknown evaluation 'mmlu'"),
    ],
)
def test_configure_refuses_unknown_tasks_and_bad_task_files(tmp_path, capsys, overrides, fragment):
    """Found when the config is written, not when the evaluation runs."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "b.yaml").write_text("task: broken\ntest_split: test\n")
    overrides = [o.replace("BROKEN", str(broken)) for o in overrides]
    code = main(["configure", "gpt/evaluate", str(tmp_path / "e.yaml"), *overrides])
    _one_line_error(capsys, code, fragment)
    assert not (tmp_path / "e.yaml").exists()


def test_configure_accepts_harness_tasks(tasks, tmp_path):
    settings = [
        "eval.evaluations=[harness]",
        "eval.harness.tasks=[tiny_all, arc_easy]",
        f"eval.harness.include_path={tasks}",
        "eval.harness.limit=10",
    ]
    assert main(["configure", "gpt/train/pretrain", str(tmp_path / "t.yaml"), *settings]) == 0
    assert "tiny_all" in (tmp_path / "t.yaml").read_text()


def test_results_become_task_slash_metric():
    results = {
        "results": {
            "arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1},
            "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"},
        }
    }
    assert metrics(results) == {"arc_easy/acc": 0.5, "gsm8k/exact_match,strict-match": 0.25}


class NoMask(Transformer):
    def __call__(self, tokens, positions=None, *, cache=None, deterministic=True):
        return super().__call__(tokens, positions, cache=cache, deterministic=deterministic)


_MODELS: dict[tuple[str, int], Transformer] = {}
WINDOWED = dataclasses.replace(LLAMA, sliding_window=6)


def tiny_scorer(preset: TransformerConfig, batch: int, block: int = 64) -> Scorer:
    """A random 2-layer model of the bytes vocabulary, made once per preset and window; its
    weights drawn by NumPy (JAX's initializers compile one program per shape)."""
    import jax
    from flax import nnx

    key = (repr(preset), block)
    if key not in _MODELS:
        config = dataclasses.replace(
            preset, n_layers=2, n_heads=4, d_model=32, block_size=block, dtype="float32"
        )
        config = dataclasses.replace(config, vocab_size=257)
        abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract)
        rng = np.random.default_rng(0)
        weights = jax.tree.map(lambda x: rng.normal(0.0, 0.3, x.shape).astype(x.dtype), state)
        _MODELS[key] = nnx.merge(graphdef, weights)
    return Scorer(_MODELS[key], BytesTokenizer(), block, batch)


def _requests(seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Questions with several answers (one context, shared), single ones, and some longer than
    the window (cut from the left)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(7):
        context = rng.integers(0, 256, rng.integers(1, 40)).tolist()
        for _ in range(rng.integers(1, 5)):
            pairs.append((context, rng.integers(0, 256, rng.integers(1, 9)).tolist()))
    return pairs


@pytest.mark.parametrize("preset", [GPT2, LLAMA, WINDOWED], ids=["gpt2", "llama", "window"])
def test_scores_do_not_depend_on_batching_or_shared_contexts(preset):
    """Batch 1 or 16, packed rows (a question's answers sharing their context) or a row per
    request, and the plain scorer: the same log-probabilities."""
    pairs = _requests()
    one, many = Engine(tiny_scorer(preset, 1, 32)), Engine(tiny_scorer(preset, 16, 32))
    assert one.packs and many.packs
    # a model of the user's that takes no mask: each request a row of its own
    config = nnx.merge(many.scorer.graphdef, many.scorer.state).config
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: NoMask(config, rngs=nnx.Rngs(0))))
    plain = Engine(Scorer(nnx.merge(graphdef, many.scorer.state), BytesTokenizer(), 32, 16))
    assert not plain.packs
    alone = plain.score(pairs)
    reference = one.scorer.continuation_logprobs([((c + k)[-33 : -len(k)], k) for c, k in pairs])
    for a, b, (logp, _), want in zip(
        one.score(pairs), many.score(pairs), alone, reference, strict=True
    ):
        assert a[0] == pytest.approx(b[0], abs=1e-5) and a[1] == b[1]
        assert a[0] == pytest.approx(logp, abs=1e-5) and a[0] == pytest.approx(want[0], abs=1e-5)


def test_cpu_calls_take_fewer_rows_than_would_leave_the_caches_and_score_the_same(monkeypatch):
    pairs = _requests(1)
    engine = Engine(tiny_scorer(GPT2, 16, 32))
    assert engine.on_cpu and engine._call_rows(64) == engine.rows  # 16 rows of 64: 128 KiB
    whole = engine.score(pairs)
    row = 64 * 32 * 4  # a row of 64 tokens, d_model 32, float32
    monkeypatch.setattr(engine_module, "CPU_CALL_BYTES", 2 * row)
    assert engine._call_rows(64) == min(engine.rows, 2 * engine.shards)
    assert engine._call_rows(10 * 64) == engine.shards  # at least a row a device
    for a, b in zip(engine.score(pairs), whole, strict=True):
        assert a[0] == pytest.approx(b[0], abs=1e-5) and a[1] == b[1]


def test_greedy_ends_at_end_of_text_and_may_stop_early():
    engine = Engine(tiny_scorer(GPT2, 4))
    prompts = [[104, 105], [1, 2, 3, 4, 5, 6, 7], [120] * 16, [7]]
    free = engine.generate(prompts, 20, None)
    assert [len(row) for row in free] == [20] * 4
    assert Engine(tiny_scorer(GPT2, 1)).generate(prompts, 20, None) == free  # batched alike
    eot = free[0][5]
    ended = engine.generate(prompts, 20, eot)
    for row, full in zip(ended, free, strict=True):
        assert row == (full[: full.index(eot)] if eot in full else full)
    # a row whose stop sequence shows up is left alone after the decode call that found it
    early = engine.generate(prompts, 20, None, lambda tokens: len(tokens) >= 3)
    for row, full in zip(early, free, strict=True):
        assert 3 <= len(row) < 20 and row == full[: len(row)]


def test_the_ladder_of_padded_lengths_is_short():
    assert ladder(128) == [16, 24, 32, 48, 64, 96, 128]
    assert len(ladder(32768)) < 30


def test_generation_scores_exact_match_and_patterns(tmp_path):
    scorer = tiny_scorer(GPT2, 4)
    prompts = ["ab", "hello", "x"]
    generated = Generation(GenerationConfig(max_new=6, stop=[])).generations(
        scorer, [{"prompt": p} for p in prompts]
    )
    items = [
        {"prompt": "ab", "answer": generated[0].strip()},
        {"prompt": "hello", "pattern": "^" + re.escape(generated[1])},
        {"prompt": "x", "answer": generated[2] + "not it"},
    ]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    config = GenerationConfig(path=str(path), max_new=6, stop=[])
    assert Generation(config).run(scorer) == {"exact_match": pytest.approx(2 / 3), "items": 3.0}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"prompt": "a"}', "give an answer or a pattern"),
        ('{"answer": "a"}', "no prompt string"),
        ('{"prompt": "a", "pattern": "("}', "is not a regular expression"),
        ("{", "not JSON"),
    ],
)
def test_bad_generation_items_are_named_by_file_and_line(tmp_path, line, problem):
    path = tmp_path / "g.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n' + line + "\n")
    with pytest.raises(UserError, match=f"generation: {path}:2: .*{problem}"):
        Generation(GenerationConfig(path=str(path))).check()
