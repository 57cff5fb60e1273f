"""The CLI as a user meets it: real subprocesses, exit codes, one-line errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.foundation.conftest import TOYJOBS, theseus


def test_jobs_lists_builtin_and_loaded_jobs_without_importing_jax():
    probe = (
        f"import sys; from theseus.cli import main; main(['jobs', '--load', {TOYJOBS!r}]); "
        "print('HEAVY', sorted(m for m in ('jax', 'flax', 'torch', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "toy/echo" in out and "Write the typed config it received" in out
    assert "HEAVY []" in out


def test_console_script_is_installed():
    exe = shutil.which("theseus", path=str(Path(sys.executable).parent))
    assert exe is not None
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "configure" in result.stdout


def test_configure_writes_commented_yaml_with_request(tmp_path):
    out = tmp_path / "t.yaml"
    r = theseus(
        "configure",
        "toy/echo",
        str(out),
        "--load",
        TOYJOBS,
        "--chip",
        "H100",
        "-n",
        "8",
        "toy.tag=a",
    )
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    data = yaml.safe_load(text)
    assert data["job"] == "toy/echo"
    assert data["request"] == {"chip": "h100", "n": 8, "n_shards": None}
    assert data["config"]["toy"]["tag"] == "a"
    assert "# peak learning rate\n    # after warm-up\n    lr: 0.0003" in text


def test_chip_takes_the_reference_systems_names(tmp_path):
    out = tmp_path / "t.yaml"
    args = ["configure", "toy/echo", str(out), "--load", TOYJOBS, "--chip"]
    r = theseus(*args, "a100-sxm4-80gb", "-n", "8")
    assert r.returncode == 0, r.stderr
    # recorded under the catalogue's name, which hosts list their chips by
    assert yaml.safe_load(out.read_text())["request"]["chip"] == "a100-80gb"
    r = theseus(*args, "a100-sxm5")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: unknown chip 'a100-sxm5'; known chips:"), r.stderr


def test_configure_reports_required_values_left(tmp_path):
    r = theseus("configure", "toy/echo", str(tmp_path / "t.yaml"), "--load", TOYJOBS)
    assert r.returncode == 0
    assert "still required: toy.tag" in r.stderr


def test_configure_says_which_folders_it_creates(tmp_path):
    deep = tmp_path / "new" / "deeper" / "t.yaml"
    r = theseus("configure", "toy/echo", str(deep), "--load", TOYJOBS, "toy.tag=a")
    assert r.returncode == 0 and deep.is_file()
    assert f"created the folder {tmp_path / 'new'} and those below it" in r.stderr
    r = theseus("configure", "toy/echo", str(tmp_path / "other" / "t.yaml"), "--load", TOYJOBS)
    assert f"created the folder {tmp_path / 'other'}\n" in r.stderr
    r = theseus("configure", "toy/echo", str(tmp_path / "t.yaml"), "--load", TOYJOBS)
    assert "created" not in r.stderr


def test_run_applies_overrides_and_writes_the_output_layout(tmp_path):
    cfg = tmp_path / "t.yaml"
    assert (
        theseus("configure", "toy/echo", str(cfg), "--load", TOYJOBS, "toy.tag=a").returncode == 0
    )
    root = tmp_path / "out" / "deeper"
    r = theseus(
        "run",
        "r1",
        str(cfg),
        str(root),
        "--load",
        TOYJOBS,
        "-p",
        "proj",
        "-g",
        "grp",
        "--n_shards",
        "2",
        "training.dataset.0.rate=0.5",
        "training.dataset+={name: web, rate: 0.25}",
        "toy.mode=slow",
    )
    assert r.returncode == 0, r.stderr
    result = json.loads((root / "runs" / "proj" / "grp" / "r1" / "result.jsonl").read_text())
    assert result["dataset"] == [["pystdlib", 0.5], ["web", 0.25]]
    assert result["mode"] == "slow" and result["tag"] == "a"
    assert result["request"]["n_shards"] == 2


def test_previous_yaml_values_carry_over_and_dropped_keys_are_reported(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(
        "job: toy/echo\nrequest: {chip: a100-80gb, n: 4}\n"
        "config:\n  optimization: {lr: 0.01}\n  toy: {tag: kept}\n  vanished: {key: 1}\n"
    )
    new = tmp_path / "new.yaml"
    r = theseus("configure", "toy/echo", str(new), "--load", TOYJOBS, "-p", str(old))
    assert r.returncode == 0, r.stderr
    assert "vanished.key" in r.stderr
    data = yaml.safe_load(new.read_text())
    assert data["config"]["optimization"]["lr"] == 0.01 and data["config"]["toy"]["tag"] == "kept"
    assert data["request"] == {"chip": "a100-80gb", "n": 4, "n_shards": None}


def test_multi_stage_runs_in_order_and_stops_at_first_failure(tmp_path):
    echo, fail = tmp_path / "echo.yaml", tmp_path / "fail.yaml"
    theseus("configure", "toy/echo", str(echo), "--load", TOYJOBS, "toy.tag=first")
    theseus("configure", "toy/fail", str(fail), "--load", TOYJOBS, "toy.tag=first")
    r = theseus(
        "run",
        "p",
        str(echo),
        str(tmp_path / "o"),
        "--load",
        TOYJOBS,
        "-s",
        str(fail),
        "-s",
        str(echo),
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "error: toy/fail was asked to fail (first)"
    lines = (
        (tmp_path / "o" / "runs" / "default" / "default" / "p" / "result.jsonl")
        .read_text()
        .splitlines()
    )
    assert len(lines) == 1  # the third stage never ran


def test_verbose_shows_the_traceback(tmp_path):
    r = theseus("run", "x", str(tmp_path / "missing.yaml"), str(tmp_path), "-v")
    assert r.returncode != 0 and "Traceback" in r.stderr


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# Each case: a malformed input, and a fragment the one-line error must contain.
MALFORMED = [
    (
        "bad yaml",
        lambda t: ["run", "r", _write(t, "a.yaml", "job: toy/echo\nconfig: [1,\n"), str(t)],
        "bad YAML",
    ),
    (
        "unknown job",
        lambda t: ["configure", "toy/echoo", str(t / "x.yaml")],
        "did you mean toy/echo",
    ),
    (
        "unknown chip",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "--chip", "h1000"],
        "known chips",
    ),
    (
        "negative -n",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "-n", "-1"],
        "must be >= 0",
    ),
    (
        "zero shards",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "--n_shards", "0"],
        "must be >= 1",
    ),
    ("missing yaml", lambda t: ["run", "r", str(t / "nope.yaml"), str(t)], "no such file"),
    (
        "override without =",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "toy.tag"],
        "expected KEY=VALUE",
    ),
    (
        "override bad value",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "optimization.lr=[1,"],
        "not valid YAML",
    ),
    (
        "unknown key",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "toy.tga=1"],
        "did you mean",
    ),
    (
        "wrong type",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "optimization.lr=fast"],
        "optimization.lr: expected float",
    ),
    (
        "index out of range",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "training.dataset.3.rate=1"],
        "out of range",
    ),
    (
        "yaml is a list",
        lambda t: ["run", "r", _write(t, "l.yaml", "- 1\n- 2\n"), str(t)],
        "must hold a mapping",
    ),
    (
        "yaml without job",
        lambda t: ["run", "r", _write(t, "n.yaml", "config: {}\n"), str(t)],
        "names no job",
    ),
    ("empty yaml", lambda t: ["run", "r", _write(t, "e.yaml", ""), str(t)], "is empty"),
    (
        "unknown top-level",
        lambda t: ["run", "r", _write(t, "u.yaml", "job: toy/echo\nconfg: {}\n"), str(t)],
        "unknown top-level",
    ),
    (
        "unknown yaml key",
        lambda t: [
            "run",
            "r",
            _write(t, "k.yaml", "job: toy/echo\nconfig: {toy: {tagg: 1}}\n"),
            str(t),
        ],
        "did you mean",
    ),
    (
        "bad request",
        lambda t: ["run", "r", _write(t, "q.yaml", "job: toy/echo\nrequest: {n: -2}\n"), str(t)],
        "must be >= 0",
    ),
    (
        "required missing",
        lambda t: ["run", "r", _write(t, "m.yaml", "job: toy/echo\n"), str(t)],
        "required config values missing",
    ),
    (
        "bad choice",
        lambda t: [
            "run",
            "r",
            _write(t, "c.yaml", "job: toy/echo\nconfig: {toy: {tag: a, mode: warp}}\n"),
            str(t),
        ],
        "not one of",
    ),
    (
        "hostile run name",
        lambda t: [
            "run",
            "../evil",
            _write(t, "h.yaml", "job: toy/echo\nconfig: {toy: {tag: a}}\n"),
            str(t),
        ],
        "bad run name",
    ),
    ("missing --load file", lambda t: ["jobs", "--load", str(t / "nope.py")], "no such file"),
    (
        "missing --load module",
        lambda t: ["jobs", "--load", "no_such_module_xyz"],
        "no module named",
    ),
    ("unknown command", lambda t: ["trian"], "No such command"),
    (
        "previous missing",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "-p", str(t / "old.yaml")],
        "no such file",
    ),
    ("directory as yaml", lambda t: ["run", "r", str(t), str(t)], "is a directory"),
    (
        "bad interpolation in configure",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "toy.tag=${toy.nope}"],
        "toy.tag: interpolation ${toy.nope} does not resolve",
    ),
    (
        "bad interpolation in run",
        lambda t: [
            "run",
            "r",
            _write(t, "i.yaml", "job: toy/echo\nconfig: {toy: {tag: a}}\n"),
            str(t / "out"),
            "toy.tag=${toy.nope}",
        ],
        "toy.tag: interpolation ${toy.nope} does not resolve",
    ),
    (
        "unknown key in a list element",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "training.dataset.0.nam=x"],
        "did you mean training.dataset.0.name",
    ),
    (
        "append a list",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "training.dataset+=[{name: a}]"],
        "+= appends one element",
    ),
    (
        "bad choice in configure",
        lambda t: ["configure", "toy/echo", str(t / "x.yaml"), "toy.mode=warp"],
        "toy.mode: 'warp' is not one of 'fast', 'slow'",
    ),
    (
        "yaml under a file",
        lambda t: ["configure", "toy/echo", _write(t, "afile", "") + "/x.yaml"],
        "is a file",
    ),
    ("yaml in /proc", lambda t: ["configure", "toy/echo", "/proc/x.yaml"], "cannot write"),
    (
        "request not a mapping",
        lambda t: ["run", "r", _write(t, "q.yaml", "job: toy/echo\nrequest: 5\n"), str(t)],
        "request: expected a mapping",
    ),
    (
        "yaml of another job",
        lambda t: [
            "run",
            "r",
            _write(t, "o.yaml", "job: toy/echo\nconfig: {toy: {tag: a}, optimization: {lr: 1}}\n"),
            str(t),
            "-j",
            "toy/fail",
        ],
        "was written for job 'toy/echo' and -j asks for 'toy/fail'",
    ),
    (
        "output folder under a file",
        lambda t: [
            "run",
            "r",
            _write(t, "g.yaml", "job: toy/echo\nconfig: {toy: {tag: a}}\n"),
            _write(t, "afile", "") + "/out",
        ],
        "output folder",
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_input_gives_one_line_and_exit_2(tmp_path, case):
    _, make_args, fragment = case
    args = make_args(tmp_path)
    if args[0] in ("configure", "run", "jobs") and "--load" not in args:
        args += ["--load", TOYJOBS]
    r = theseus(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "x.yaml").exists()  # nothing half-written


def test_loading_a_second_definition_of_a_job_names_both(tmp_path):
    dup = _write(
        tmp_path,
        "dup.py",
        "from theseus.job import BasicJob\nfrom theseus.registry import job\n\n\n"
        '@job("toy/echo")\nclass Mine(BasicJob):\n    """Mine."""\n',
    )
    r = theseus("jobs", "--load", TOYJOBS, "--load", dup)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: job 'toy/echo' is defined twice")
    assert f"{TOYJOBS}:" in line and f"{dup}:5" in line
    builtin = _write(
        tmp_path,
        "builtin.py",
        "from theseus.job import BasicJob\nfrom theseus.registry import job\n\n\n"
        '@job("gpt/train/pretrain")\nclass Mine(BasicJob):\n    """Mine."""\n',
    )
    r = theseus("jobs", "--load", builtin)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert "job 'gpt/train/pretrain' is defined twice" in line
    assert "theseus/experiments/pretrain.py:" in line and f"{builtin}:5" in line


def test_bare_theseus_prints_the_usage_without_calling_it_an_error():
    r = theseus()
    assert r.returncode == 2
    assert r.stderr.startswith("Usage: theseus") and "configure" in r.stderr
    assert "error" not in r.stderr


def test_configure_writes_override_text_verbatim_into_string_fields(tmp_path):
    out = tmp_path / "d.yaml"
    r = theseus(
        "configure",
        "data/tokenize_variable_dataset",
        str(out),
        "data.separator=---",
        "data.store=no",
        "tokenizer.name=on",
        "data.paths=[a.txt, '#b.txt']",
    )
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(out.read_text())["config"]
    assert data["data"]["separator"] == "---" and data["data"]["store"] == "no"
    assert data["tokenizer"]["name"] == "on" and data["data"]["paths"] == ["a.txt", "#b.txt"]


def test_configure_never_overwrites_a_users_file(tmp_path):
    out = tmp_path / "mine.yaml"
    out.write_text("job: toy/echo\n# my precious notes\n")
    r = theseus("configure", "toy/echo", str(out), "--load", TOYJOBS)
    assert r.returncode == 2 and "exists" in r.stderr
    assert "precious" in out.read_text()
    update = ("configure", "toy/echo", str(out), "--load", TOYJOBS, "-p", str(out), "toy.tag=z")
    r = theseus(*update)  # in place, the file is written anew: its comment would go
    assert r.returncode == 2 and "would drop your comment '# my precious notes'" in r.stderr
    assert "precious" in out.read_text()
    r = theseus(*update, "--force")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(out.read_text())["config"]["toy"]["tag"] == "z"


def test_status_without_submitted_runs_says_so(tmp_path):
    result = theseus("status", env={"THESEUS_HOME": str(tmp_path / "home")})
    assert result.returncode == 0 and result.stdout == ""
    assert "no submitted runs yet" in result.stderr
