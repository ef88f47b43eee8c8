"""benchmarks/stage.sh: data split into parts here, received in order there, a restaging not mixed with the last."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stage.sh"
MIB = 1 << 20

pytestmark = pytest.mark.skipif(shutil.which("split") is None, reason="stage.sh needs coreutils' split")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git working tree holding stage.sh, as the device machine's copy of the repository is."""
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "benchmarks" / "stage.sh")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def stage(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "benchmarks/stage.sh", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "STAGED": str(repo.parent / "staged"), **env})


def carry(repo: Path, machine: Path, name: str, part: Path) -> None:
    """What a call does with a carried part: lands at its path in the machine's copy, beside what earlier calls left."""
    (machine / ".carry" / name).mkdir(parents=True, exist_ok=True)
    shutil.copy(part, machine / ".carry" / name / part.name)


def data(tmp_path: Path, name: str, size: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "blob.bin").write_bytes(os.urandom(size))
    return folder


def test_parts_received_in_order_unpack_the_data(repo, tmp_path):
    src = data(tmp_path, "images", 5 * MIB // 2)
    made = stage(repo, "data", "study", str(src), PART_MIB="1")
    assert made.returncode == 0, made.stderr
    parts = sorted((repo / ".carry" / "study").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in parts] == ["part-1-of-3", "part-2-of-3", "part-3-of-3"]

    machine = tmp_path / "machine"
    shutil.copytree(repo / "benchmarks", machine / "benchmarks")
    for part in parts:
        carry(repo, machine, "study", part)
        got = stage(machine, "receive", "study")
        assert got.returncode == 0, got.stderr
    assert "ready:" in got.stdout
    assert (tmp_path / "staged" / "study" / "images" / "blob.bin").read_bytes() == (src / "blob.bin").read_bytes()
    assert not list((machine / ".carry" / "study").iterdir())  # each part deleted once read
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == ["study"]  # no tar or unpacking folder left


def test_a_restaging_in_other_parts_is_not_mixed_with_the_last(repo, tmp_path):
    """A part of an earlier staging left on the machine (a call that failed) must neither join nor block the next."""
    src = data(tmp_path, "images", 5 * MIB // 2)
    machine = tmp_path / "machine"
    shutil.copytree(repo / "benchmarks", machine / "benchmarks")
    assert stage(repo, "data", "study", str(src), PART_MIB="2").returncode == 0  # 2 parts
    carry(repo, machine, "study", repo / ".carry" / "study" / "part-2-of-2")
    stray = stage(machine, "receive", "study")
    assert stray.returncode == 1 and "expected part 1 of ?" in stray.stderr

    assert stage(repo, "data", "study", str(src), PART_MIB="1").returncode == 0  # restaged: 3 parts
    for i in (1, 2, 3):
        carry(repo, machine, "study", repo / ".carry" / "study" / f"part-{i}-of-3")
        got = stage(machine, "receive", "study")
        assert got.returncode == 0, got.stderr
    assert (tmp_path / "staged" / "study" / "images" / "blob.bin").read_bytes() == (src / "blob.bin").read_bytes()


def test_a_part_out_of_order_is_named(repo, tmp_path):
    src = data(tmp_path, "images", 5 * MIB // 2)
    machine = tmp_path / "machine"
    shutil.copytree(repo / "benchmarks", machine / "benchmarks")
    assert stage(repo, "data", "study", str(src), PART_MIB="1").returncode == 0
    carry(repo, machine, "study", repo / ".carry" / "study" / "part-1-of-3")
    assert stage(machine, "receive", "study").returncode == 0
    carry(repo, machine, "study", repo / ".carry" / "study" / "part-3-of-3")
    skipped = stage(machine, "receive", "study")
    assert skipped.returncode == 1
    assert "got part 3 of 3 of study, expected part 2 of 3" in skipped.stderr


def test_parts_leave_room_for_the_working_tree(repo, tmp_path):
    """Without PART_MIB a part and the working tree fit one call's 64 MiB together."""
    (repo / "results.bin").write_bytes(os.urandom(20 * MIB))  # the tree grows: tracked or not, it travels
    made = stage(repo, "data", "study", str(data(tmp_path, "images", MIB)))
    assert made.returncode == 0, made.stderr
    assert "of at most 41 MiB" in made.stdout  # 64 - 21 (the tree, rounded up) - 2 to spare
