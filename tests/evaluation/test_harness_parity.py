"""lm-evaluation-harness tasks scored by theseus equal those scored by the harness's own Hugging
Face backend (`hf`, PyTorch), on tiny random GPT-2 and Llama folders and tiny local tasks; and
neither the batch size nor the number of devices changes them. Offline throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.evaluation.tiny_harness import TASKS, write_hf_model, write_tasks
from theseus.cli import main
from theseus.errors import UserError
from theseus.evaluation.engine import engine_for
from theseus.evaluation.harness.lm import TheseusLM
from theseus.evaluation.harness.run import load_tasks
from theseus.evaluation.source import load_scored

# each test loads torch and transformers, converts models and compiles a few shapes
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("harness")
    found = {kind: write_hf_model(root / kind, kind) for kind in ("gpt2", "llama")}
    return {**found, "tasks": write_tasks(root / "tasks")}


def evaluated(lm: Any, folders: dict[str, Path]) -> dict[str, Any]:
    from lm_eval.evaluator import evaluate

    loaded = load_tasks(TASKS, str(folders["tasks"]))
    return evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True)


def theseus_lm(folder: Path, batch: int) -> TheseusLM:
    scorer = load_scored(folder, None, batch).scorer
    return TheseusLM(engine_for(scorer, scorer.tokenizer.vocab_size), scorer.tokenizer, folder)


def responses(results: dict[str, Any], task: str) -> list[Any]:
    return [resp[0] for sample in results["samples"][task] for resp in sample["resps"]]


def assert_same(ours: dict[str, Any], theirs: dict[str, Any], tolerance: float) -> None:
    """Every answer of every task: log-likelihoods to `tolerance` (or 1e-6 of their size: a sum
    of hundreds of float32 terms), greedy flags and generated texts exactly; and so the metrics."""
    for task in TASKS:
        for a, b in zip(responses(ours, task), responses(theirs, task), strict=True):
            if isinstance(b, str):  # a generation
                assert a == b, task
            elif isinstance(b, tuple):  # (log-likelihood, greedy)
                assert a[0] == pytest.approx(b[0], abs=tolerance, rel=1e-6), task
                assert a[1] == b[1], task
            else:  # a rolling log-likelihood
                assert a == pytest.approx(b, abs=tolerance, rel=1e-6), task
    for task, metrics in theirs["results"].items():
        for key, value in metrics.items():
            if "stderr" in key or not isinstance(value, float):
                continue
            if key.startswith(("acc", "exact_match")):
                assert ours["results"][task][key] == value, (task, key)
            elif "perplexity" in key or "bits_per_byte" in key:
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-5), (task, key)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_theseus_scores_as_the_harness_hf_backend(folders, kind):
    from lm_eval.models.huggingface import HFLM

    ours = evaluated(theseus_lm(folders[kind], 16), folders)
    hf = HFLM(pretrained=str(folders[kind]), device="cpu", dtype="float32", batch_size=16)
    assert_same(ours, evaluated(hf, folders), 1e-4)
    # the random model answers some questions right and some wrong: accuracy tells them apart
    assert 0 < ours["results"]["tiny_mc"]["acc,none"] < 1


def test_batch_size_does_not_change_results(folders):
    one = evaluated(theseus_lm(folders["gpt2"], 1), folders)
    assert_same(one, evaluated(theseus_lm(folders["gpt2"], 16), folders), 1e-5)


def test_two_devices_give_the_results_of_one(folders, tmp_path, capsys):
    args = [
        "eval",
        str(folders["llama"]),
        "--tasks",
        "tiny_all",
        "--include-path",
        str(folders["tasks"]),
        "--bootstrap-iters",
        "0",
    ]
    assert main([*args, "-o", str(tmp_path / "one")]) == 0
    assert "tiny_mc" in capsys.readouterr().out  # the table
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-m", "theseus.cli", *args, "-o", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "harness.json").read_text()) for n in ("one", "two"))
    assert (one["config"]["devices"], two["config"]["devices"]) == (1, 2)
    for task, metrics in one["results"].items():
        for key, value in metrics.items():
            if isinstance(value, float):
                assert two["results"][task][key] == pytest.approx(value, rel=1e-6), (task, key)
    assert (tmp_path / "two" / "harness.md").read_text().startswith("|")


def test_a_hub_task_offline_is_one_line(tmp_path, monkeypatch):
    import theseus.evaluation.harness.run as run

    monkeypatch.setattr(run, "_hub_reachable", lambda: False)
    (tmp_path / "hub.yaml").write_text(
        "task: hub_task\ndataset_path: theseus-tests/no-such-dataset\ntest_split: test\n"
        'output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_target: 0\n'
        'doc_to_choice: ["a", "b"]\n'
    )
    with pytest.raises(UserError) as caught:
        load_tasks(["hub_task"], str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    assert "task hub_task reads theseus-tests/no-such-dataset from the Hugging Face hub" in message
    assert "dataset_path: json" in message and "--include-path" in message


def test_local_tasks_never_ask_the_hub(folders, monkeypatch):
    import theseus.evaluation.harness.run as run

    def refuse() -> bool:
        raise AssertionError("a local task asked whether the hub answers")

    monkeypatch.setattr(run, "_LOADED", {})
    monkeypatch.setattr(run, "_hub_reachable", refuse)
    loaded = load_tasks(["tiny_all"], str(folders["tasks"]))
    assert set(loaded["tasks"]) == set(TASKS)


def _sampled(lm: TheseusLM, folders: dict[str, Path], tmp_path: Path, settings: str) -> list[str]:
    """tiny_gen's texts with `settings` in its generation_kwargs."""
    from lm_eval.evaluator import evaluate

    task = (folders["tasks"] / "tiny_gen.yaml").read_text()
    task = task.replace("task: tiny_gen", "task: tiny_draw")
    task = task.replace("do_sample: false}", settings + "}")
    folder = tmp_path / str(len(list(tmp_path.iterdir())))  # tasks are indexed once per folder
    folder.mkdir()
    (folder / "tiny_draw.yaml").write_text(task)
    loaded = load_tasks(["tiny_draw"], str(folder))
    return responses(evaluate(lm=lm, task_dict=loaded, log_samples=True), "tiny_draw")


def test_a_task_that_samples_draws_with_its_settings_and_the_harness_seed(folders, tmp_path):
    lm = theseus_lm(folders["gpt2"], 4)
    greedy = _sampled(lm, folders, tmp_path, "do_sample: false")
    drawn = _sampled(lm, folders, tmp_path, "do_sample: true, temperature: 1.5")
    assert drawn == _sampled(lm, folders, tmp_path, "do_sample: true, temperature: 1.5")
    assert drawn != greedy
    # only the likeliest id left to draw from: the greedy texts
    assert _sampled(lm, folders, tmp_path, "do_sample: true, top_k: 1") == greedy
    with pytest.raises(UserError, match=r"tiny_draw asks for generation settings .*num_beams"):
        _sampled(lm, folders, tmp_path, "do_sample: false, num_beams: 4")
