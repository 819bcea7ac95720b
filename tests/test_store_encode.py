"""HDF5 feature store and `matrep encode`: provenance, reuse, atomicity, kill -9 and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from matrep import registry
from matrep.cli import main
from matrep.store import FeatureStore, load_features

from plugin_utils import activate, install_example_plugin, make_dist

SLOW = '''
import os, time
from matrep_example_plugin import HistogramEncoder
class SlowHistogram(HistogramEncoder):
    name = "slowhist"
    def transform(self, X):
        time.sleep(float(os.environ.get("SLOWHIST_SLEEP", "0")))
        return super().transform(X)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    root = install_example_plugin(tmp_path / "site")
    make_dist(root, "slowhist-dist", "0.1", {"slowhist": "slowhist_mod:SlowHistogram"},
              {"slowhist_mod": SLOW})
    activate(monkeypatch, root)
    yield root
    registry.refresh()


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (96, 128), dtype=np.uint8)).save(d / f"m{i}.png")
    (tmp_path / "labels.csv").write_text("file,strength,phase\nm0.png,1.5,a\nm1.png,2.5,b\n"
                                         "m2.png,3.0,a\nghost.png,9,c\n")
    return d


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res


def test_encode_writes_store_with_provenance_and_labels(plugin, images, tmp_path):
    out = tmp_path / "f.h5"
    res = _run(["encode", "--method", "histogram", "--images", str(images), "--out", str(out),
                "--patch", "32", "--stride", "32", "--labels", str(tmp_path / "labels.csv"),
                "--param", "bins=8", "-q"])
    assert res.exit_code == 0, res.output
    assert "label row(s) match no image: ghost.png" in res.output
    assert res.output.strip().splitlines()[-1].endswith(f"in {out}")
    X, table = load_features(out, "histogram")
    assert X.shape == (3 * 3 * 4, 10)
    assert table["strength"].tolist()[:12] == [1.5] * 12
    assert set(table["phase"]) == {"a", "b"}
    (entry,) = FeatureStore(out).entries()
    assert entry["encoder"] == "histogram" and entry["params"] == {"bins": 8}
    assert entry["distribution"] == "matrep-example-plugin" and entry["patch"] == 32
    assert entry["matrep_version"] and entry["created"]


def test_second_encoder_keeps_first_byte_for_byte_and_reuse(plugin, images, tmp_path):
    out = tmp_path / "f.h5"
    base = ["--images", str(images), "--out", str(out), "--patch", "32", "--stride", "32", "-q"]
    assert _run(["encode", "--method", "histogram", "--param", "bins=4", *base]).exit_code == 0
    X1, _ = FeatureStore(out).read("histogram")
    assert _run(["encode", "--method", "slowhist", *base]).exit_code == 0
    X1b, _ = FeatureStore(out).read(FeatureStore(out).resolve("histogram"))
    np.testing.assert_array_equal(X1, X1b)
    assert len(FeatureStore(out).keys()) == 2
    res = _run(["encode", "--method", "histogram", "--param", "bins=4", *base])
    assert res.output.startswith("reused stored")


def test_store_refuses_other_patch_set(plugin, images, tmp_path):
    out = tmp_path / "f.h5"
    assert _run(["encode", "--method", "histogram", "--images", str(images), "--out", str(out),
                 "--patch", "32", "--stride", "32", "-q"]).exit_code == 0
    res = CliRunner().invoke(main, ["encode", "--method", "histogram", "--images", str(images),
                                    "--out", str(out), "--patch", "32", "--stride", "16", "-q"])
    assert res.exit_code == 1
    assert "holds features of another set of patches" in res.output
    assert "Traceback" not in res.output


def test_corrupt_store_is_a_one_line_error(plugin, images, tmp_path):
    out = tmp_path / "f.h5"
    out.write_bytes(b"garbage")
    res = CliRunner().invoke(main, ["encode", "--method", "histogram", "--images", str(images),
                                    "--out", str(out), "-q", "--patch", "32"])
    assert res.exit_code == 1 and "not a readable HDF5 feature store" in res.output
    assert out.read_bytes() == b"garbage"


def test_bad_image_cli_error_and_skip_bad(plugin, images, tmp_path):
    (images / "zz.png").write_text("not an image")
    args = ["encode", "--method", "histogram", "--images", str(images), "--out",
            str(tmp_path / "f.h5"), "--patch", "32", "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {images / 'zz.png'}: not an image (unrecognised file content)"
    res = CliRunner().invoke(main, args + ["--skip-bad"])
    assert res.exit_code == 0 and f"skipped {images / 'zz.png'}: not an image" in res.output


def test_unknown_method_is_one_line(plugin, images, tmp_path):
    res = CliRunner().invoke(main, ["encode", "--method", "nope", "--images", str(images),
                                    "--out", str(tmp_path / "f.h5")])
    assert res.exit_code == 1 and "unknown encoder 'nope'" in res.output
    assert "histogram" in res.output


def test_encoders_lists_plugin(plugin):
    res = CliRunner().invoke(main, ["encoders"])
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if ln.startswith("histogram"))
    assert "matrep-example-plugin" in line and "0.1.0" in line


def test_kill_9_leaves_no_corrupt_file_and_resume_continues(plugin, images, tmp_path):
    out = tmp_path / "f.h5"
    base = [sys.executable, "-m", "matrep", "encode", "--images", str(images), "--out", str(out),
            "--patch", "32", "--stride", "16", "--chunk", "4", "-q"]
    # a first, complete encoder in the file: it must survive the kill untouched
    subprocess.run(base + ["--method", "histogram"], check=True, env=os.environ.copy())
    before = out.read_bytes()
    env = {**os.environ, "SLOWHIST_SLEEP": "0.25"}
    proc = subprocess.Popen(base + ["--method", "slowhist"], env=env)
    partial = None
    deadline = time.time() + 60
    while time.time() < deadline:
        parts = list(tmp_path.glob(".f.h5.slowhist-*.partial"))
        if parts and len(list(parts[0].glob("chunk-*.npy"))) >= 3:
            partial = parts[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial is not None, "encode never checkpointed a chunk"
    assert out.read_bytes() == before            # the store was not touched
    with h5py.File(out, "r") as f:                # and is a valid file
        assert len(f["features"]) == 1
    done = len(list(partial.glob("chunk-*.npy")))
    res = subprocess.run(base + ["--method", "slowhist"], env={**os.environ}, capture_output=True,
                         text=True, check=True)
    # every chunk checkpointed before the kill is reused, no more and no fewer (chunk files are
    # renamed into place whole, so the count after the kill is exact)
    assert f"(resumed {done} finished chunks)" in res.stdout, res.stdout
    assert not partial.exists()
    X, _ = FeatureStore(out).read("slowhist")
    ref = tmp_path / "ref.h5"
    subprocess.run([a if a != str(out) else str(ref) for a in base] + ["--method", "slowhist"],
                   check=True, env=os.environ.copy())
    np.testing.assert_array_equal(X, FeatureStore(ref).read("slowhist")[0])


# -- concurrent writers, leftovers ---------------------------------------------------------
def _encode_args(images, out, *extra):
    return ["encode", "--method", "twopoint", "--images", str(images), "--out", str(out),
            "--patch", "32", "--stride", "32", "-q", *extra]


def _child_encode(args, go):
    """Run `matrep encode` in a forked process once ``go`` is set; exit 0 on success."""
    import traceback

    go.wait()
    try:
        main(args, standalone_mode=False)
    except BaseException:  # noqa: BLE001 - reported through the exit status
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _race(arg_lists):
    """Start one forked `matrep encode` per argument list at the same moment; exit codes."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    go = ctx.Event()
    procs = [ctx.Process(target=_child_encode, args=(a, go)) for a in arg_lists]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def test_concurrent_encodes_into_one_store_both_land(images, tmp_path):
    # two pairs with different parameters, then a pair of identical runs: every run exits 0,
    # every key is stored (before the lock, the second writer's copy dropped the first's key)
    assert _run(_encode_args(images, tmp_path / "warm" / "w.h5")).exit_code == 0  # imports
    shutil.rmtree(tmp_path / "warm")
    for i, (a, b) in enumerate([(4, 6), (5, 7)]):
        out = tmp_path / f"f{i}.h5"
        codes = _race([_encode_args(images, out, "--param", f"cutoff={a}"),
                       _encode_args(images, out, "--param", f"cutoff={b}")])
        assert codes == [0, 0]
        cutoffs = sorted(e["params"]["cutoff"] for e in FeatureStore(out).entries())
        assert cutoffs == [a, b]
    out = tmp_path / "same.h5"
    assert _race([_encode_args(images, out), _encode_args(images, out)]) == [0, 0]
    assert len(FeatureStore(out).keys()) == 1
    # nothing temporary stays: only the stores and their (empty) lock files
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("imgs", "labels.csv")) == \
        [".f0.h5.lock", ".f1.h5.lock", ".same.h5.lock", "f0.h5", "f1.h5", "same.h5"]


@pytest.mark.slow
def test_twenty_concurrent_pairs_of_real_processes_keep_both_keys(images, tmp_path):
    for i in range(20):
        out = tmp_path / f"f{i}.h5"
        cmd = [sys.executable, "-m", "matrep", *_encode_args(images, out)]
        procs = [subprocess.Popen(cmd + ["--param", f"cutoff={c}"], stderr=subprocess.PIPE,
                                  text=True) for c in (4, 6)]
        errs = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs
        assert sorted(e["params"]["cutoff"] for e in FeatureStore(out).entries()) == [4, 6]


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_next_write_removes_leftovers_of_dead_writers(images, tmp_path):
    from matrep.atomic import _HOST
    from matrep.store import partial_dir

    out = tmp_path / "f.h5"
    assert _run(_encode_args(images, out, "--param", "cutoff=4")).exit_code == 0
    (key,) = FeatureStore(out).keys()
    dead = _dead_pid()
    leftovers = [tmp_path / f".tmp-f.h5-{dead}@{_HOST}-abcd1234.h5",   # killed store write
                 tmp_path / ".tmp-f.h5-zyxw9876.h5"]                     # older format, no pid
    for p in leftovers:
        p.write_bytes(b"half a file")
    live = tmp_path / f".tmp-f.h5-{os.getpid()}@{_HOST}-live0000.h5"  # a writer still running
    live.write_bytes(b"in progress")
    done = partial_dir(out, key)                  # its writer died after the store write
    done.mkdir()
    (done / "meta.json").write_text("{}")
    other = partial_dir(out, "twopoint-0123abcd")  # an interrupted encode of other settings
    other.mkdir()
    (other / "meta.json").write_text('{"digest": "0123abcd"}')
    broken = partial_dir(out, "twopoint-99999999")  # killed before its first chunk
    broken.mkdir()

    assert _run(_encode_args(images, out, "--param", "cutoff=6")).exit_code == 0
    assert len(FeatureStore(out).keys()) == 2
    assert not any(p.exists() for p in leftovers + [done, broken])
    assert live.exists() and other.exists()  # still resumable: `encode` again continues it
    live.unlink()


def test_encoders_json_names_the_generative_flag(plugin):
    """``--json`` gives the flag under its name, ``generative``, and under its old name."""
    res = CliRunner().invoke(main, ["encoders", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["texturevae"]["generative"] is True and rows["texturevae"]["can_decode"] is True
    assert rows["vgg19"]["generative"] is False and rows["histogram"]["can_decode"] is False
