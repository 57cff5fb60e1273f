"""`theseus export RUN OUT_DIR` on real runs: transformers loads the folder and computes what
theseus computes; the bytes tokenizer travels as a Hugging Face tokenizer."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tests.training.conftest import cli_args, run_dir
from theseus.cli import main
from theseus.inference import sample
from theseus.inference.load import load_trained

pytestmark = pytest.mark.slow  # each test trains a run first

PROMPTS = ["def ", "import os\n", "class A:"]


@pytest.fixture(scope="module")
def gpt_run(root, train_yaml):
    args = cli_args("export-gpt", train_yaml, root, "training.steps=6")
    assert main([*args, "logging.checkpoint_interval=6"]) == 0
    return run_dir(root, "export-gpt")


def test_transformers_loads_the_export_and_agrees(gpt_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(gpt_run), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    model, _, tokenizer = load_trained(gpt_run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for prompt in PROMPTS:
        # the exported tokenizer is the bytes tokenizer: each byte its own id
        ids = hf_tokenizer(prompt)["input_ids"]
        assert ids == tokenizer.encode(prompt) == list(prompt.encode())
        ours = np.asarray(model(jnp.asarray([ids])))[0, :, : hf.config.vocab_size]
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(theirs, ours, atol=1e-4)
    # greedy continuations agree token for token
    expected = sample(model, tokenizer, PROMPTS, 8, temperature=0)
    for prompt, text in zip(PROMPTS, expected, strict=True):
        ids = torch.tensor([hf_tokenizer(prompt)["input_ids"]])
        generated = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=256)
        assert hf_tokenizer.decode(generated[0, ids.shape[1] :]) == text


def test_bf16_export_holds_bf16_weights(gpt_run, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "hf16"
    assert main(["export", str(gpt_run), str(out), "--dtype", "bf16"]) == 0
    files = sorted(out.glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert hf.dtype == torch.bfloat16


def test_a_folder_in_the_way_is_refused_and_kept(gpt_run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", str(gpt_run), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine")]


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run or checkpoint" in err
    assert not (tmp_path / "out").exists()


def test_generation_config_names_the_end_of_text(gpt_run, tmp_path):
    out = tmp_path / "gen"
    assert main(["export", str(gpt_run), str(out)]) == 0
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 256


def test_the_evaluation_job_scores_an_exported_folder_as_its_run(gpt_run, root, tmp_path):
    """The same weights score the same whether read from the run or from the folder."""
    out = tmp_path / "hf-eval"
    assert main(["export", str(gpt_run), str(out)]) == 0
    text = tmp_path / "text.txt"
    text.write_text("import sys\n\ndef main(argv):\n    return len(argv)\n" * 20)
    cfg = tmp_path / "eval.yaml"
    assert main(["configure", "gpt/evaluate", str(cfg), f"eval.checkpoint={gpt_run}"]) == 0
    results = {}
    for name, target in (("of-run", gpt_run), ("of-folder", out)):
        settings = [
            f"eval.checkpoint={target}",
            "eval.evaluations=[perplexity]",
            f"eval.perplexity.text={text}",
            "eval.context=32",
        ]
        assert main(["run", name, str(cfg), str(root), *settings]) == 0
        results[name] = json.loads((run_dir(root, name) / "eval.json").read_text())
    run, folder = results["of-run"], results["of-folder"]
    assert folder["eval/perplexity/tokens"] == run["eval/perplexity/tokens"] > 0
    assert folder["eval/perplexity/loss"] == pytest.approx(run["eval/perplexity/loss"], rel=1e-5)
