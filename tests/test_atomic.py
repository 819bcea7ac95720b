"""Atomic writes: all or nothing, usual permissions."""

import os
import stat

import pytest

from matrep.atomic import atomic_dir, atomic_path, atomic_write_text


def test_failed_write_keeps_the_old_file(tmp_path):
    f = tmp_path / "a.txt"
    atomic_write_text(f, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert f.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "r.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
            os.chmod(d / "f", 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == 0o644


def test_atomic_dir_replaces_whole_folder(tmp_path):
    with atomic_dir(tmp_path / "m") as d:
        (d / "one").write_text("1")
    with atomic_dir(tmp_path / "m") as d:
        (d / "two").write_text("2")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["two"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
