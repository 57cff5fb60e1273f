"""The README's extension example (MyModel + PretrainMyModel) runs as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from tests.training.conftest import TINY, run_dir
from theseus.cli import main

# trains the README's extension model (about 11 s)
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks_after(marker: str) -> tuple[str, list[list[str]]]:
    text = README.read_text()
    rest = text[text.index(marker) :]
    python, bash = re.findall(r"```python\n(.*?)```.*?```bash\n(.*?)```", rest, re.S)[0]
    return python, [shlex.split(line) for line in bash.strip().splitlines()]


def test_readme_model_and_trainer_example(root, tmp_path, capsys, monkeypatch):
    python, commands = _blocks_after("A model and its pretraining job (`my_model.py`):")
    (tmp_path / "my_model.py").write_text(python)
    monkeypatch.chdir(tmp_path)
    configure, run = commands
    assert configure[:2] == ["theseus", "configure"] and run[:2] == ["theseus", "run"]
    assert main(configure[1:]) == 0
    written = (tmp_path / "my.yaml").read_text()
    assert "job: my/train/pretrain" in written and "n_layers: 4" in written
    output = run[4]
    args = [a if a != output else str(root) for a in run[1:]]
    assert main([*args, *TINY, "training.steps=4", "logging.checkpoint_interval=1000"]) == 0
    err = capsys.readouterr().err
    assert "schedule wsd" in err

    from theseus.inference import load_model

    model, cfg, tokenizer = load_model(run_dir(root, "my-run"))
    assert type(model).__name__ == "MyModel"
    assert cfg.architecture.n_layers == 2 and tokenizer["backend"] == "bytes"
    tokens = jnp.asarray([list(b"def main():\n    return 0\n")], jnp.int32)
    logits = np.asarray(model(tokens))
    assert logits.shape == (1, tokens.shape[1], 384)
    # the class it extends, run on the same trained parameters, gives the uncapped logits
    uncapped = np.asarray(super(type(model), model).__call__(tokens))
    np.testing.assert_allclose(logits, 30.0 * np.tanh(uncapped / 30.0), rtol=1e-6, atol=1e-6)
    real = np.isfinite(uncapped)  # the store's 257 ids; the padding ids' logits are -inf
    assert real.sum() == tokens.shape[1] * 257
    # the cap moved the largest logits by more than that tolerance: the check tells them apart
    assert not np.allclose(logits[real], uncapped[real], rtol=1e-6, atol=1e-6)
