"""Bad-input corpus (issue 16): feature stores, label targets, run folders.

Every case builds one bad input (a tampered HDF5 store, a labels CSV with a bad target, a
damaged run folder), runs the CLI on it and asserts: exit status 1, a single output line
``Error: ...`` that names the file, no traceback (no uncaught exception), no file left behind
and every existing file unchanged (sha256 of everything in the case's folder). The images,
the good store, the good study folder and the good run folder are built once per module; each
case works on its own copy.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from matrep.cli import main
from matrep.errors import StoreError
from matrep.store import load_features

N_IMAGES, SIDE, PATCH = 4, 64, 32
N = N_IMAGES * (SIDE // PATCH) ** 2  # patches of the good store
WINDOW = ["--patch", str(PATCH), "--stride", str(PATCH)]


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- the good inputs, built once -----------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,E,phase"]
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)).save(imgs / f"m{i}.png")
        rows.append(f"m{i}.png,{100 + 7 * i},{'ab'[i % 2]}")
    labels = d / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    store = d / "good.h5"
    res = _invoke(["encode", "--method", "twopoint", "--images", imgs, "--out", store,
                   "--labels", labels, "--param", "cutoff=4", "-q", *WINDOW])
    assert res.exit_code == 0, res.output
    rep = d / "rep"
    res = _invoke(["compare", "--method", "twopoint", "--images", imgs, "--labels", labels, "--target", "E",
                   "--param", "twopoint.cutoff=4", "--seeds", "1", "--split", "random",
                   "--out", rep, "-q", *WINDOW])
    assert res.exit_code == 0, res.output
    return {"dir": d, "imgs": imgs, "labels": labels, "store": store, "rep": rep}


@pytest.fixture(scope="module")
def good_run(good):
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    run = good["dir"] / "run"
    try:
        res = _invoke(["fit", "--method", "texturevae", "--images", good["imgs"], *WINDOW,
                       "--out", run, "--epochs", "1", "--batch-size", "4", "--latent-dim", "4",
                       "--weights", "random", "--device", "cpu",
                       "--param", "decoder_channels=[8,8,8,8,8]", "-q"])
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    return run


# -- the cases --------------------------------------------------------------------------------
CASES = {}  # id -> (kind, builder); builder(case_dir, good) -> (args, text the line names)


def case(kind, *ids):
    def deco(fn):
        for i in ids or (fn.__name__,):
            CASES[i] = (kind, fn if ids == () else (lambda d, g, _i=i: fn(d, g, _i)))
        return fn
    return deco


# stores: `encode` with the good store's own settings into a tampered copy of it
def _encode(good, store):
    return (["encode", "--method", "twopoint", "--images", good["imgs"], "--out", store,
             "--labels", good["labels"], "--param", "cutoff=4", "-q", *WINDOW], store.name)


def _tampered(d, good, edit):
    store = d / "f.h5"
    shutil.copyfile(good["store"], store)
    with h5py.File(store, "a") as f:
        (key,) = f["features"]
        edit(f, f["features"][key])
    return _encode(good, store)


def _replace_x(g, **kw):
    del g["X"]
    g.create_dataset("X", **kw)


STORE_EDITS = {
    "x_rows_short": lambda f, g: _replace_x(g, data=np.zeros((N - 1, 5), "f4")),
    "x_rows_long": lambda f, g: _replace_x(g, data=np.zeros((N + 3, 5), "f4")),
    "x_1d": lambda f, g: _replace_x(g, data=np.zeros(N, "f4")),
    "x_3d": lambda f, g: _replace_x(g, data=np.zeros((N, 2, 2), "f4")),
    "x_scalar": lambda f, g: _replace_x(g, data=np.float32(1)),
    "x_empty_dataspace": lambda f, g: _replace_x(g, data=h5py.Empty("f4")),
    "x_strings": lambda f, g: _replace_x(g, data=np.array([["a", "b"]] * N, dtype=object),
                                         dtype=h5py.string_dtype()),
    "x_complex": lambda f, g: _replace_x(g, data=np.ones((N, 3), "c8")),
    "x_bool": lambda f, g: _replace_x(g, data=np.ones((N, 3), bool)),
    "x_compound": lambda f, g: _replace_x(g, data=np.zeros((N, 3), [("a", "f4"), ("b", "i4")])),
    "x_nan": lambda f, g: g["X"].__setitem__((0, 0), np.nan),
    "x_inf": lambda f, g: g["X"].__setitem__((N - 1, 0), np.inf),
    "x_missing": lambda f, g: g.__delitem__("X"),
    "key_is_a_dataset": lambda f, g: (f["features"].__delitem__(g.name.split("/")[-1]),
                                      f["features"].create_dataset("twopoint-00000000",
                                                                   data=np.zeros((N, 2)))),
    "labels_short": lambda f, g: (f["labels"].__delitem__("E"),
                                  f["labels"].create_dataset("E", data=np.ones(N - 1))),
    "labels_complex": lambda f, g: (f["labels"].__delitem__("E"),
                                    f["labels"].create_dataset("E", data=np.ones(N, "c16"))),
    "labels_2d": lambda f, g: (f["labels"].__delitem__("E"),
                               f["labels"].create_dataset("E", data=np.ones((N, 2)))),
    "labels_columns_not_json": lambda f, g: f["labels"].attrs.__setitem__("columns", "[E, phase"),
    "labels_column_missing": lambda f, g: f["labels"].attrs.__setitem__("columns", '["ghost"]'),
    "patches_y_floats": lambda f, g: (f["patches"].__delitem__("y"),
                                      f["patches"].create_dataset("y", data=np.zeros(N))),
    "patches_source_ints": lambda f, g: (f["patches"].__delitem__("source"),
                                         f["patches"].create_dataset("source",
                                                                     data=np.zeros(N, "i8"))),
    "patches_x_shorter": lambda f, g: (f["patches"].__delitem__("x"),
                                       f["patches"].create_dataset("x", data=np.zeros(N - 2, "i8"))),
    "patches_id_2d": lambda f, g: (f["patches"].__delitem__("micrograph_id"),
                                   f["patches"].create_dataset(
                                       "micrograph_id", data=np.array([["a"] * 2] * N, dtype=object),
                                       dtype=h5py.string_dtype())),
    "no_patches_group": lambda f, g: f.__delitem__("patches"),
    "x_soft_link": lambda f, g: (g.__delitem__("X"), g.__setitem__("X", h5py.SoftLink("/patches/y"))),
    "dangling_soft_link": lambda f, g: g.__setitem__("extra", h5py.SoftLink("/nowhere")),
    "deeply_nested": lambda f, g: g.create_group("a/b/c/d"),
    "size_bomb": lambda f, g: _replace_x(g, shape=(N, 10**7), dtype="f4", chunks=(1, 4096)),
}


@case("store", *STORE_EDITS)
def _store_edit(d, good, name):
    return _tampered(d, good, STORE_EDITS[name])


def _external_storage(d, good, target: Path):
    size = min(target.stat().st_size, N * 8)
    return _tampered(d, good, lambda f, g: _replace_x(
        g, shape=(N, size // N), dtype="u1", external=[(str(target), 0, (size // N) * N)]))


@case("store")
def external_storage_etc_passwd(d, good):
    target = Path("/etc/passwd")
    if not target.is_file() or target.stat().st_size < N:
        target = d / "secret.txt"
        target.write_text("root:x:0:0:root:/root:/bin/bash\n" * 8)
    return _external_storage(d, good, target)


@case("store")
def external_storage_beside(d, good):
    (d / "raw.bin").write_bytes(bytes(range(256)) * 4)
    return _external_storage(d, good, d / "raw.bin")


@case("store")
def patches_external_storage(d, good):
    (d / "raw.bin").write_bytes(bytes(8 * N))
    return _tampered(d, good, lambda f, g: (
        f["patches"].__delitem__("x"),
        f["patches"].create_dataset("x", shape=(N,), dtype="i8",
                                    external=[(str(d / "raw.bin"), 0, 8 * N)])))


def _other_file(d):
    other = d / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("data", data=np.arange(N * 5, dtype="f4").reshape(N, 5))
        f.create_group("features/twopoint-00000000").create_dataset("X", data=np.zeros((N, 5)))
    return other


@case("store")
def virtual_dataset(d, good):
    other = _other_file(d)

    def edit(f, g):
        layout = h5py.VirtualLayout(shape=(N, 5), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(N, 5))
        del g["X"]
        g.create_virtual_dataset("X", layout)
    return _tampered(d, good, edit)


@case("store")
def x_external_link(d, good):
    other = _other_file(d)
    return _tampered(d, good, lambda f, g: (g.__delitem__("X"),
                                            g.__setitem__("X", h5py.ExternalLink(str(other), "/data"))))


@case("store")
def features_group_external_link(d, good):
    other = _other_file(d)
    return _tampered(d, good, lambda f, g: (f.__delitem__("features"),
                                            f.__setitem__("features",
                                                          h5py.ExternalLink(str(other), "/features"))))


@case("store")
def truncated_file(d, good):
    store = d / "f.h5"
    data = good["store"].read_bytes()
    store.write_bytes(data[:len(data) // 2])
    return _encode(good, store)


@case("store")
def empty_file(d, good):
    (d / "f.h5").write_bytes(b"")
    return _encode(good, d / "f.h5")


@case("store")
def text_file(d, good):
    (d / "f.h5").write_text("file,E\nm0.png,1\n")
    return _encode(good, d / "f.h5")


@case("store")
def foreign_hdf5_file(d, good):
    with h5py.File(d / "f.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((3, 4)))
    return _encode(good, d / "f.h5")


# the study's per-split feature cache, resumed by `compare`
def _compare_cache(d, good, edit):
    rep = d / "rep"
    shutil.copytree(good["rep"], rep)
    shutil.rmtree(rep / ".study" / "results")  # the results are recomputed from the cache
    (store,) = (rep / "features" / "twopoint").glob("*.h5")
    with h5py.File(store, "a") as f:
        (key,) = f["features"]
        edit(f, f["features"][key])
    return (["compare", "--method", "twopoint", "--images", good["imgs"], "--labels", good["labels"],
             "--target", "E", "--param", "twopoint.cutoff=4", "--seeds", "1", "--split",
             "random", "--out", rep, "-q", *WINDOW], store.name)


@case("compare-cache")
def compare_cache_rows_short(d, good):
    return _compare_cache(d, good, lambda f, g: _replace_x(g, data=np.zeros((N - 1, 5), "f4")))


@case("compare-cache")
def compare_cache_external_storage(d, good):
    (d / "raw.bin").write_bytes(bytes(range(256)) * 4)
    return _compare_cache(d, good, lambda f, g: _replace_x(
        g, shape=(N, 8), dtype="u1", external=[(str(d / "raw.bin"), 0, 8 * N)]))


@case("compare-cache")
def compare_cache_labels_short(d, good):
    def edit(f, g):
        grp = f.require_group("labels")
        grp.create_dataset("E", data=np.ones(N - 1))
        grp.attrs["columns"] = '["E"]'
    return _compare_cache(d, good, edit)


# label targets: `compare` refuses them before any folder is made
def _target(d, good, csv_text, *extra, name="bad.csv"):
    (d / name).write_bytes(csv_text if isinstance(csv_text, bytes) else csv_text.encode())
    return (["compare", "--method", "twopoint", "--images", good["imgs"], "--labels", d / name,
             "--target", "E", "--param", "twopoint.cutoff=4", "--seeds", "1", "--split",
             "random", "--out", d / "report", "-q", *extra, *WINDOW], name)


def _rows(values):
    return "file,E\n" + "".join(f"m{i}.png,{v}\n" for i, v in enumerate(values))


TARGETS = {
    "target_oops": (_rows([100, 107, "oops", 121]), ()),
    "target_inf": (_rows([100, "inf", 114, 121]), ()),
    "target_minus_inf": (_rows([100, 107, "-inf", 121]), ()),
    "target_overflow_1e999": (_rows([100, 107, 114, "1e999"]), ()),
    "target_text_with_task_regression": (_rows(["high", "low", "high", "low"]),
                                         ("--task", "regression")),
    "target_constant": (_rows([5.0] * 4), ()),
    "target_empty": (_rows([""] * 4), ()),
    "target_missing_column": ("file,F\nm0.png,1\nm1.png,2\n", ()),
    "labels_ragged": ("file,E\nm0.png,1\nm1.png,2,3,4\n", ()),
    "labels_not_utf8": (b"file,E\n\xff\xfe\x00m0.png,1\n\xc3\x28,2\n", ()),
    "labels_duplicate_file": ("file,E\nm0.png,1\nm0.png,2\nm1.png,3\n", ()),
}


@case("target", *TARGETS)
def _target_case(d, good, name):
    text, extra = TARGETS[name]
    return _target(d, good, text, *extra)


# run folders: `fit --resume` on a damaged copy of a trained run
def _run_copy(d, run):
    out = d / "run"
    shutil.copytree(run, out)
    return out


def _resume(out, *extra):
    return ["fit", "--resume", "--out", out, "-q", *extra]


FIT_JSONS = {
    "fit_json_truncated": b'{"method": "texturevae", "params": {',
    "fit_json_empty": b"",
    "fit_json_a_list": b"[1, 2, 3]",
    "fit_json_a_string": b'"texturevae"',
    "fit_json_not_utf8": b'{"method": "\xff\xfe"}',
    "fit_json_no_method": b'{"params": {}, "patches": {"images": ["x"]}}',
    "fit_json_params_a_list": b'{"method": "texturevae", "params": [1]}',
    "fit_json_patch_a_string": b'{"method": "texturevae", "patches": {"images": ["x"], '
                               b'"patch": "64"}}',
    "fit_json_no_images": b'{"method": "texturevae", "patches": {"images": []}}',
    "fit_json_crop_3_values": b'{"method": "texturevae", "patches": {"images": ["x"], '
                              b'"crop": [0, 0, 10]}}',
    "fit_json_negative_stride": b'{"method": "texturevae", "patches": {"images": ["x"], '
                                b'"stride": -5}}',
}


@case("run", *FIT_JSONS)
def _fit_json_case(d, run, name):
    out = _run_copy(d, run)
    (out / "fit.json").write_bytes(FIT_JSONS[name])
    return _resume(out), "fit.json"


@case("run")
def checkpoint_json_truncated(d, run):
    out = _run_copy(d, run)
    ck = out / "checkpoint" / "checkpoint.json"
    ck.write_bytes(ck.read_bytes()[:100])
    return _resume(out), "checkpoint"


@case("run")
def checkpoint_json_a_list(d, run):
    out = _run_copy(d, run)
    (out / "checkpoint" / "checkpoint.json").write_text("[]")
    return _resume(out), "checkpoint"


@case("run")
def checkpoint_state_not_safetensors(d, run):
    out = _run_copy(d, run)
    (out / "checkpoint" / "state.safetensors").write_bytes(b"\x80\x04K\x01." * 10)
    return _resume(out), "checkpoint"


@case("run")
def no_checkpoint_to_resume(d, run):
    out = _run_copy(d, run)
    shutil.rmtree(out / "checkpoint")
    return _resume(out), "run"


@case("run")
def resume_with_another_method(d, run):
    return _resume(_run_copy(d, run), "--method", "vgg19"), "run"


@case("run")
def run_folder_locked_by_another_fit(d, run):
    out = _run_copy(d, run)
    return _resume(out), "run"  # the lock is held by another thread in the test


@case("run")
def resume_with_another_stride(d, run):
    # an option given on the command line overrides fit.json; the checkpoint then refuses it,
    # and fit.json keeps the run's recorded settings (it used to be rewritten first)
    return _resume(_run_copy(d, run), "--stride", "16"), "checkpoint"


# -- the test ---------------------------------------------------------------------------------
def _snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _hold_lock(target: Path):
    """Hold ``target``'s lock in another thread (as another `fit` would); return a release."""
    from matrep.atomic import lock

    held, release = threading.Event(), threading.Event()

    def hold():
        with lock(target):
            held.set()
            release.wait(60)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert held.wait(10)

    def stop():
        release.set()
        t.join(10)
    return stop


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case_id, request, tmp_path):
    kind, build = CASES[case_id]
    good = request.getfixturevalue("good")
    source = request.getfixturevalue("good_run") if kind == "run" else good
    if kind == "run":
        torch = pytest.importorskip("torch")
        torch.set_num_threads(1)
    args, named = build(tmp_path, source)
    stop = _hold_lock(tmp_path / "run" / "fit") if case_id.startswith("run_folder_locked") \
        else None
    before = _snapshot(tmp_path)
    try:
        res = _invoke(args)
    finally:
        if stop is not None:
            stop()
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), (res.exception, res.output)  # no traceback
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("Error: ") and named in lines[0], lines[0]
    assert _snapshot(tmp_path) == before  # nothing left behind, nothing changed


@pytest.mark.parametrize("case_id", sorted(c for c, (k, _) in CASES.items() if k == "store"))
def test_load_features_refuses_bad_stores(case_id, good, tmp_path):
    args, named = CASES[case_id][1](tmp_path, good)
    with pytest.raises(StoreError, match=named.replace(".", r"\.")):
        load_features(tmp_path / named, "twopoint")


def test_corpus_size():
    assert len(CASES) >= 30


# -- resuming: options from fit.json, a swap killed between its renames ----------------------
def _dead_pid():
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_resume_takes_options_from_fit_json_and_recovers_a_killed_swap(good_run, tmp_path):
    import json

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    out = _run_copy(tmp_path, good_run)
    # killed between the two renames of the checkpoint swap: only these two remain
    (out / "checkpoint").rename(out / f".old-checkpoint-{_dead_pid()}")
    (out / ".tmp-checkpoint-k3j4h5g6").mkdir()
    # no --images/--patch/--stride: the run's 32/32 come from fit.json (the defaults are
    # 128/50); --epochs 2 trains one epoch more than the run's 1
    res = _invoke(_resume(out, "--epochs", "2"))
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "fit.json").read_text())
    assert rec["params"]["epochs"] == 2
    assert (rec["patches"]["patch"], rec["patches"]["stride"]) == (PATCH, PATCH)
    assert (out / "log.csv").read_text().splitlines()[-1].startswith("2,")
    assert not [p.name for p in out.iterdir() if p.name.startswith((".old-", ".tmp-"))]


def test_failed_fit_leaves_no_fit_json(good, tmp_path):
    pytest.importorskip("torch")
    args = ["fit", "--method", "texturevae", "--images", good["imgs"], *WINDOW, "--weights",
            "random", "--device", "cpu", "--latent-dim", "4", "-q", "--lr", "nan"]
    res = _invoke([*args, "--out", tmp_path / "new"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert not (tmp_path / "new").exists()  # the folder this run made is gone
    (tmp_path / "mine").mkdir()
    res = _invoke([*args, "--out", tmp_path / "mine"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert list((tmp_path / "mine").iterdir()) == [tmp_path / "mine" / ".fit.lock"]


def test_patch_cache_refuses_external_storage(tmp_path):
    from matrep.errors import BadInputError
    from matrep.patchsource import open_patch_cache

    (tmp_path / "raw.bin").write_bytes(bytes(64))
    with h5py.File(tmp_path / "cache.h5", "w") as f:
        g = f.create_group("patches")
        g.attrs["format"] = "matrep-patch-cache-v1"
        g.create_dataset("data", shape=(4, 4, 4), dtype="u1",
                         external=[(str(tmp_path / "raw.bin"), 0, 64)])
    with pytest.raises(BadInputError, match="keeps its data in an external file"):
        open_patch_cache(tmp_path / "cache.h5")
