"""The dispatch file: malformed files are refused in one line naming the key, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.dispatch.conftest import COUNTJOB, REPO, theseus
from theseus.cli import main
from theseus.dispatch.config import load, parse
from theseus.errors import UserError

GOOD_CLUSTER = "clusters:\n  c: {root: /data/out, work: /data/work}\n"
MALFORMED = {
    "unknown top-level key": ("clusters: {}\nhost: {}\n", "host: unknown key"),
    "unknown cluster key": (
        "clusters:\n  c: {root: /a, work: /b, rot: /c}\n",
        "clusters.c.rot: unknown key",
    ),
    "relative root": (
        "clusters:\n  c: {root: out, work: /b}\n",
        "clusters.c.root: must be an absolute path",
    ),
    "missing work": ("clusters:\n  c: {root: /a}\n", "clusters.c.work: Field required"),
    "bad host type": (
        GOOD_CLUSTER + "hosts:\n  h: {type: pbs, cluster: c, ssh: h, chips: {h100: 8}}\n",
        "hosts.h.type",
    ),
    "unknown chip": (
        GOOD_CLUSTER + "hosts:\n  h: {type: ssh, cluster: c, ssh: h, chips: {h900: 8}}\n",
        "unknown chip 'h900'",
    ),
    "chip count not int": (
        GOOD_CLUSTER + "hosts:\n  h: {type: ssh, cluster: c, ssh: h, chips: {h100: eight}}\n",
        "hosts.h.chips.h100",
    ),
    "zero chips": (
        GOOD_CLUSTER + "hosts:\n  h: {type: ssh, cluster: c, ssh: h, chips: {h100: 0}}\n",
        "hosts.h.chips.h100",
    ),
    "undefined cluster": (
        "hosts:\n  h: {type: ssh, cluster: nope, ssh: h, chips: {h100: 8}}\n",
        "no cluster 'nope'",
    ),
    "ssh host without address": (
        GOOD_CLUSTER + "hosts:\n  h: {type: ssh, cluster: c, chips: {h100: 8}}\n",
        "needs ssh",
    ),
    "slurm key on ssh host": (
        GOOD_CLUSTER
        + "hosts:\n  h: {type: ssh, cluster: c, ssh: h, chips: {h100: 8}, qos: high}\n",
        "hosts.h: qos only applies to slurm hosts",
    ),
    "bad time": (
        GOOD_CLUSTER + "hosts:\n  h: {type: slurm, cluster: c, chips: {h100: 8}, time: two days}\n",
        "hosts.h.time",
    ),
    "port out of range": (
        GOOD_CLUSTER
        + "hosts:\n  h: {type: ssh, cluster: c, host: x, port: 99999, chips: {h100: 8}}\n",
        "hosts.h.port",
    ),
    "bad env name": ("clusters:\n  c: {root: /a, work: /b, env: {'A B': x}}\n", "clusters.c.env"),
    "password in an etcd mount url": (
        "clusters:\n  c: {root: /a, work: /b, mount: 'etcd://root:hunter2@db:2379/jfs'}\n",
        "clusters.c.mount: holds a password (user:password@) that JuiceFS cannot take from"
        " META_PASSWORD",
    ),
    "password in mount url query": (
        "clusters:\n  c: {root: /a, work: /b, mount:"
        " 'postgres://user@127.0.0.1:5432/juicefs?password=S3CRET&sslmode=disable'}\n",
        "(query parameter password) that JuiceFS cannot take from META_PASSWORD",
    ),
    "two different passwords": (
        "clusters:\n  c: {root: /a, work: /b, mount: 'redis://:hunter2@db:6379/1',"
        " env: {META_PASSWORD: other}}\n",
        "clusters.c: mount holds a password and env sets another META_PASSWORD",
    ),
    "cache size without a known unit": (
        "clusters:\n  c: {root: /a, work: /b, cache_size: 100X}\n",
        "clusters.c.cache_size: expected a size such as 100G, 512M or 1.5T (or a number of MiB),"
        " got '100X'",
    ),
    "cache size below a MiB": (
        "clusters:\n  c: {root: /a, work: /b, cache_size: 512K}\n",
        "clusters.c.cache_size: must be at least 1 MiB",
    ),
    "cache size zero": (
        "clusters:\n  c: {root: /a, work: /b, cache_size: 0}\n",
        "clusters.c.cache_size: must be at least 1 MiB",
    ),
    "sqlite auth password in mount url": (
        "clusters:\n  c: {root: /a, work: /b, mount: 'sqlite3:///x.db?_auth&_auth_pass=S3CRET'}\n",
        "query parameter _auth_pass",
    ),
    "priority names unknown host": (
        GOOD_CLUSTER + "priority: [ghost]\n",
        "priority: no host 'ghost'",
    ),
    "reserved host name": (
        GOOD_CLUSTER + "hosts:\n  local: {type: ssh, cluster: c, ssh: h, chips: {cpu: 1}}\n",
        "reserved",
    ),
    "bad directive": (
        GOOD_CLUSTER
        + "hosts:\n  h: {type: slurm, cluster: c, chips: {h100: 8}, directives: ['-x; rm -rf /']}\n",
        "hosts.h.directives",
    ),
    "missing env variable": (
        "clusters:\n  c: {root: /a, work: /b, env: {K: '${oc.env:THESEUS_TEST_SURELY_UNSET}'}}\n",
        "clusters.c.env.K: environment variable THESEUS_TEST_SURELY_UNSET is not set",
    ),
    "misspelt required key": (
        GOOD_CLUSTER + "hosts:\n  box: {type: ssh, cluster: c, ssh: h, chipz: {h100: 8}}\n",
        "hosts.box.chipz: unknown key",
    ),
    "not a mapping": ("- just\n- a list\n", "must hold a mapping"),
    "bad yaml": ("clusters: {c: [\n", "bad YAML"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dispatch_file_is_one_line_error(
    case: str,
    tmp_path: Path,
    count_yaml: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text, expected = MALFORMED[case]
    bad = tmp_path / "dispatch.yaml"
    bad.write_text(text)
    home = tmp_path / "home"
    monkeypatch.setenv("THESEUS_HOME", str(home))
    code = main(["submit", "run1", str(count_yaml), "-d", str(bad), "--load", COUNTJOB])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(bad) in lines[0] and expected in lines[0], lines[0]
    assert not home.exists(), "nothing may be written for a refused submission"


def test_cli_exit_code_and_no_traceback(tmp_path: Path, count_yaml: Path) -> None:
    bad = tmp_path / "dispatch.yaml"
    bad.write_text(MALFORMED["unknown cluster key"][0])
    result = theseus("submit", "run1", str(count_yaml), "-d", str(bad), "--load", COUNTJOB)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_job_config_is_checked_before_anything_leaves(
    tmp_path: Path,
    count_yaml: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path))
    assert main(["submit", "run1", str(count_yaml), "--load", COUNTJOB, "count.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "count.stepz" in err and "count.steps" in err
    assert not (tmp_path / "runs").exists()


def test_example_file_is_valid_and_env_values_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUICEFS_META_PASSWORD", "pw-from-env")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-from-env")
    config = load(REPO / "examples" / "dispatch.yaml")
    assert config.hosts and config.clusters
    assert any(c.env.get("META_PASSWORD") == "pw-from-env" for c in config.clusters.values())


def test_no_file_means_only_the_local_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("THESEUS_DISPATCH", raising=False)
    config = load()
    assert config.hosts == {} and config.clusters == {}
    with pytest.raises(UserError, match="no dispatch file"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match=r"hosts\.h\.chips"):
        parse(
            {
                "clusters": {"c": {"root": "/a", "work": "/b"}},
                "hosts": {"h": {"type": "ssh", "ssh": "x", "cluster": "c", "chips": []}},
            },
            "f",
        )


@pytest.mark.parametrize(
    "url",
    [
        "postgres://user@127.0.0.1:5432/juicefs?password=S3CRET&sslmode=disable",
        "postgres://user@db/juicefs?sslmode=disable&PassWord=S3CRET",
        "sqlite3:///x.db?_auth&_auth_user=admin&_auth_pass=S3CRET",
        "etcd://db:2379/jfs?pwd=S3CRET",
        "etcd://root:S3CRET@db:2379/jfs",
        "tikv://root:S3CRET@pd1:2379/jfs",
    ],
)
def test_a_password_juicefs_cannot_take_from_the_environment_is_refused_without_echoing_it(
    url: str,
) -> None:
    data = {"clusters": {"c": {"root": "/a", "work": "/b", "mount": url}}}
    with pytest.raises(UserError, match="META_PASSWORD") as error:
        parse(data, "f")
    assert "S3CRET" not in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://db:6379/1",
        "redis://user:@db:6379/1",
        "redis://user@db:6379/1",  # a user name (go-redis); the password comes from META_PASSWORD
        "postgres://user@db:5432/juicefs?sslmode=disable",
        "mysql://user@(db:3306)/juicefs",
        "sqlite3:///var/lib/juicefs/x.db?_auth&_auth_user=admin",
        "tikv://pd1:2379,pd2:2379/jfs",
    ],
)
def test_a_mount_url_without_a_password_is_accepted(url: str) -> None:
    data = {"clusters": {"c": {"root": "/a", "work": "/b", "mount": url}}}
    assert parse(data, "f").clusters["c"].mount == url


# The JuiceFS snippet of the reference system's dispatch file, as written there.
REFERENCE_SNIPPET = """\
clusters:
  lab:
    root: /mnt/jfs/output
    work: /mnt/jfs/work
    mount: redis://:password@redis.example.com:6379/0
    cache_size: 100G
"""


def test_the_reference_juicefs_snippet_loads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "dispatch.yaml"
    path.write_text(REFERENCE_SNIPPET)
    cluster = load(path).clusters["lab"]
    assert cluster.mount == "redis://:@redis.example.com:6379/0"
    assert cluster.env == {"META_PASSWORD": "password"}
    assert cluster.cache_size == 100 * 1024  # MiB, as `juicefs mount --cache-size` reads it


@pytest.mark.parametrize(
    ("url", "kept", "password"),
    [
        ("redis://:S3CRET@db:6379/1", "redis://:@db:6379/1", "S3CRET"),
        ("rediss://user:S3:CR@T@db:6380/1", "rediss://user:@db:6380/1", "S3:CR@T"),
        ("redis://:S3CRET@master,db1,db2:26379/2", "redis://:@master,db1,db2:26379/2", "S3CRET"),
        (
            "unix://user:S3CRET@/run/redis.sock?db=1",
            "unix://user:@/run/redis.sock?db=1",
            "S3CRET",
        ),
        ("mysql://user:S3CRET@(db:3306)/juicefs", "mysql://user:@(db:3306)/juicefs", "S3CRET"),
        (
            "postgres://user:p%40ss%2Fw0rd@db:5432/juicefs?sslmode=disable",
            "postgres://user:@db:5432/juicefs?sslmode=disable",
            "p@ss/w0rd",
        ),
    ],
)
def test_a_password_in_the_mount_url_moves_to_meta_password(
    url: str, kept: str, password: str
) -> None:
    cluster = {"root": "/a", "work": "/b", "mount": url, "env": {"WANDB_API_KEY": "k"}}
    parsed = parse({"clusters": {"c": cluster}}, "f").clusters["c"]
    assert parsed.mount == kept
    assert parsed.env == {"WANDB_API_KEY": "k", "META_PASSWORD": password}
    # the same password given both ways is no conflict
    cluster["env"] = {"META_PASSWORD": password}
    assert parse({"clusters": {"c": cluster}}, "f").clusters["c"].mount == kept


@pytest.mark.parametrize(
    ("size", "mib"),
    [
        (102400, 102400),
        ("2048", 2048),
        ("512M", 512),
        ("100G", 102400),
        ("100GiB", 102400),
        ("100GB", 102400),
        ("1.5T", 1536 * 1024),
        ("1t", 1024 * 1024),
        ("2048K", 2),
    ],
)
def test_cache_size_takes_units(size: int | str, mib: int) -> None:
    data = {"clusters": {"c": {"root": "/a", "work": "/b", "cache_size": size}}}
    assert parse(data, "f").clusters["c"].cache_size == mib


@pytest.mark.parametrize("size", ["100X", "G", "1.5", "-1G", "100 GiBs", True, 1.5, [100]])
def test_a_bad_cache_size_is_refused_naming_the_key(size: object) -> None:
    data = {"clusters": {"c": {"root": "/a", "work": "/b", "cache_size": size}}}
    with pytest.raises(
        UserError, match=r"^f: clusters\.c\.cache_size: expected a size such as 100G"
    ):
        parse(data, "f")


def test_the_password_is_in_no_script_a_dry_run_shows(
    tmp_path: Path,
    count_yaml: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("THESEUS_HOME", str(tmp_path / "home"))
    password = "hunter2-S3CRET"
    cluster = {
        "root": "/shared/out",
        "work": "/shared/work",
        "mount": f"redis://:{password}@redis.example.com:6379/0",
        "cache_size": "100G",
    }
    host = {"type": "slurm", "ssh": "login.example", "cluster": "hpc", "chips": {"h100": 8}}
    dispatch = tmp_path / "d.yaml"
    dispatch.write_text(yaml.safe_dump({"clusters": {"hpc": cluster}, "hosts": {"hpc": host}}))
    args = ["submit", "r", str(count_yaml), "-d", str(dispatch), "--chip", "h100", "-n", "8"]
    assert main([*args, "--load", COUNTJOB, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert password not in out + err
    assert "\nMETA_URL=redis://:@redis.example.com:6379/0\n" in out
    assert "JUICEFS_MOUNT_OPTIONS=(--cache-size 102400)" in out
    assert not (tmp_path / "home").exists()
