"""Build entry points for test plugins without pip: a dist-info folder on sys.path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "matrep-example-plugin"


def make_dist(root: Path, dist: str, version: str, entry_points: dict[str, str],
              modules: dict[str, str] | None = None) -> Path:
    """Write ``<dist>-<version>.dist-info`` (METADATA + entry_points.txt) and modules under root."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[matrep.encoders]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, code in (modules or {}).items():
        (root / f"{name}.py").write_text(code)
    return root


def install_example_plugin(root: Path) -> Path:
    """The example plugin's package plus its entry point, importable from ``root``."""
    shutil.copytree(EXAMPLE / "src" / "matrep_example_plugin", root / "matrep_example_plugin")
    return make_dist(root, "matrep-example-plugin", "0.1.0",
                     {"histogram": "matrep_example_plugin:HistogramEncoder"})


def activate(monkeypatch, root: Path) -> None:
    """Put ``root`` on sys.path (and PYTHONPATH for subprocesses) and reset the registry."""
    import os

    from matrep import registry

    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    registry.refresh()
    for mod in [m for m in sys.modules if m.startswith(("matrep_example_plugin", "broken_", "dup_"))]:
        del sys.modules[mod]
