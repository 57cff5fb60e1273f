"""Bad input at the CLI and in `quick()`: one line naming the problem and the fix, exit code 2,
and nothing a user made is lost or half-written. Each test runs the real CLI in this process."""

import sys
from pathlib import Path

import pytest
import yaml

from theseus.cli import main
from theseus.config import read_yaml
from theseus.errors import ConfigError, UserError
from theseus.quick import quick


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `theseus ARGS` in this process; its exit code and stderr."""
    code = main(list(args))
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *fragments: str) -> str:
    """Assert exit code 2 and a single `error: ` line holding every fragment; the line."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# 1. `configure JOB OUT -p OUT` must not replace another job's file, nor drop a user's values.


def test_configure_p_of_the_output_refuses_to_replace_another_jobs_file(tmp_path, capsys, toy):
    mine = tmp_path / "mine.yaml"
    assert cli(capsys, "configure", "toy/fail", str(mine), "toy.tag=precious")[0] == 0
    before = mine.read_text()
    code, err = cli(capsys, "configure", "toy/echo", str(mine), "-p", str(mine))
    one_line_error(code, err, "holds the config of job 'toy/fail', not 'toy/echo'", "--force")
    assert mine.read_text() == before
    # --force still replaces it, carrying over what fits
    assert cli(capsys, "configure", "toy/echo", str(mine), "-p", str(mine), "--force")[0] == 0
    data = read_yaml(mine)
    assert data["job"] == "toy/echo" and data["config"]["toy"]["tag"] == "precious"


def test_configure_p_of_the_output_updates_in_place_but_never_drops_values(tmp_path, capsys, toy):
    mine = tmp_path / "mine.yaml"
    text = "job: toy/echo\nconfig:\n  toy: {tag: a}\n  vanished: {key: 1}\n"
    mine.write_text(text)
    code, err = cli(capsys, "configure", "toy/echo", str(mine), "-p", str(mine), "toy.tag=b")
    one_line_error(code, err, "would drop vanished.key", "NEW.yaml", "--force")
    assert mine.read_text() == text
    # without values to drop, the same job is updated in place
    mine.write_text("job: toy/echo\nconfig:\n  toy: {tag: a}\n")
    assert cli(capsys, "configure", "toy/echo", str(mine), "-p", str(mine), "toy.tag=b")[0] == 0
    assert read_yaml(mine)["config"]["toy"]["tag"] == "b"


# 2. A key written twice in a hand-edited YAML is refused, not silently overwritten.


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("job: toy/echo\nconfig:\n  toy: {tag: a}\n  toy: {mode: slow}\n", "toy", 4),
        ("job: toy/echo\nconfig:\n  toy: {tag: a}\nconfig:\n  toy: {tag: b}\n", "config", 4),
        ("job: toy/echo\nconfig:\n  toy:\n    tag: a\n    tag: b\n", "tag", 5),
    ],
    ids=["section", "config block", "value"],
)
def test_yaml_with_a_duplicate_key_is_refused(tmp_path, capsys, toy, text, key, line):
    path = write(tmp_path / "dup.yaml", text)
    code, err = cli(capsys, "run", "r", path, str(tmp_path / "out"))
    one_line_error(
        code, err, f"{path}: duplicate key {key!r} at line {line}", "merge the two into one"
    )
    assert not (tmp_path / "out").exists()
    code, err = cli(capsys, "configure", "toy/echo", str(tmp_path / "new.yaml"), "-p", path)
    one_line_error(code, err, f"duplicate key {key!r} at line {line}")
    assert not (tmp_path / "new.yaml").exists()


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = write(tmp_path / "m.yaml", "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert read_yaml(path)["other"] == {"x": 3, "y": 2}


def test_dispatch_file_with_a_duplicate_key_is_refused(tmp_path, capsys, monkeypatch, toy):
    config = write(tmp_path / "t.yaml", "job: toy/echo\nconfig: {toy: {tag: a}}\n")
    cluster = "clusters:\n  c: {root: /data/out, work: /data/work}\n"
    dispatch = write(tmp_path / "dispatch.yaml", cluster + "hosts: {}\n" + cluster)
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    code, err = cli(capsys, "submit", "r", config, "-d", dispatch, "--dry-run")
    one_line_error(code, err, dispatch, "line 4", "duplicate key 'clusters'")
    assert not (tmp_path / "home").exists()


def test_override_value_with_a_duplicate_key_is_refused(tmp_path, capsys, toy):
    out = tmp_path / "x.yaml"
    code, err = cli(
        capsys, "configure", "toy/echo", str(out), "training.dataset+={name: a, name: b}"
    )
    one_line_error(code, err, "key 'name' is given twice")
    assert not out.exists()


# 3. quick(): save() refuses what `theseus run` would refuse, with configure's error.


@pytest.mark.parametrize(
    ("key", "value", "override"),
    [
        ("per_device_batch_size", -1, "training.per_device_batch_size=-1"),
        ("mode", "warp", "toy.mode=warp"),
    ],
)
def test_quick_save_refuses_values_that_run_refuses(tmp_path, capsys, toy, key, value, override):
    code, err = cli(capsys, "configure", "toy/echo", str(tmp_path / "c.yaml"), override)
    expected = one_line_error(code, err).removeprefix("error: ")
    saved = tmp_path / "config.yaml"
    saved.write_text("job: toy/echo\n# the user's earlier file\n")
    with quick("toy/echo", tmp_path / "out", "r") as j:
        j.config.toy.tag = "x"
        section = j.config.training if key == "per_device_batch_size" else j.config.toy
        setattr(section, key, value)
        with pytest.raises(ConfigError) as refused:
            j.save(saved)
        assert str(refused.value) == expected
        assert saved.read_text() == "job: toy/echo\n# the user's earlier file\n"
        with pytest.raises(ConfigError) as refused:
            j()
        assert str(refused.value) == expected
    assert not (tmp_path / "out").exists()


# 4. `plot -o` into a place that cannot hold a file.


@pytest.mark.parametrize("where", ["under a file", "/proc"])
def test_plot_to_an_unwritable_path_is_one_line(tmp_path, capsys, where):
    run = tmp_path / "run"
    write(run / "metrics.jsonl", '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    afile = write(tmp_path / "train.yaml", "job: x\n")
    out = f"{afile}/x.png" if where == "under a file" else "/proc/x.png"
    code, err = cli(capsys, "plot", str(run), "-o", out)
    one_line_error(code, err, f"cannot write {out}", "choose another path")
    assert Path(afile).read_text() == "job: x\n"


def test_plot_of_runs_without_losses_is_one_line(tmp_path, capsys):
    run = tmp_path / "eval-run"
    write(run / "metrics.jsonl", "")
    code, err = cli(capsys, "plot", str(run), "-o", str(tmp_path / "x.png"))
    one_line_error(code, err, "plot: no losses in", "give the folders of training runs")
    assert not (tmp_path / "x.png").exists()


def test_plot_labels_runs_of_one_name_by_group_and_breaks_lines_at_nan(tmp_path, monkeypatch):
    """Two groups' runs named alike get told apart; a non-finite loss is a gap in its line."""
    import matplotlib.axes

    from theseus.training.plot import plot_runs

    drawn: list[tuple[str, list[float]]] = []
    draw = matplotlib.axes.Axes.plot

    def watched(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(args[1])))
        return draw(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", watched)
    lines = '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": "nan"}\n{"step": 3, "loss": 1.5}\n'
    runs = [write(tmp_path / group / "run" / "metrics.jsonl", lines) for group in ("g1", "g2")]
    plot_runs([Path(r).parent for r in runs], tmp_path / "x.png")
    assert [label for label, _ in drawn] == ["g1/run train", "g2/run train"]
    assert str(drawn[0][1]) == "[2.0, nan, 1.5]"


# 5. `--load` of code that does not import.


def test_load_of_a_file_with_a_syntax_error_is_one_line(tmp_path, capsys):
    bad = write(tmp_path / "bad.py", "x = 1\n\ndef (:\n")
    code, err = cli(capsys, "jobs", "--load", bad)
    one_line_error(code, err, f"--load {bad}: SyntaxError at line 3: invalid syntax")
    with pytest.raises(UserError) as shown:  # -v keeps the whole story
        main(["jobs", "--load", bad, "-v"])
    assert isinstance(shown.value.__cause__, SyntaxError)


def test_load_of_a_file_whose_import_fails_is_one_line(tmp_path, capsys):
    bad = write(tmp_path / "imp.py", "import os\nimport no_such_module_qq\n")
    code, err = cli(capsys, "jobs", "--load", bad)
    one_line_error(code, err, "ModuleNotFoundError at line 2", "no_such_module_qq")
    bad = write(tmp_path / "imp2.py", "from os import nothing_here_qq\n")
    code, err = cli(capsys, "jobs", "--load", bad)
    one_line_error(code, err, "ImportError at line 1", "nothing_here_qq")


def test_load_of_a_module_that_does_not_import_is_one_line(tmp_path, capsys, monkeypatch):
    write(tmp_path / "lib" / "qq_broken_syntax.py", "def f(:\n")
    write(tmp_path / "lib" / "qq_broken_import.py", "\nimport no_such_module_qq\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    code, err = cli(capsys, "jobs", "--load", "qq_broken_syntax")
    one_line_error(code, err, "--load qq_broken_syntax: SyntaxError in ", "at line 1")
    code, err = cli(capsys, "jobs", "--load", "qq_broken_import")
    one_line_error(code, err, "--load qq_broken_import: ModuleNotFoundError in ", "at line 2")
    for name in ("qq_broken_syntax", "qq_broken_import"):
        sys.modules.pop(name, None)


# 6. An empty output name.


def test_configure_to_an_empty_name_is_one_line(tmp_path, capsys, monkeypatch, toy):
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--force"]):
        code, err = cli(capsys, "configure", "toy/echo", "", *extra)
        one_line_error(code, err, "OUT_YAML is empty")
    with quick("toy/echo", tmp_path, "r") as j, pytest.raises(UserError, match="not a file name"):
        j.save("")
    assert list(tmp_path.iterdir()) == []


def test_run_to_an_empty_output_folder_is_one_line(tmp_path, capsys, monkeypatch, toy):
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "t.yaml", "job: toy/echo\nconfig: {toy: {tag: a}}\n")
    code, err = cli(capsys, "run", "r", config, "")
    one_line_error(code, err, "OUT is empty")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        (["--chip", "h100", "-n", "0"], "n=0 means a CPU run, but the chip is h100"),
        (["--chip", "h100", "-n", "8", "--n_shards", "3"], "n_shards=3 does not divide n=8"),
    ],
)
def test_configure_refuses_a_request_that_contradicts_itself(
    tmp_path, capsys, toy, request_args, message
):
    out = tmp_path / "x.yaml"
    code, err = cli(capsys, "configure", "toy/echo", str(out), *request_args)
    one_line_error(code, err, message)
    assert not out.exists()


# 7. A job that is not registered hints at --load.


def test_unknown_job_hints_at_load(tmp_path, capsys, toy):
    # a name no test registers (the README extension test registers my/train/pretrain)
    code, err = cli(capsys, "configure", "their/train/pretrain", str(tmp_path / "x.yaml"))
    one_line_error(code, err, "unknown job 'their/train/pretrain'", "add --load FILE.py")


# 8. `~` in configure's output path is the home folder, not a folder named `~`.


def test_configure_expands_the_home_folder(tmp_path, capsys, monkeypatch, toy):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    code, err = cli(capsys, "configure", "toy/echo", "~/x.yaml", "toy.tag=a")
    assert code == 0, err
    assert (home / "x.yaml").is_file() and list(cwd.iterdir()) == []
    code, err = cli(capsys, "configure", "toy/echo", "~/y.yaml", "-p", "~/x.yaml")
    assert code == 0, err
    assert yaml.safe_load((home / "y.yaml").read_text())["config"]["toy"]["tag"] == "a"
    assert list(cwd.iterdir()) == []


# 9. A run name that is too long says so.


def test_a_long_run_name_names_the_length_limit(tmp_path, capsys, toy):
    config = write(tmp_path / "t.yaml", "job: toy/echo\nconfig: {toy: {tag: a}}\n")
    code, err = cli(capsys, "run", "a" * 300, config, str(tmp_path / "out"))
    line = one_line_error(code, err, "300 characters, at most 200")
    assert "use letters" not in line
    assert not (tmp_path / "out").exists()


def test_restore_for_a_job_that_cannot_restore_is_refused(tmp_path, capsys, toy):
    config = write(tmp_path / "t.yaml", "job: toy/echo\nconfig: {toy: {tag: a}}\n")
    out = tmp_path / "out"
    code, err = cli(capsys, "run", "r", config, str(out), "--restore", str(tmp_path))
    line = one_line_error(code, err, "--restore: toy/echo does not start from another run's")
    assert "drop --restore" in line
    assert not out.exists()


# 10. Override hints name real keys; a section set as a whole says it is a section.


def test_override_without_equals_suggests_a_key_of_the_job(tmp_path, capsys, toy):
    from theseus.registry import JOBS

    keys = JOBS["toy/echo"].schema().keys()
    out = str(tmp_path / "x.yaml")
    code, err = cli(capsys, "configure", "toy/echo", out, "toy.tag")
    one_line_error(code, err, "expected KEY=VALUE (e.g. toy.tag=VALUE)")
    code, err = cli(capsys, "configure", "toy/echo", out, "bogus")
    line = one_line_error(code, err, "expected KEY=VALUE (e.g. ")
    assert line.split("(e.g. ")[1].split("=")[0] in keys, line


def test_setting_a_section_as_a_whole_says_it_is_a_section(tmp_path, capsys, toy):
    code, err = cli(capsys, "configure", "toy/echo", str(tmp_path / "x.yaml"), "toy=null")
    one_line_error(code, err, "'toy' is a section", "toy.mode=...")
    config = write(tmp_path / "t.yaml", "job: toy/echo\nconfig: {toy: 5}\n")
    code, err = cli(capsys, "run", "r", config, str(tmp_path / "out"))
    one_line_error(code, err, "'toy' is a section", "toy.tag=...")
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "out").exists()


# 6. Values read as written, and files kept as the user made them.


def test_text_inside_a_list_of_records_stays_text(tmp_path, capsys, toy):
    """YAML 1.1 would read these names as False, 493 and True; the rate still reads as a number."""
    out = tmp_path / "t.yaml"
    mixture = "training.dataset=[{name: no, rate: 2}, {name: 0755}, {name: on}]"
    assert cli(capsys, "configure", "toy/echo", str(out), mixture, "toy.tag=x")[0] == 0
    dataset = read_yaml(out)["config"]["training"]["dataset"]
    assert dataset == [
        {"name": "no", "rate": 2.0},
        {"name": "0755", "rate": 1.0},
        {"name": "on", "rate": 1.0},
    ]


def test_numbers_read_as_people_write_them(tmp_path, capsys, toy):
    out = tmp_path / "t.yaml"
    args = ("configure", "toy/echo", str(out), "toy.tag=x")
    assert cli(capsys, *args, "logging.checkpoint_interval=0100")[0] == 0  # not octal 64
    assert read_yaml(out)["config"]["logging"]["checkpoint_interval"] == 100
    out.unlink()
    code, err = cli(capsys, *args, "logging.checkpoint_interval=1:04")  # not base-60 64
    one_line_error(code, err, "logging.checkpoint_interval: expected int, got '1:04'")
    assert not out.exists()


@pytest.mark.parametrize("command", ["configure", "run"])
def test_a_forgotten_path_is_not_taken_from_the_settings(
    tmp_path, capsys, toy, command, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "t.yaml"
    assert cli(capsys, "configure", "toy/echo", str(config), "toy.tag=x")[0] == 0
    args = (
        ["toy/echo", "toy.mode=slow"]
        if command == "configure"
        else ["n", str(config), "toy.mode=slow"]
    )
    code, err = cli(capsys, command, *args)
    one_line_error(code, err, "'toy.mode=slow' is a KEY=VALUE setting, not a path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_updating_in_place_keeps_the_users_comments_or_refuses(tmp_path, capsys, toy):
    mine = tmp_path / "mine.yaml"
    assert cli(capsys, "configure", "toy/echo", str(mine), "toy.tag=a")[0] == 0
    text = "# my run for the paper\n" + mine.read_text()
    mine.write_text(text)
    code, err = cli(capsys, "configure", "toy/echo", str(mine), "-p", str(mine), "toy.tag=b")
    one_line_error(code, err, "would drop your comment '# my run for the paper'", "--force")
    assert mine.read_text() == text
    assert (
        cli(capsys, "configure", "toy/echo", str(mine), "-p", str(mine), "toy.tag=b", "--force")[0]
        == 0
    )


def test_a_linked_config_file_is_updated_where_it_lives(tmp_path, capsys, toy):
    shared = tmp_path / "shared" / "t.yaml"
    assert cli(capsys, "configure", "toy/echo", str(shared), "toy.tag=a")[0] == 0
    link = tmp_path / "link.yaml"
    link.symlink_to(shared)
    assert cli(capsys, "configure", "toy/echo", str(link), "-p", str(link), "toy.tag=b")[0] == 0
    assert link.is_symlink() and read_yaml(shared)["config"]["toy"]["tag"] == "b"


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        ("job: toy/echo\nconfig: [1, 2]\n", "config must be a mapping, got list"),
        ("job: [a]\nconfig: {}\n", "job must be a string, got ['a']"),
        ("jobs: toy/echo\n", "unknown top-level key(s) jobs"),
    ],
)
def test_configure_p_of_a_malformed_file_is_one_line(tmp_path, capsys, toy, previous, message):
    old = tmp_path / "old.yaml"
    old.write_text(previous)
    code, err = cli(capsys, "configure", "toy/echo", str(tmp_path / "new.yaml"), "-p", str(old))
    one_line_error(code, err, message)
    assert not (tmp_path / "new.yaml").exists()


def test_an_unclosed_interpolation_is_one_line(tmp_path, capsys, toy):
    code, err = cli(capsys, "configure", "toy/echo", str(tmp_path / "t.yaml"), "toy.tag=a${b")
    one_line_error(code, err, "toy.tag: 'a${b' holds a ${ that opens no valid interpolation")
    assert not (tmp_path / "t.yaml").exists()


def test_a_section_emptied_by_hand_takes_its_defaults(tmp_path, capsys, toy):
    config = tmp_path / "t.yaml"
    config.write_text("job: toy/echo\nconfig:\n  toy: {tag: a}\n  logging:\n  optimization: {}\n")
    assert cli(capsys, "run", "emptied", str(config), str(tmp_path / "out"))[0] == 0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "--load '': give a module name (my_project.models) or a .py file"),
        ("..x", "--load '..x': give a module name"),
        ("RAISES", "NameError at line 1: name 'undefined_name' is not defined"),
    ],
)
def test_load_of_a_bad_name_or_of_code_that_raises_is_one_line(tmp_path, capsys, target, message):
    raises = tmp_path / "raises.py"
    raises.write_text("undefined_name\n")
    target = str(raises) if target == "RAISES" else target
    code, err = cli(capsys, "jobs", "--load", target)
    one_line_error(code, err, message)
