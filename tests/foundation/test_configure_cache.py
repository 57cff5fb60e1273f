"""`theseus configure` from the schema cache: no JAX, never stale, the same output as without it;
and settings naming a registered entry refused at configure as `run` refuses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from tests.foundation.conftest import TOYJOBS, theseus
from theseus.config import Schema, field
from theseus.config.stored import StoredSchema, Unstorable, schema_to_json
from theseus.config.yaml_files import to_yaml
from theseus.errors import UserError
from theseus.job import Request
from theseus.registry import JOBS, REGISTRIES
from theseus.schema_cache import SchemaCache
from theseus.stages import REGISTERED, ConfigUpdate, JobSchemas


def _aged(path: Path, seconds_ago: float = 3600) -> None:
    """A file changed moments before a configure is not trusted by the cache: age it."""
    then = time.time() - seconds_ago
    os.utime(path, (then, then))


def _configure(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return theseus("configure", *args, env={"XDG_CACHE_HOME": str(tmp / "cache"), **env})


def _heavy_modules_after_configure(tmp: Path, *args: str) -> list[Any]:
    """[exit code, the heavy modules imported] of a configure in a fresh process."""
    probe = (
        "import json, sys\nfrom theseus.cli import main\n"
        f"code = main(['configure', *{list(args)!r}])\n"
        "print(json.dumps([code, sorted(m for m in ('jax', 'flax') if m in sys.modules)]))"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_configure_of_a_trainer_imports_neither_jax_nor_flax_once_cached(tmp_path):
    out = str(tmp_path / "t.yaml")
    assert _configure(tmp_path, "gpt/train/pretrain", out).returncode == 0  # fills the cache
    assert _heavy_modules_after_configure(tmp_path, "gpt/train/pretrain", out, "--force") == [0, []]
    # a value the model's check does not read; an evaluation no one registered
    for setting, code in [("architecture.n_layers=4", 0), ("eval.evaluations=[nope]", 2)]:
        args = ("gpt/train/pretrain", out, "--force", setting)
        assert _heavy_modules_after_configure(tmp_path, *args) == [code, []]


def test_configure_of_a_data_job_never_imports_jax(tmp_path):
    args = ("data/tokenize_variable_dataset", str(tmp_path / "t.yaml"), "--force")
    for _ in range(2):  # cold, then warm
        assert _heavy_modules_after_configure(tmp_path, *args) == [0, []]


def test_an_edited_load_file_or_a_module_it_imports_rebuilds_the_cached_schema(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "toy_defaults.py").write_text("BATCH = 8\n")
    toy = code / "toy.py"
    toy.write_text(
        "from pathlib import Path\nfrom toy_defaults import BATCH\n"
        "with Path(__file__).with_suffix('.log').open('a') as log:\n    log.write('imported\\n')\n"
        + Path(TOYJOBS)
        .read_text()
        .replace(
            '"training/per_device_batch_size", default=8',
            '"training/per_device_batch_size", default=BATCH',
        )
    )
    out = tmp_path / "t.yaml"

    def batch_and_imports() -> tuple[str, int]:
        r = _configure(
            tmp_path, "toy/echo", str(out), "--force", "--load", str(toy), PYTHONPATH=str(code)
        )
        assert r.returncode == 0, r.stderr
        batch = next(line for line in out.read_text().splitlines() if "per_device" in line)
        return batch.strip(), (code / "toy.log").read_text().count("imported")

    for path in code.iterdir():
        _aged(path)
    assert batch_and_imports() == ("per_device_batch_size: 8", 1)
    assert batch_and_imports() == ("per_device_batch_size: 8", 1)  # the cache's: not imported
    (code / "toy_defaults.py").write_text("BATCH = 7\n")  # the same size: its time tells
    _aged(code / "toy_defaults.py", 1800)
    assert batch_and_imports() == ("per_device_batch_size: 7", 2)
    toy.write_text(toy.read_text().replace("default=BATCH", "default=5"))
    _aged(toy, 1200)
    assert batch_and_imports() == ("per_device_batch_size: 5", 3)
    assert batch_and_imports() == ("per_device_batch_size: 5", 3)


def test_a_changed_package_file_makes_the_entry_stale(tmp_path):
    SchemaCache([TOYJOBS], tmp_path).schema("toy/echo")
    [entry_file] = tmp_path.glob("*.json")
    entry = json.loads(entry_file.read_text())
    package_file = str(Path(sys.modules["theseus.stages"].__file__).resolve())
    entry["files"][package_file][1] += 1  # as if touched since
    entry_file.write_text(json.dumps(entry))
    built = []
    cache = SchemaCache([TOYJOBS], tmp_path)
    cache._build = lambda job: built.append(job) or SchemaCache._build(cache, job)
    cache.schema("toy/echo")
    assert built == ["toy/echo"]


def test_a_cache_folder_that_cannot_be_written_or_read_is_passed_over(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    out = tmp_path / "t.yaml"
    args = ("toy/echo", str(out), "--load", TOYJOBS, "toy.tag=a")
    r = _configure(tmp_path, *args, XDG_CACHE_HOME=str(blocker))
    assert r.returncode == 0 and r.stderr == f"wrote {out}\n"
    folder = tmp_path / "cache"
    SchemaCache([TOYJOBS], folder).schema("toy/echo")
    for entry_file in folder.glob("*.json"):
        entry_file.write_text("{not json")
    assert isinstance(SchemaCache([TOYJOBS], folder).schema("toy/echo"), StoredSchema)


def test_entries_unwritten_for_a_month_go_when_another_is_written(tmp_path):
    old, recent = tmp_path / "old.json", tmp_path / "recent.json"
    for path, days in [(old, 31), (recent, 29)]:
        path.write_text("{}")
        _aged(path, days * 24 * 3600)
    SchemaCache([TOYJOBS], tmp_path).schema("toy/echo")
    assert not old.exists() and recent.exists() and len(list(tmp_path.glob("*.json"))) == 2


CASES = [
    ("gpt/train/pretrain", []),
    ("llama/train/pretrain", ["architecture.positions=rope", "architecture.n_heads=11"]),
    ("gpt/train/pretrain", ["training.dataset=[{name: a, rate: 2}, {name: b}]"]),
    ("gpt/train/pretrain", ["architecture.n_heads=7"]),
    ("gpt/train/pretrain", ["architecture.dtype=float64"]),
    ("gpt/train/pretrain", ["architecture.n_layer=4"]),
    ("gpt/train/pretrain", ["optimization.muon_lr=0.1"]),
    ("gpt/train/pretrain", ["training.dataset=[]"]),
    ("gpt/train/pretrain", ["training.dataset.0.rate=x"]),
    ("gpt/train/pretrain", ["training.dataset.0.nme=x"]),
    ("gpt/train/pretrain", ["eval.evaluations=[perplexity, perplexty]"]),
    ("gpt/evaluate", ["eval.evaluations+=multiple_choice"]),
    ("data/tokenize_variable_dataset", ["data.store=../bad"]),
    ("data/tokenize_blockwise_dataset", ["data.name=pystdlb"]),
    ("data/train_tokenizer", ["data.name=files", "data.paths=[a.txt]"]),
    ("toy/echo", ["toy.tag=a", "training.dataset+={name: c}"]),
    ("toy/echo", ["toy.mode=medium"]),
    ("toy/nope", []),
]


def _written(
    tmp: Path, job: str, overrides: list[str], schemas: JobSchemas, previous: Path | None = None
) -> tuple[str, ...]:
    """What configure leaves: the file and its messages, or its error."""
    out, heard = tmp / "out.yaml", []
    update = ConfigUpdate(job, out, None if previous is None else str(previous), force=True)
    try:
        update.write(Request("h100", 8), overrides, heard.append, schemas)
    except UserError as exc:
        return type(exc).__name__, str(exc)
    return out.read_text(), *heard


def test_configure_writes_the_same_with_and_without_the_cache(tmp_path, toy, monkeypatch):
    # carried over from another job's file: values dropped, defaults of that job left out
    previous = tmp_path / "previous.yaml"
    _written(tmp_path, "gpt/train/pretrain", ["architecture.n_layers=3"], REGISTERED)
    (tmp_path / "out.yaml").rename(previous)
    cache = tmp_path / "cache"
    for job, overrides in CASES:
        expected = _written(tmp_path, job, overrides, REGISTERED, previous)
        assert (
            _written(tmp_path, job, overrides, SchemaCache([TOYJOBS], cache), previous) == expected
        )
    monkeypatch.setattr(SchemaCache, "_build", lambda self, job: pytest.fail(f"rebuilt {job}"))
    for job, overrides in CASES[:-1]:  # an unknown job has no entry
        expected = _written(tmp_path, job, overrides, REGISTERED, previous)
        assert (
            _written(tmp_path, job, overrides, SchemaCache([TOYJOBS], cache), previous) == expected
        )


def test_a_check_runs_again_only_for_values_it_has_not_judged(tmp_path):
    imported = []

    def counting(module: str, qualname: str) -> type:
        imported.append(qualname)
        return SchemaCache._real_class(cache, module, qualname)

    assert _written(tmp_path, "gpt/train/pretrain", [], SchemaCache([], tmp_path))[-1].startswith(
        "wrote"
    )  # the defaults, judged
    for overrides, outcome in [
        (["architecture.n_layers=2"], "wrote"),  # not read by the check
        (["architecture.n_heads=7"], "architecture.d_model=768 does not split into n_heads=7"),
        (["architecture.n_heads=7", "architecture.dropout=0.1"], "architecture.d_model=768"),
    ]:
        cache = SchemaCache([], tmp_path)
        cache._real_class = counting
        assert _written(tmp_path, "gpt/train/pretrain", overrides, cache)[-1].startswith(outcome)
    assert imported == ["TransformerConfig"]  # only n_heads=7 was new to it


class Color(Enum):
    RED = "red"


@dataclass
class Pair:
    name: str = "a"
    weight: float | None = None


@dataclass
class Settings:
    pairs: list[Pair] = field("s/pairs", default_factory=lambda: [Pair()], help="pairs")
    table: dict[str, int] = field("s/table", default_factory=dict, help="by name")
    shape: tuple[int, int] = field("s/shape", default=(1, 2))
    maybe: int | None = field("s/maybe", default=None, minimum=1, choices=[1, 2])
    old_style: typing.Optional[str] = field("s/old_style", default=None)  # noqa: UP045


@dataclass
class Colored:
    color: Color = field("s/color", default=Color.RED)


def _unused(*args: str) -> type:
    raise AssertionError(f"no check should run: {args}")


def test_stored_schemas_keep_types_defaults_and_yaml_and_refuse_what_they_cannot():
    for real in [*(JOBS[job].schema() for job in JOBS.names()), Schema(Settings)]:
        data = json.loads(json.dumps(schema_to_json(real)))
        stored = StoredSchema(data, _unused, lambda: None)
        assert list(stored.entries) == list(real.entries)
        for key, entry in real.entries.items():
            again = stored.entries[key]
            assert repr(again.type) == repr(entry.type)
            assert repr(again.default) == repr(entry.default)
            assert (again.help, again.choices, again.owners, again.bounds(), again.registry) == (
                entry.help,
                entry.choices,
                entry.owners,
                entry.bounds(),
                entry.registry,
            )
        assert to_yaml(stored.tree(), stored) == to_yaml(real.tree(), real)
    with pytest.raises(Unstorable):
        schema_to_json(Schema(Colored))


def test_names_of_registered_entries_are_refused_at_configure_as_run_refuses_them(tmp_path):
    for job, kind, bad, setting in [
        ("data/tokenize_variable_dataset", "dataset", "pystdlb", "data.name=pystdlb"),
        ("gpt/evaluate", "evaluation", "perplexty", "eval.evaluations=[perplexity, perplexty]"),
    ]:
        out = tmp_path / "t.yaml"
        refused = _configure(tmp_path, job, str(out), setting)
        assert refused.returncode == 2 and not out.exists()
        assert refused.stderr == f"error: {REGISTRIES[kind].unknown(bad)}\n"
        assert (
            _configure(
                tmp_path,
                job,
                str(out),
                "eval.checkpoint=x" if "eval" in setting else "data.name=files",
            ).returncode
            == 0
        )
        ran = theseus("run", "r", str(out), str(tmp_path / "o"), setting)
        assert ran.returncode == 2 and ran.stderr == refused.stderr
        out.unlink()
    assert refused.stderr.startswith(
        "error: unknown evaluation 'perplexty'; did you mean perplexity?"
    )


def test_a_name_registered_by_loaded_code_passes_with_and_without_the_cache(tmp_path):
    mine = tmp_path / "mine.py"
    mine.write_text(
        "from theseus.data.datasets.base import Source\nfrom theseus.registry import dataset\n\n"
        '@dataset("mine")\nclass Mine(Source):\n    """Mine."""\n'
    )
    _aged(mine)
    args = ("data/tokenize_variable_dataset", str(tmp_path / "t.yaml"), "--force", "data.name=mine")
    for _ in range(2):  # cold, then warm
        assert _configure(tmp_path, *args, "--load", str(mine)).returncode == 0
    refused = _configure(tmp_path, *args)
    assert refused.returncode == 2 and "unknown dataset 'mine'" in refused.stderr
