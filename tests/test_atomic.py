"""Atomic writes: all or nothing, usual permissions."""

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from matrep.atomic import (_HOST, STALE_AGE_S, atomic_dir, atomic_path, atomic_write_text, lock,
                           recover_dir, remove_leftovers)
from matrep.errors import LockedError


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


# -- permissions of files a writer makes anew ------------------------------------------------
def test_file_recreated_by_its_writer_gets_umask_permissions(tmp_path):
    # safetensors' save_file makes its file anew with mode 0600 (state.safetensors was 0600
    # while its siblings were 0644)
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "state.safetensors") as tmp:
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"x")
            os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state.safetensors").stat().st_mode) == 0o644


# -- leftovers of dead writers ----------------------------------------------------------------
def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_next_write_removes_only_dead_writers_temporaries(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    dead_tmp = tmp_path / f".tmp-a.txt-{dead}@{_HOST}-abcd1234"
    live_tmp = tmp_path / f".tmp-a.txt-{me}@{_HOST}-abcd1234"
    other_host = tmp_path / f".tmp-a.txt-{dead}@elsewhere-abcd1234"
    young_legacy = tmp_path / ".tmp-a.txt-k2j4h5g6"
    old_legacy = tmp_path / ".tmp-a.txt-q1w2e3r4.h5"
    other_target = tmp_path / f".tmp-b.txt-{dead}@{_HOST}-abcd1234"
    for p in (dead_tmp, live_tmp, other_host, young_legacy, old_legacy, other_target):
        p.write_text("half")
    t = time.time() - STALE_AGE_S - 60
    os.utime(old_legacy, (t, t))
    atomic_write_text(tmp_path / "a.txt", "new")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["a.txt", live_tmp.name, other_host.name, young_legacy.name,
                           other_target.name])
    remove_leftovers(tmp_path / "a.txt", locked=True)  # the lock held: no other writer exists
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.txt", live_tmp.name,
                                                                  other_target.name])


def test_dead_writers_temporary_folders_are_removed(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".tmp-m-{dead}@{_HOST}-abcd1234").mkdir()
    (tmp_path / f".old-m-{dead}@{_HOST}").mkdir()
    (tmp_path / f".old-m-{dead}").mkdir()  # older format
    with atomic_dir(tmp_path / "m") as d:
        (d / "one").write_text("1")
    with atomic_dir(tmp_path / "m") as d:
        (d / "two").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _checkpoint(d: Path, text: str):
    d.mkdir()
    (d / "checkpoint.json").write_text(text)


def test_swap_killed_between_renames_older_names_recovers_previous(tmp_path):
    # the state the issue found: only .old-checkpoint-PID and .tmp-checkpoint-* remain
    dead = _dead_pid()
    _checkpoint(tmp_path / f".old-checkpoint-{dead}", "previous")
    _checkpoint(tmp_path / ".tmp-checkpoint-a1b2c3d4", "unknown")
    assert recover_dir(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "checkpoint.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_swap_killed_between_renames_recovers_the_new_folder(tmp_path):
    # a real kill: the writer dies right after moving the old folder aside
    with atomic_dir(tmp_path / "checkpoint") as d:
        (d / "checkpoint.json").write_text("previous")
    code = f"""
import os
from pathlib import Path
import matrep.atomic as A
real = os.replace
def replace(src, dst):
    real(src, dst)
    if Path(dst).name.startswith(".old-"):
        os._exit(9)  # killed between the two renames
A.os.replace = replace
with A.atomic_dir(Path({str(tmp_path)!r}) / "checkpoint") as d:
    (d / "checkpoint.json").write_text("new")
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "checkpoint" not in names and len(names) == 2
    assert recover_dir(tmp_path / "checkpoint")  # the new folder was complete: it wins
    assert (tmp_path / "checkpoint" / "checkpoint.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_recover_leaves_a_live_writers_swap_alone(tmp_path):
    _checkpoint(tmp_path / f".old-checkpoint-{os.getpid()}@{_HOST}", "previous")
    assert not recover_dir(tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint").exists()


# -- locks ------------------------------------------------------------------------------------
def test_lock_is_reentrant_and_excludes_other_threads(tmp_path):
    target = tmp_path / "f.h5"
    order = []

    def other():
        with lock(target):
            order.append("other")

    with lock(target):
        with lock(target):  # the same thread again: no deadlock
            t = threading.Thread(target=other)
            t.start()
            t.join(0.5)
            assert t.is_alive()  # waits for the holder
            box = []
            u = threading.Thread(target=lambda: box.append(_try_nowait(target)))
            u.start()
            u.join()
            assert isinstance(box[0], LockedError)
            assert "another matrep process is writing" in str(box[0])
            order.append("holder")
    t.join(5)
    assert order == ["holder", "other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".f.h5.lock"]


def _try_nowait(target):
    try:
        with lock(target, wait=False):
            return None  # the lock was free
    except LockedError as exc:
        return exc
