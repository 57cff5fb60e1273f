"""Code snapshots: what goes in, and that a host never receives the same content twice."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from theseus.dispatch.backends.local import LocalShell, ProcessBackend
from theseus.dispatch.snapshot import take
from theseus.errors import UserError


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / ".gitignore").write_text("ignored.txt\n")
    (repo / "a.py").write_text("A = 1\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    return repo


def test_dirty_changes_are_included_untracked_only_on_request(repo: Path) -> None:
    (repo / "a.py").write_text("A = 2  # uncommitted\n")
    (repo / "new.py").write_text("NEW = 1\n")
    (repo / "ignored.txt").write_text("never\n")
    snap = take(repo)
    assert snap.files["a.py"][1] == b"A = 2  # uncommitted\n"
    assert snap.files["run.sh"][0] == 0o755
    assert "new.py" not in snap.files and "ignored.txt" not in snap.files
    with_untracked = take(repo, untracked=True)
    assert "new.py" in with_untracked.files and "ignored.txt" not in with_untracked.files
    assert len({snap.id, with_untracked.id}) == 2


def test_clean_ships_head_and_refuses_uncommitted_changes(repo: Path) -> None:
    clean = take(repo, clean=True)
    assert clean.files["a.py"][1] == b"A = 1\n" and clean.files["run.sh"][0] == 0o755
    assert clean.id == take(repo).id, "same content, same id"
    (repo / "a.py").write_text("A = 3\n")
    with pytest.raises(UserError, match="uncommitted changes"):
        take(repo, clean=True)


def test_id_follows_content_and_tarball_is_reproducible(repo: Path) -> None:
    first = take(repo)
    (repo / "a.py").write_text("A = 1\n")  # rewritten, same content
    assert take(repo).id == first.id and take(repo).tarball() == first.tarball()
    (repo / "a.py").write_text("A = 4\n")
    assert take(repo).id != first.id
    with tarfile.open(fileobj=io.BytesIO(take(repo).tarball())) as tar:
        assert sorted(tar.getnames()) == [".gitignore", "a.py", "run.sh"]


def test_unchanged_content_is_not_sent_again(repo: Path, tmp_path: Path) -> None:
    backend = ProcessBackend(LocalShell(), "local")
    target = str(tmp_path / "work" / "snapshots")
    snap = take(repo)
    assert backend.ship_snapshot(snap, f"{target}/{snap.id}") is True
    assert (Path(target) / snap.id / "a.py").read_text() == "A = 1\n"
    (Path(target) / snap.id / "a.py").write_text("changed on the host\n")
    assert backend.ship_snapshot(take(repo), f"{target}/{snap.id}") is False
    assert (Path(target) / snap.id / "a.py").read_text() == "changed on the host\n", (
        "nothing was re-sent"
    )
    (repo / "a.py").write_text("A = 5\n")
    changed = take(repo)
    assert backend.ship_snapshot(changed, f"{target}/{changed.id}") is True
    assert sorted(p.name for p in Path(target).iterdir()) == sorted([snap.id, changed.id])


@pytest.mark.parametrize("clean", [False, True], ids=["working-tree", "clean"])
def test_a_link_travels_as_the_file_it_names_and_one_leading_outside_is_refused(
    repo: Path, tmp_path: Path, clean: bool
) -> None:
    (repo / "alias.py").symlink_to("a.py")
    git(repo, "add", "alias.py")
    git(repo, "commit", "-qm", "link")
    assert take(repo, clean=clean).files["alias.py"] == (0o644, b"A = 1\n")
    (tmp_path / "outside.py").write_text("B = 2\n")
    (repo / "away.py").symlink_to(tmp_path / "outside.py")
    git(repo, "add", "away.py")
    git(repo, "commit", "-qm", "away")
    with pytest.raises(
        UserError, match=r"away\.py in .* links outside it .*commit the file itself"
    ):
        take(repo, clean=clean)
