"""quick(): the README's Python usage, against a small test job."""

import json

import pytest
import yaml
from omegaconf.errors import ValidationError

from tests.foundation.conftest import TOYJOBS, theseus
from theseus.quick import quick


def test_readme_usage(tmp_path, toy):
    out = tmp_path / "output"
    with quick("toy/echo", str(out), "my-run") as j:
        j.config.training.per_device_batch_size = 16
        j.config.logging.checkpoint_interval = 4096
        j.config.toy.tag = "readme"
        result = j()  # run locally
        j.save(tmp_path / "config.yaml", chip="h100", n_chips=8)
    assert result["per_device_batch_size"] == 16 and result["checkpoint_interval"] == 4096
    assert (out / "runs" / "default" / "default" / "my-run" / "result.jsonl").exists()
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["request"] == {"chip": "h100", "n": 8, "n_shards": None}
    assert saved["config"]["training"]["per_device_batch_size"] == 16

    # the saved file is accepted by `theseus run`
    r = theseus("run", "again", str(tmp_path / "config.yaml"), str(out), "--load", TOYJOBS)
    assert r.returncode == 0, r.stderr
    again = json.loads(
        (out / "runs" / "default" / "default" / "again" / "result.jsonl").read_text()
    )
    assert again["checkpoint_interval"] == 4096 and again["request"]["chip"] == "h100"


def test_edits_are_type_checked(tmp_path, toy):
    with quick("toy/echo", tmp_path, "r") as j:
        with pytest.raises(ValidationError):
            j.config.training.per_device_batch_size = "sixteen"
        with pytest.raises(Exception, match="not_a_key"):
            j.config.training.not_a_key = 1


def test_cpu_request_is_kept_and_project_group_used(tmp_path, toy):
    with quick("toy/echo", tmp_path, "r", project="p", group="g") as j:
        j.override("toy.tag=x")
        j.save(tmp_path / "cpu.yaml", n_chips=0)
        j()
    assert yaml.safe_load((tmp_path / "cpu.yaml").read_text())["request"]["n"] == 0
    assert (tmp_path / "runs" / "p" / "g" / "r" / "result.jsonl").exists()


def test_missing_values_stop_the_run(tmp_path, toy):
    from theseus.errors import ConfigError

    with quick("toy/echo", tmp_path, "r") as j, pytest.raises(ConfigError, match=r"toy\.tag"):
        j()
    assert not (tmp_path / "runs").exists()


def test_save_writes_a_request_for_the_file_only(tmp_path, toy):
    with quick("toy/echo", tmp_path, "r") as j:
        j.override("toy.tag=x")
        j.save(tmp_path / "big.yaml", chip="h100", n_chips=8, n_shards=4)
        result = j()
    assert result["request"] == {"chip": None, "n": None, "n_shards": None}
    assert yaml.safe_load((tmp_path / "big.yaml").read_text())["request"]["n_shards"] == 4


def test_an_output_path_that_is_a_file_is_refused_in_one_line(tmp_path, toy):
    from theseus.errors import UserError

    afile = tmp_path / "afile"
    afile.write_text("mine")
    with quick("toy/echo", afile, "r") as j:
        j.override("toy.tag=x")
        with pytest.raises(UserError, match=f"cannot use output folder {afile}: .* is a file"):
            j()
    assert afile.read_text() == "mine"
