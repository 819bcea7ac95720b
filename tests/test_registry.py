"""Entry-point registry: built-ins and plugins on one path, broken plugins warn, duplicates warn."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from matrep import registry
from matrep.errors import EncoderContractError, EncoderNotFoundError
from matrep.registry import PluginWarning, _load_entry_points
from matrep.testing import check_encoder

from plugin_utils import activate, install_example_plugin, make_dist


@pytest.fixture(autouse=True)
def _fresh_registry():
    registry.refresh()
    yield
    registry.refresh()


def test_builtins_are_entry_points_in_the_same_group():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="matrep.encoders")
             if ep.dist is not None and ep.dist.metadata["Name"] == "matrep"}
    assert names == {"twopoint": "matrep.plugins.twopoint:TwoPointEncoder",
                     "vgg19": "matrep.plugins.vgg19:VGG19Encoder",
                     "texturevae": "matrep.plugins.texturevae:TextureVAEEncoder"}


def test_hand_built_entry_point_loads():
    ep = EntryPoint("histogram", "matrep_example_plugin:HistogramEncoder", "matrep.encoders")
    sys.path.insert(0, str(__import__("plugin_utils").EXAMPLE / "src"))
    try:
        found = _load_entry_points([ep])
    finally:
        sys.path.pop(0)
    assert found["histogram"].cls.__name__ == "HistogramEncoder"
    assert found["histogram"].description.startswith("Grey-level histogram")


def test_broken_plugin_warns_and_names_itself():
    eps = [EntryPoint("broken", "no_such_module_xyz:Enc", "matrep.encoders"),
           EntryPoint("notaclass", "os.path:join", "matrep.encoders")]
    with pytest.warns(PluginWarning) as rec:
        found = _load_entry_points(eps)
    assert found == {}
    msgs = [str(w.message) for w in rec]
    assert any("'broken'" in m and "ModuleNotFoundError" in m for m in msgs)
    assert any("'notaclass'" in m and "expected an encoder class" in m for m in msgs)


def test_wrong_declared_name_is_a_contract_violation(tmp_path, monkeypatch):
    code = ("from matrep_example_plugin import HistogramEncoder\n"
            "class Liar(HistogramEncoder):\n    name = 'other'\n")
    install_example_plugin(tmp_path)
    make_dist(tmp_path, "broken-liar", "1.0", {"liar": "broken_liar:Liar"}, {"broken_liar": code})
    activate(monkeypatch, tmp_path)
    with pytest.warns(PluginWarning, match="declares name='other'"):
        names = [e.name for e in registry.list_encoders()]
    assert "liar" not in names and "histogram" in names


def test_duplicate_names_warn_naming_both(tmp_path, monkeypatch):
    install_example_plugin(tmp_path)
    make_dist(tmp_path, "dup-dist", "2.0", {"histogram": "dup_mod:HistogramEncoder"},
              {"dup_mod": "from matrep_example_plugin import HistogramEncoder\n"})
    activate(monkeypatch, tmp_path)
    with pytest.warns(PluginWarning, match=r"registered by two distributions: dup-dist .* and "
                                           r"matrep-example-plugin|registered by two distributions: "
                                           r"matrep-example-plugin .* and dup-dist"):
        registry.list_encoders()


def test_unknown_name_lists_installed_and_says_how():
    with pytest.raises(EncoderNotFoundError) as exc:
        registry.get_encoder("nope")
    msg = str(exc.value)
    assert "unknown encoder 'nope'" in msg and "installed encoders:" in msg
    assert "matrep.encoders" in msg and "entry-point" in msg


def test_bad_params_list_accepted_ones(tmp_path, monkeypatch):
    install_example_plugin(tmp_path)
    activate(monkeypatch, tmp_path)
    with pytest.raises(EncoderContractError, match="does not accept these parameters .*nbins"
                                                  ".*it accepts: bins"):
        registry.get_encoder("histogram", nbins=3)


def test_example_plugin_passes_contract(tmp_path, monkeypatch):
    install_example_plugin(tmp_path)
    activate(monkeypatch, tmp_path)
    check_encoder(registry.get_encoder("histogram", bins=8))


def test_import_matrep_is_light():
    code = ("import sys, matrep; heavy = [m for m in ('torch', 'torchvision', 'triton', 'h5py', "
            "'sklearn', 'scipy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"



@pytest.fixture(autouse=True, scope="module")
def _example_on_path():
    sys.path.insert(0, str(__import__("plugin_utils").EXAMPLE / "src"))
    yield
    sys.path.remove(str(__import__("plugin_utils").EXAMPLE / "src"))



def test_check_encoder_rejects_learned_state_in_init():
    from matrep_example_plugin import HistogramEncoder

    class Eager(HistogramEncoder):
        def __init__(self, *, bins=32):
            self.bins = bins
            self.n_features_ = bins + 2

    with pytest.raises(AssertionError, match="learned attributes"):
        check_encoder(Eager())


def test_check_encoder_rejects_batch_dependence():
    from matrep_example_plugin import HistogramEncoder

    class Leaky(HistogramEncoder):
        def transform(self, X):
            out = super().transform(X)
            return out - out.mean(0, keepdims=True)

    with pytest.raises(AssertionError, match="depend on the other patches"):
        check_encoder(Leaky())


@pytest.mark.parametrize("at_import, shown", [("import sys\nsys.exit(3)\n", "SystemExit(3)"),
                                              ("raise KeyboardInterrupt\n", "KeyboardInterrupt()")])
def test_plugin_exiting_at_import_is_skipped_with_one_warning(tmp_path, monkeypatch, at_import, shown):
    """`matrep encoders` and `matrep encode` survive a plugin whose import calls sys.exit() or
    raises KeyboardInterrupt, and each prints one one-line warning naming it (issue 16)."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from matrep.cli import main

    root = make_dist(tmp_path / "site", "quitter-dist", "0.1", {"quitter": "broken_quit:Enc"},
                     {"broken_quit": at_import})
    activate(monkeypatch, root)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(
        imgs / "a.png")
    for args in (["encoders"],
                 ["encode", "--method", "twopoint", "--images", str(imgs), "--patch", "16",
                  "--stride", "16", "--out", str(tmp_path / "f.h5"), "-q"]):
        registry.refresh()
        sys.modules.pop("broken_quit", None)
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (args[0], res.output, res.exception)
        lines = [ln for ln in res.stderr.splitlines() if "quitter" in ln]
        assert len(lines) == 1, (args[0], res.stderr)
        assert lines[0].startswith("warning: matrep: encoder plugin 'quitter' from quitter-dist")
        assert shown in lines[0]
        assert "registry.py" not in res.stderr  # no Python source line under the warning
    assert "twopoint" in CliRunner().invoke(main, ["encoders"]).stdout
