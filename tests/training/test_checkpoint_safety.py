"""What a run refuses to checkpoint or restore: weights gone non-finite, a checkpoint of another
tokenizer, one with nothing left to train; and a run that could not start leaves no folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stores import write_bpe_store
from tests.training.conftest import ckpt_dir, cli_args, run_dir
from theseus.cli import main
from theseus.data.store import TokenStore
from theseus.training.metrics import read_metrics

EXPLODE = ("optimization.lr=1e30", "optimization.warmup_steps=0", "optimization.clip_norm=null")


@pytest.mark.slow
def test_weights_gone_non_finite_are_never_checkpointed(root, train_yaml, capsys):
    """Metrics are fetched every logging.interval steps; a checkpoint in between still waits
    for its steps' losses, so the NaN weights of step 2 never land on disk."""
    args = ("training.steps=3", "logging.interval=100", "logging.checkpoint_interval=1")
    assert main(cli_args("nan-between", train_yaml, root, *args, *EXPLODE)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: loss became non-finite at step 2 "), err
    assert "last checkpoint: step 1." in err, err
    assert sorted(p.name for p in ckpt_dir(root, "nan-between").iterdir() if p.name.isdigit()) == [
        "1"
    ]


@pytest.fixture(scope="module")
def source_run(root, train_yaml) -> str:
    assert main(cli_args("restore-src", train_yaml, root, "training.steps=3")) == 0
    return str(run_dir(root, "restore-src"))


@pytest.fixture(scope="module")
def bpe_store(root) -> str:
    return write_bpe_store(root, root / "tok.yaml").name


@pytest.mark.slow
def test_restores_that_cannot_apply_fail_before_making_folders(
    root, train_yaml, source_run, bpe_store, capsys
):
    cases = {
        ("training.steps=3",): "its checkpoint is at step 3 and this run ends at step 3",
        (
            f"training.dataset=[{{name: {bpe_store}}}]",
            "training.restore_weights_only=true",
        ): "the checkpoint was trained with tokenizer bytes:",
    }
    for overrides, message in cases.items():
        args = [*cli_args("restored", train_yaml, root, *overrides), "--restore", source_run]
        assert main(args) == 2, overrides
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --restore ") and message in err, err
        assert len(err.splitlines()) == 1, err
        assert not run_dir(root, "restored").exists() and not ckpt_dir(root, "restored").exists()


@pytest.mark.slow
def test_a_restore_that_does_not_fit_leaves_no_folders(root, train_yaml, source_run, capsys):
    args = ["training.steps=5", "architecture.d_model=64"]
    assert main([*cli_args("misfit", train_yaml, root, *args), "--restore", source_run]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit this model" in err and len(err.splitlines()) == 1, err
    assert not run_dir(root, "misfit").exists() and not ckpt_dir(root, "misfit").exists()


@pytest.mark.slow
def test_resuming_on_a_store_of_another_tokenizer_is_refused(root, train_yaml, bpe_store, capsys):
    assert main(cli_args("switched", train_yaml, root, "training.steps=2")) == 0
    capsys.readouterr()
    other = (f"training.dataset=[{{name: {bpe_store}}}]", "training.steps=4")
    assert main(cli_args("switched", train_yaml, root, *other)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the checkpoint was trained with tokenizer bytes:" in err, err
    assert f"the token store {bpe_store} holds huggingface:" in err, err
    assert (ckpt_dir(root, "switched") / "2").is_dir()  # the run's own checkpoint is kept


@pytest.mark.slow
def test_a_validation_split_shorter_than_a_sequence_turns_validation_off(
    root, train_yaml, tmp_path: Path, capsys
):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # documents go to validation by a hash of their text: 10% of these put 56 tokens there
    (corpus / "long.txt").write_text("some words here. " * 400)
    for i in range(60):
        (corpus / f"{i}.txt").write_text(f"note {i}")
    _tokenize_files(root, root / "tok.yaml", corpus, "tiny-val", "data.val_pct=10")
    capsys.readouterr()
    args = (
        "training.dataset=[{name: tiny-val}]",
        "architecture.block_size=64",
        "training.steps=2",
        "logging.val_interval=1",
    )
    assert main(cli_args("tiny-val", train_yaml, root, *args)) == 0
    err = capsys.readouterr().err
    assert "the validation split of tiny-val holds 56 tokens, less than one sequence of 65" in err
    assert "validation is off" in err, err


@pytest.mark.slow
def test_a_blockwise_validation_split_of_short_rows_is_still_scored(
    root, train_yaml, tmp_path: Path, capsys
):
    """A blockwise row is one sequence, padded: a few short examples are a validation set even
    when their real tokens add up to less than one sequence."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"{i}.txt").write_text(f"note {i}")
    blockwise = root / "blockwise.yaml"
    assert main(["configure", "data/tokenize_blockwise_dataset", str(blockwise)]) == 0
    _tokenize_files(root, blockwise, corpus, "short-rows", "data.val_pct=25", "data.seq_len=64")
    store = TokenStore.open(root / "data" / "short-rows")
    assert store.n_rows("val") >= 1 and store.n_tokens("val") < 65
    args = (
        "training.dataset=[{name: short-rows}]",
        "architecture.block_size=64",
        "training.steps=2",
        "logging.val_interval=1",
    )
    capsys.readouterr()
    assert main(cli_args("short-rows", train_yaml, root, *args)) == 0
    assert "validation is off" not in capsys.readouterr().err
    scored = [
        r for r in read_metrics(run_dir(root, "short-rows") / "metrics.jsonl") if "val_loss" in r
    ]
    assert [r["step"] for r in scored] == [1, 2]


def _tokenize_files(root: Path, job_yaml: Path, corpus: Path, store: str, *settings: str) -> None:
    """The .txt files of `corpus` as token store `store` (bytes tokenizer), by the job `job_yaml`."""
    tokenize = [
        "data.name=files",
        f"data.paths=[{corpus}/*.txt]",
        f"data.store={store}",
        "tokenizer.backend=bytes",
        *settings,
    ]
    assert main(["run", f"tok-{store}", str(job_yaml), str(root), *tokenize]) == 0


def test_a_save_failing_as_the_checkpointer_closes_is_reported_not_raised(tmp_path, monkeypatch):
    """Closing runs on every way out of a run; an Orbax error there (a background write that hit
    a full disk, say) must not replace the run's own outcome with a traceback. The failure is
    injected: a disk that fills at exactly that moment cannot be arranged reliably."""
    from theseus.checkpoint import Checkpointer

    checkpointer = Checkpointer(tmp_path / "ckpt")

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointer._manager, "close", full_disk)
    checkpointer.close()
    assert checkpointer.failures == [
        "finishing the checkpoint writes failed: [Errno 28] No space left on device; "
        "no earlier checkpoint exists"
    ]


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_named_with_the_way_back(root, train_yaml, capsys, tmp_path):
    args = cli_args("damaged-ckpt", train_yaml, root, "logging.checkpoint_interval=2")
    assert main([*args, "training.steps=4"]) == 0
    latest = ckpt_dir(root, "damaged-ckpt") / "4"
    (latest / "params" / "_METADATA").write_text("garbage")
    capsys.readouterr()
    assert main([*args, "training.steps=6"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: checkpoint {latest.resolve()} cannot be read (")
        and len(err.splitlines()) == 1
    ), err
    assert "move it out of" in err
    latest.rename(tmp_path / "4")
    assert main([*args, "training.steps=6"]) == 0
    assert "from its checkpoint at step 2" in capsys.readouterr().err
