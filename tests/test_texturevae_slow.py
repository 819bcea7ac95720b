"""The quick preset, shortened, on the real cast-iron micrographs (slow: ~5-10 min on 2 cores).

Run with ``pytest -m slow tests/test_texturevae_slow.py``. Checks the issue's "done means":
the held-out style loss falls well below its starting value, and reconstructions are specific
to their input (own reconstruction closer than another micrograph's patch's reconstruction).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "castiron_ductile" / "images"
QUICK = ["--preset", "quick", "--max-patches", "600", "--epochs", "3",
         "--param", "max_val_patches=48"]


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real micrographs not found at {DATA}")
def test_quick_run_learns_specific_reconstructions(tmp_path):
    import numpy as np
    from click.testing import CliRunner

    import matrep
    from matrep.cli import main
    from matrep.io import load_patches
    from matrep.plugins.texturevae.evaluate import held_out_patches, specificity

    run = tmp_path / "quick"
    res = CliRunner().invoke(main, ["fit", "--method", "texturevae", "--images", str(DATA),
                                    "--out", str(run), "--quiet", *QUICK])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(run / "log.csv")))
    start, end = float(rows[0]["val_style"]), float(rows[-1]["val_style"])
    assert end < 0.7 * start, f"held-out style loss {start} -> {end}"

    enc = matrep.load_model(run)
    val = held_out_patches(enc, load_patches(DATA, patch=128, stride=64))
    assert len(val) == 48
    spec = specificity(enc, val.patches, val.micrograph_ids, seed=0)
    assert spec["ratio"] < 0.9 and spec["frac_own_lower"] > 0.6, spec
    assert np.isfinite(spec["own"]).all()
