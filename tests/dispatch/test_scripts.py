"""The scripts `submit` writes: a reviewed 2-node × 8-GPU sbatch script, and hostile input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dispatch.conftest import COUNTJOB, HOSTILE, state_of, wait_state, write_dispatch
from theseus.cli import main
from theseus.dispatch import config as dispatch_config

CLUSTER = {"root": "/shared/out", "work": "/shared/work"}
SLURM_HOST = {
    "type": "slurm",
    "ssh": "login.example",
    "cluster": "hpc",
    "chips": {"h100": 8},
    "uv_groups": ["all", "cuda12"],
    "partitions": {"h100": "gpu"},
    "account": "lab",
    "qos": "high",
    "time": "1-00:00:00",
    "mem": "0",
    "cpus_per_task": 64,
    "gres": {"h100": "gpu:h100"},
    "exclude": ["node3", "node4"],
    "directives": ["--constraint=ib", "--exclusive"],
}


def sections(text: str) -> dict[str, str]:
    """The files of a dry run, by name."""
    parts = re.split(r"^# ==> (.+) <==$", text, flags=re.M)
    return {
        Path(name).name: body.removeprefix("\n")
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def test_dry_run_two_nodes_of_eight_h100(
    tmp_path: Path,
    count_yaml: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    dispatch = tmp_path / "d.yaml"
    dispatch.write_text(
        yaml.safe_dump({"clusters": {"hpc": CLUSTER}, "hosts": {"hpc-slurm": SLURM_HOST}})
    )
    args = ["submit", "big-run", str(count_yaml), "-d", str(dispatch), "--chip", "h100", "-n", "16"]
    assert main([*args, "--load", COUNTJOB, "--dry-run", "count.steps=7"]) == 0
    out = capsys.readouterr().out
    files = sections(out)
    script = files["job.sbatch"]
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    job_dir = re.search(r"^JOB_DIR=(\S+)$", files["lib.sh"], flags=re.M).group(1)
    assert re.fullmatch(r"/shared/work/jobs/big-run/\d{8}-\d{6}-[0-9a-f]{6}", job_dir)
    assert directives == [
        "#SBATCH --job-name=big-run",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gres=gpu:h100:8",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --mem=0",
        "#SBATCH --cpus-per-task=64",
        "#SBATCH --exclude=node3,node4",
        "#SBATCH --output=output.log",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --constraint=ib",
        "#SBATCH --exclusive",
    ]
    assert script.startswith("#!/usr/bin/env bash\n#SBATCH"), "directives must precede any command"
    assert "srun --wait=60 --label bash" in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    lib = files["lib.sh"]
    assert "UV_GROUP_ARGS=(--group all --group cuda12)" in lib
    assert (
        f"RUN_ARGS=(big-run {job_dir}/stage-0.yaml /shared/out -p default -g default --load {COUNTJOB})"
        in lib
    )
    stage = yaml.safe_load(files["stage-0.yaml"])
    assert (
        stage["request"] == {"chip": "h100", "n": 16, "n_shards": None}
        and stage["config"]["count"]["steps"] == 7
    )
    for name, body in files.items():
        if name.endswith(".sh") or name.endswith(".sbatch"):
            assert subprocess.run(["bash", "-n"], input=body, text=True).returncode == 0, name
    assert not (tmp_path / "home").exists(), "a dry run changes nothing"


@pytest.mark.parametrize("value", ["lab team", "lab'x", "a$(id)", "x\ny"])
def test_sbatch_values_sbatch_cannot_read_are_refused(
    value: str, tmp_path: Path, count_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dispatch = tmp_path / "d.yaml"
    host = {**SLURM_HOST, "account": value}
    dispatch.write_text(
        yaml.safe_dump({"clusters": {"hpc": CLUSTER}, "hosts": {"hpc-slurm": host}})
    )
    code = main(
        [
            "submit",
            "r",
            str(count_yaml),
            "-d",
            str(dispatch),
            "--chip",
            "h100",
            "-n",
            "8",
            "--load",
            COUNTJOB,
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "sbatch --account value" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "name", ["my run", "r'x", 'r"x', "r$(touch PWNED)", "r`id`", "r\nx", "r;ls", "-r", "../r"]
)
def test_hostile_run_names_are_refused(
    name: str,
    tmp_path: Path,
    count_yaml: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    assert main(["submit", "--load", COUNTJOB, "--", name, str(count_yaml)]) == 2
    assert "bad run name" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


@pytest.mark.cluster  # its `home` fixture brings the test cluster up (scripts/testcluster/up.sh)
def test_hostile_paths_and_values_run_literally(
    shared: Path, home: Path, count_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local job whose folders and environment are full of shell syntax runs, and runs nothing else."""
    root, work = shared / "output", shared / "work"
    dispatch = write_dispatch(home.parent / "d.yaml", root, work, hosts=[])
    echo = HOSTILE + "\n$(touch PWNED3)"
    args = [
        "submit",
        "hostile",
        str(count_yaml),
        "-d",
        str(dispatch),
        "--load",
        COUNTJOB,
        "count.steps=2",
    ]
    assert main([*args, "--env", f"THESEUS_TEST_ECHO={echo}"]) == 0, capsys.readouterr().err
    assert wait_state("hostile", ("completed", "failed")) == "completed"
    assert main(["logs", "hostile"]) == 0
    log = capsys.readouterr().out
    assert f"echo: {echo!r}" in log and "done at step 2" in log
    assert (root / "runs/default/default/hostile/metrics.jsonl").read_text().count("\n") == 2
    planted = [p for p in (shared.parent, shared, root, work, Path.cwd()) if any(p.glob("PWNED*"))]
    assert planted == [] and state_of("hostile") == "completed"


def test_a_path_relative_to_here_is_refused_with_its_absolute_form(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("text")
    yaml_path = tmp_path / "tok.yaml"
    assert main(["configure", "data/tokenize_variable_dataset", str(yaml_path)]) == 0
    capsys.readouterr()
    args = ["submit", "tok", str(yaml_path), "--dry-run", "data.name=files"]
    assert main([*args, "data.paths=[corpus/*.txt]"]) == 2
    err = capsys.readouterr().err
    assert "data.paths.0=corpus/*.txt is relative to this folder" in err
    assert f"give data.paths.0={tmp_path}/corpus/*.txt" in err and len(err.splitlines()) == 1


def test_a_resubmitted_name_goes_where_its_checkpoints_are(
    tmp_path: Path, count_yaml: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from theseus.dispatch import records

    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    dispatch = tmp_path / "d.yaml"
    host = {**SLURM_HOST, "chips": {"cpu": 2}, "partitions": {"cpu": "main"}, "gres": {}}
    dispatch.write_text(
        yaml.safe_dump(
            {
                "clusters": {
                    "hpc": CLUSTER,
                    "local": {"root": str(tmp_path / "out"), "work": "/w"},
                },
                "hosts": {"hpc-slurm": host},
                "priority": ["local", "hpc-slurm"],
            }
        )
    )
    args = ["submit", "again", str(count_yaml), "-d", str(dispatch), "--load", COUNTJOB]
    assert main([*args, "--dry-run"]) == 0
    assert "job.sbatch" not in sections(capsys.readouterr().out)  # local comes first
    ran = {"host_name": "hpc-slurm", "backend": "slurm", "backend_id": "7", "job_dir": "/j"}
    records.save(
        records.Record(
            name="again",
            **ran,
            root=CLUSTER["root"],
            project="default",
            group="default",
            snapshot="s",
        )
    )
    assert main([*args, "--dry-run"]) == 0
    assert "job.sbatch" in sections(capsys.readouterr().out)  # its checkpoints are on hpc
    records.save(
        records.Record(
            name="again", **ran, root="/elsewhere", project="default", group="default", snapshot="s"
        )
    )
    assert main([*args, "--dry-run"]) == 2
    assert "keeps its checkpoints under /elsewhere" in capsys.readouterr().err


def test_a_run_name_is_held_by_one_submission_at_a_time(tmp_path: Path, monkeypatch) -> None:
    import threading

    from theseus.dispatch import records

    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    order: list[str] = []

    def submit_again() -> None:
        with records.claimed("same"):
            order.append("second")

    with records.claimed("same"):
        second = threading.Thread(target=submit_again)
        second.start()
        second.join(timeout=0.5)
        order.append("first done")
    second.join(timeout=5)
    assert order == ["first done", "second"]


def test_a_chip_count_from_the_yaml_that_fits_nowhere_says_how_to_change_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    yaml_path = tmp_path / "count.yaml"
    configure = ["configure", "test/dispatch/count", str(yaml_path), "--load", COUNTJOB]
    assert main([*configure, "--chip", "h100", "-n", "512"]) == 0
    dispatch = tmp_path / "d.yaml"
    local = {"root": str(tmp_path / "out"), "work": str(tmp_path / "work")}
    dispatch.write_text(yaml.safe_dump({"clusters": {"local": local}}))
    args = ["submit", "big", str(yaml_path), "-d", str(dispatch), "--load", COUNTJOB, "--dry-run"]
    capsys.readouterr()
    assert main([*args, "--chip", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no host can run 512 × cpu now" in err
    assert f"{yaml_path} asks for 512; pass -n for another count" in err
    assert main([*args, "--chip", "cpu", "-n", "512"]) == 2  # asked for here: nothing to add
    assert "asks for" not in capsys.readouterr().err
    assert main(args) == 2  # no host has an h100 at all: the count is not what to change
    err = capsys.readouterr().err
    assert "no host can run 512 × h100 now" in err and "asks for" not in err
    assert main([*args, "--chip", "cpu", "--cluster", "nosuch"]) == 2
    assert capsys.readouterr().err == "error: no cluster 'nosuch' (clusters: local)\n"


def test_a_job_that_runs_as_one_process_is_not_started_as_several(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    bpe, train = tmp_path / "bpe.yaml", tmp_path / "train.yaml"
    assert main(["configure", "data/train_tokenizer", str(bpe)]) == 0
    assert main(["configure", "gpt/train/pretrain", str(train)]) == 0
    host = {**SLURM_HOST, "chips": {"cpu": 4}, "partitions": {"cpu": "main"}, "gres": {}}
    dispatch = tmp_path / "d.yaml"
    dispatch.write_text(yaml.safe_dump({"clusters": {"hpc": CLUSTER}, "hosts": {"hpc": host}}))
    capsys.readouterr()
    args = ["-d", str(dispatch), "--exclude-cluster", "local", "--dry-run", "-n", "2"]
    assert main(["submit", "bpe", str(bpe), *args]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: data/train_tokenizer runs as one process, but 2 × cpu on hpc starts 2; "
        "submit it on its own with -n 1\n"
    )
    assert main(["submit", "tr", str(train), *args]) == 0  # training spans the tasks
    monkeypatch.setenv("THESEUS_NUM_PROCESSES", "2")  # as one task of a user's own srun
    capsys.readouterr()
    assert main(["run", "bpe", str(bpe), str(tmp_path / "out")]) == 2
    assert "runs as one process, but this is one of several" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_submit_fresh_of_a_run_submitted_before_needs_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused here, as the trainer would refuse it on the host once it found the checkpoints."""
    from theseus.dispatch import records

    train, dispatch = _local_submission(tmp_path, monkeypatch)
    root = str(tmp_path / "o")
    before = records.Record("again", "local", "local", "1", "/j", root, "default", "default", "s")
    records.save(before)
    args = ["submit", "again", str(train), "-d", str(dispatch), "--chip", "cpu", "-n", "1"]
    capsys.readouterr()
    assert main([*args, "--fresh", "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        "error: --fresh: again was submitted before (to local) and may have checkpoints; add "
        "training.overwrite=true to move them and its logs aside, or pick another run name\n"
    )
    assert main([*args, "--fresh", "--dry-run", "training.overwrite=true"]) == 0
    assert main([*args, "--dry-run"]) == 0  # resuming needs nothing


def _git_repository(path: Path, files: dict[str, str]) -> Path:
    """A git repository at `path` holding `files` (name -> text), committed."""
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "start"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=path, check=True
        )
    return path


def test_load_files_are_checked_against_the_snapshot(tmp_path: Path, count_yaml: Path) -> None:
    """A file given to --load must be in the code the job runs, and is named as it is there,
    whichever folder of the repository the submit runs from."""
    countjob = Path(__file__).with_name("countjob.py").read_text()
    project = {"pyproject.toml": "[project]\nname = 'x'\n", "uv.lock": "", "countjob.py": countjob}
    repo = _git_repository(tmp_path / "repo", project)
    (repo / "sub").mkdir()
    (repo / "untracked.py").write_text("x = 1\n")
    (tmp_path / "outside.py").write_text("y = 1\n")
    dispatch = tmp_path / "d.yaml"
    dispatch.write_text(yaml.safe_dump({"clusters": {"local": {"root": "/o", "work": "/w"}}}))

    def submit(*loads: str) -> subprocess.CompletedProcess:
        args = ["submit", "c", str(count_yaml), "-d", str(dispatch), "--dry-run"]
        for load in ("../countjob.py", *loads):
            args += ["--load", load]
        env = {**os.environ, "THESEUS_HOME": str(tmp_path / "home")}
        command = [sys.executable, "-m", "theseus.cli", *args]
        return subprocess.run(command, cwd=repo / "sub", env=env, capture_output=True, text=True)

    done = submit()
    assert done.returncode == 0, done.stderr
    assert "--load countjob.py" in done.stdout and "../countjob.py" not in done.stdout
    refused = submit("../untracked.py")
    assert refused.returncode == 2 and refused.stderr == (
        f"error: --load ../untracked.py: not a file of the snapshot of {repo} (it is untracked: "
        "commit it, or pass --untracked)\n"
    )
    outside = submit(str(tmp_path / "outside.py"))
    assert outside.returncode == 2 and "outside " in outside.stderr
    assert "move it into the repository" in outside.stderr


def _local_submission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A GPT config and a dispatch file naming only this machine (outputs under tmp_path/o)."""
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    train = tmp_path / "train.yaml"
    assert main(["configure", "gpt/train/pretrain", str(train)]) == 0
    dispatch = tmp_path / "d.yaml"
    local = {"root": str(tmp_path / "o"), "work": str(tmp_path / "w")}
    dispatch.write_text(yaml.safe_dump({"clusters": {"local": local}}))
    return train, dispatch


def test_submit_from_a_repository_that_is_not_a_project_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    train, dispatch = _local_submission(tmp_path, monkeypatch)
    repo = _git_repository(tmp_path / "notes", {"a.txt": "notes"})
    monkeypatch.chdir(repo)
    capsys.readouterr()
    args = ["submit", "t", str(train), "-d", str(dispatch), "--chip", "cpu", "-n", "1"]
    assert main([*args, "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {repo} has no pyproject.toml or uv.lock at its top, which the job installs from"
    )


def test_a_word_that_names_something_here_is_not_taken_for_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """`eval.perplexity.split: val` is a word; a folder named val here changes nothing."""
    train, dispatch = _local_submission(tmp_path, monkeypatch)
    (tmp_path / "val").mkdir()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    args = ["submit", "t", str(train), "-d", str(dispatch), "--chip", "cpu", "-n", "1", "--dry-run"]
    code = main(args)
    assert "is relative to this folder" not in capsys.readouterr().err
    assert code == 2  # this folder is no repository: refused for that, not for the word


def test_records_being_written_and_unusable_homes_are_handled(tmp_path: Path, monkeypatch) -> None:
    from theseus.dispatch import records
    from theseus.errors import UserError

    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    runs = tmp_path / "home" / "runs"
    runs.mkdir(parents=True)
    (runs / ".a.tmp.json").write_text("{")  # a record half-written, or cut short by a kill
    assert records.all_records() == []
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "afile"))
    with (
        pytest.raises(UserError, match="set THESEUS_HOME to a writable folder"),
        records.claimed("a"),
    ):
        pass
    for bad, why in ((b"\xff\xfe\n", "not UTF-8 text"), (None, "Is a directory")):
        target = tmp_path / "dispatch.yaml"
        if bad is None:
            target.unlink()
            target.mkdir()
        else:
            target.write_bytes(bad)
        with pytest.raises(UserError, match=f"cannot read the dispatch file {target} \\({why}"):
            dispatch_config.load(target)
