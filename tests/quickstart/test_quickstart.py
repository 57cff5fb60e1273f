"""The README's first command, shortened: `theseus quickstart OUT --steps N` end to end."""

import subprocess
import sys

import pytest

from theseus.checkpoint import locate

# the whole quickstart: tokenize, train, sample and plot in a subprocess (about 45 s)
pytestmark = pytest.mark.slow


def _quickstart(out) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "theseus.cli", "quickstart", str(out), "--steps", "12"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_quickstart_leaves_checkpoint_samples_plot_and_commands(tmp_path):
    out = tmp_path / "qs"
    r = _quickstart(out)
    assert r.returncode == 0, r.stderr[-3000:]
    run = out / "runs" / "default" / "default" / "quickstart-gpt"
    assert locate(run)[1] == 12
    assert (run / "loss.png").stat().st_size > 0
    for prompt in ("def ", "class ", "import "):
        assert prompt in r.stdout
    for command in (
        f"theseus run quickstart-tokenize {out}/tokenize.yaml {out}",
        f"theseus run quickstart-gpt {out}/train.yaml {out}",
        f"theseus sample {run} 'def ' 'class ' 'import '",
    ):
        assert command in r.stderr
    # run again: the store is reused and the finished run is not trained twice
    again = _quickstart(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert locate(run)[1] == 12
